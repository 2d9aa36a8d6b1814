"""One nvme-rdma scenario: target on the peer, controller from the local address, block
I/O with a ledger, one transition through the shim, then the target's store read on the
peer side and every acknowledged write checked.

    res = run_nvme(shim, cfg, NvmeScenario("standby", Ordering.HCA_FIRST, "nvme-rdma:fast-fail"))
    res.ledger.invariant_ok, res.status, res.findings

clients-first (what a PM-aware system does on the notice): stop submitting, wait for the
in-flight I/O, sync, disconnect the controller, answer released; after resume reconnect
and go on on the (possibly renamed) block device. hca-first: nothing is done before the
device goes.

A controller that holds rxe0's delete after the transition (our `rdma link delete` still
pending) is reported, waited out within a bound and the local side restored
(clients/kernel/nvme_hang.py): the row's `hang`.

The flow is the one of every ULP (clients/kernel/ulp_run.py); NvmeUlp supplies what is
nvme-rdma's own, and the result's own record is a CtrlRecord.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from clients.kernel import nvme_hang, route_guard
from clients.kernel.blockio import BlockDriver
from clients.kernel.nvme_host import CtrlSampler, HostConfig, NvmeHost, parse_policy
from clients.kernel.nvmet_target import NvmetTarget, TargetConfig
from clients.kernel.ulp_result import UlpResult
from clients.kernel.ulp_run import Measured, Ulp, UlpScenario, close_io, run_ulp
from clients.kernel.ulp_scenario import began_ns, recover_ms
from harness.core.errors import RxePowerError
from harness.core.printer import NULL, Printer
from harness.core.state import StateFile
from harness.system import kernelobjs as ko
from harness.system import kstacks
from harness.topology.config import TopologyConfig
from harness.workload.block_ledger import IoRecord, Window
from power import kmsg
from power.plan import Ordering, StepKind
from power.shim import Shim

SETTLE_TIMEOUT_S = 20.0  # after the transition: our controller LIVE again, or gone
ADMIN_TIMEOUT_PARAM = "nvme_core.admin_timeout"  # the policy's admin_timeout, if it sets one
POLL_S = 0.05


class NvmeTargetAddress(Protocol):
    @property
    def nqn(self) -> str: ...
    @property
    def trsvcid(self) -> int: ...


class NvmeTarget(Protocol):
    """What the scenario uses of its target: an NvmetTarget here, or a RemoteNvmetTarget
    in the peer's own kernel (clients.kernel.peer_service_client)."""

    @property
    def cfg(self) -> NvmeTargetAddress: ...
    def setup(self) -> None: ...
    def read_block(self, index: int, size: int) -> bytes: ...
    def teardown(self) -> list[str]: ...


@dataclass(frozen=True)
class NvmeScenario(UlpScenario):
    policy: str = "nvme-rdma:fast-fail"


@dataclass
class CtrlRecord:
    """nvme-rdma's own part of its result."""

    ctrl_states: list[dict[str, Any]]  # the controller's state whenever it changed
    # survived: the controller we connected is LIVE at the end (same name, no reconnect)
    block_device_after: str


NvmeResult: TypeAlias = UlpResult[CtrlRecord]


def settle_ctrl(host: NvmeHost, timeout_s: float = SETTLE_TIMEOUT_S) -> dict[str, Any]:
    """Wait (bounded) until our controller is LIVE again or gone; the I/O goes on."""
    t0 = time.monotonic_ns()
    end = time.monotonic() + timeout_s
    while True:
        ctrl = host.find()
        state = ctrl.state if ctrl else "absent"
        if state in ("live", "absent") or time.monotonic() > end:
            return {"state": state, "ctrl": ctrl.name if ctrl else None,
                    "waited_ms": round((time.monotonic_ns() - t0) / 1e6, 1),
                    "timed_out": state not in ("live", "absent")}
        time.sleep(POLL_S)


def _detect_recover(samples: list[Any], ctrl: str | None, win: Window | None, back_ns: int | None,
                    records: list[IoRecord]) -> tuple[float | None, float | None]:
    """detect: the device went -> our controller left LIVE; recover: the device was back
    -> the first I/O completed ok after that."""
    if win is None:
        return None, None
    detect = next(((s.t_ns - win.start_ns) / 1e6 for s in samples
                   if s.ctrl == ctrl and s.t_ns >= win.start_ns and s.state != "live"), None)
    return detect, recover_ms(records, win, back_ns)


class NvmeUlp(Ulp[CtrlRecord]):
    """nvme-rdma: an nvmet-rdma target on the peer side, a controller from the local
    address, block I/O on its namespace. clients-first disconnects the controller and
    connects again (the block device may be renamed)."""

    name = "nvme-rdma"

    def __init__(self, cfg: TopologyConfig, sc: NvmeScenario, state: StateFile,
                 target: NvmeTarget | None = None) -> None:
        self.cfg, self.state = cfg, state
        self.opts = parse_policy(sc.policy)
        # in this kernel, or in the peer's (clients.kernel.peer_service_client)
        self.target: NvmeTarget = target or NvmetTarget(
            TargetConfig(addr=cfg.peer_addr, size_mib=sc.size_mib), state)
        self.host: NvmeHost | None = None
        self.first_ctrl: str | None = None  # the controller we connected

    @property
    def port(self) -> int:
        return self.target.cfg.trsvcid

    def _host(self) -> NvmeHost:
        assert self.host is not None
        return self.host

    def set_up(self) -> None:
        self.target.setup()

    def connect(self, events: list[dict[str, Any]]) -> None:
        if self.opts.admin_timeout is not None:  # read when the controller is made: set first
            ko.set_module_param(self.state, ADMIN_TIMEOUT_PARAM, self.opts.admin_timeout)
        self.host = NvmeHost(HostConfig(self.target.cfg.nqn, self.cfg.peer_addr,
                                        self.target.cfg.trsvcid, self.cfg.local_addr,
                                        self.opts), self.state)
        self.host.connect()
        self.first_ctrl = self.host.ctrl

    def io_path(self) -> Path:
        dev = self._host().block_device
        assert dev is not None
        return dev

    def sampler(self) -> CtrlSampler:
        return CtrlSampler()

    def release(self, drv: BlockDriver) -> str:
        self._host().disconnect(forget=False)
        return "disconnected"

    def reconnect(self) -> tuple[str, dict[str, Any]]:
        took = self._host().connect()
        return "reconnected", {"s": round(took, 3), "block": str(self._host().block_device)}

    def settle(self, cm: route_guard.CmSampler, back: int | None) -> dict[str, Any]:
        return settle_ctrl(self._host())

    def held_delete(self, tres: dict[str, Any], drv: BlockDriver, samples: list[Any],
                    tail: kmsg.Tail, marker: kmsg.Marker, out: Printer,
                    ) -> tuple[nvme_hang.HangReport, dict[str, Any]] | None:
        held = nvme_hang.pending(self.cfg)
        if not held:
            return None
        drv.stop()
        hang = nvme_hang.wait_out(self.cfg, self._host().find, samples, self.first_ctrl, held,
                                  began_ns(tres, StepKind.DELETE_DEVICE), tail, marker, out)
        return hang, {"state": hang.ctrl_states_after[-1], "ctrl": hang.ctrl,
                      "waited_ms": hang.held_ms, "timed_out": not hang.released}

    def read_block(self, index: int, size: int) -> bytes:
        return self.target.read_block(index, size)

    def fate(self, m: Measured) -> tuple[bool, CtrlRecord]:
        """survived: the controller we connected first is still there and LIVE
        (clients-first disconnects it on purpose, so there it is the reconnected one that
        must be LIVE). Adds to m.settled when the first one was LIVE after the device was
        back."""
        ctrl_now = self._host().find()
        survived = bool(ctrl_now and ctrl_now.state == "live" and (
            ctrl_now.name == self.first_ctrl or m.ordering is Ordering.CLIENTS_FIRST))
        after = str(self._host().block_device) if ctrl_now else ""
        back = m.back
        m.settled["ctrl_live_after_back_ms"] = next(
            ((x.t_ns - back) / 1e6 for x in m.samples
             if back and x.ctrl == self.first_ctrl and x.state == "live" and x.t_ns >= back),
            None)
        return survived, CtrlRecord([asdict(s) for s in m.samples], after)

    def detect_recover(self, m: Measured, dev: str) -> tuple[float | None, float | None]:
        return _detect_recover(m.samples, self.first_ctrl, m.win, m.back, m.records)

    def teardown(self, drv: BlockDriver | None) -> tuple[list[str], list[str]]:
        return _teardown(self.state, self.target, self.host, drv), []


def run_nvme(shim: Shim, cfg: TopologyConfig, sc: NvmeScenario,
             state: StateFile | None = None, out: Printer = NULL,
             target: NvmeTarget | None = None) -> NvmeResult:
    """`target`: the target to use (made by the scenario: setup and teardown); None: an
    NvmetTarget in this kernel on cfg.peer_addr."""
    state = state or StateFile.load()
    blocks = sc.size_mib * 1024 * 1024 // sc.driver.block_size
    if sc.driver.count > blocks:
        raise RxePowerError(f"{sc.driver.count} I/Os do not fit {blocks} blocks",
                            "raise the size or lower the count")
    return run_ulp(shim, cfg, sc, NvmeUlp(cfg, sc, state, target), state, out)


def _teardown(state: StateFile, target: NvmeTarget, host: NvmeHost | None,
              drv: BlockDriver | None) -> list[str]:
    """Remove what the scenario made, newest first (the guard and the sysctl: run_ulp);
    returns what could not be removed (each still in the state file, for `rxe-power
    cleanup`)."""
    problems = []
    if host is not None:
        try:
            host.disconnect()  # fails any I/O still queued: a stuck thread returns
        except RxePowerError as exc:
            # what the kernel is stuck in, read now (the delete's writer, the controller's
            # work): the row keeps it, a wedge is then more than a state name
            problems.append(f"{exc}; tasks in D state: {blocked_text(kstacks.blocked_tasks())}")
    close_io(drv)
    problems += target.teardown()
    ko.restore_module_param(state, ADMIN_TIMEOUT_PARAM)
    return problems


def blocked_text(tasks: list[dict[str, Any]], frames: int = 8) -> str:
    """Each blocked task as `pid/tid comm (syscall): frame <- frame ...` (innermost first)."""
    return "; ".join(f"{t['pid']}/{t['tid']} {t['comm']} ({t['syscall']}): "
                     + " <- ".join(t["stack"][:frames]) for t in tasks) or "none"

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
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from clients.kernel import nvme_hang, route_guard
from clients.kernel.blockio import BlockDriver, DriverSpec
from clients.kernel.nvme_host import CtrlSampler, HostConfig, NvmeHost, parse_policy
from clients.kernel.nvmet_target import NvmetTarget, TargetConfig
from clients.kernel.ulp_result import UlpResult
from clients.kernel.ulp_scenario import (
    HUNG_TASK,
    HUNG_TASK_TIMEOUT_S,
    back_ns,
    began_ns,
    io_coverage,
    restore_sysctl,
    run_on,
    set_sysctl,
    wait_issued,
    window_of,
)
from clients.kernel.ulp_scenario import judge as _judge
from harness.core.device import DeviceInfo
from harness.core.errors import RxePowerError
from harness.core.state import StateFile
from harness.system import kernelobjs as ko
from harness.topology.config import TopologyConfig
from harness.workload.block_ledger import (
    IoOutcome,
    Window,
    check_block,
    latest_write_per_block,
    outcome,
    summarize,
)
from harness.workload.findings import Finding, RowStatus, Severity, of_severity, texts
from power import kmsg
from power.notify import SuspendReply
from power.plan import OnVeto, Ordering, StepKind
from power.result import TransitionRequest
from power.shim import Shim

SETTLE_TIMEOUT_S = 20.0  # after the transition: our controller LIVE again, or gone
AFTER_SETTLE_S = 1.5  # I/O goes on this long once the controller settled (then stops)
QUIESCE_TIMEOUT_S = 30.0  # clients-first: pause, sync, disconnect within this
ADMIN_TIMEOUT_PARAM = "nvme_core.admin_timeout"  # the policy's admin_timeout, if it sets one
POLL_S = 0.05


@dataclass(frozen=True)
class NvmeScenario:
    transition: str
    ordering: Ordering
    policy: str = "nvme-rdma:fast-fail"
    hold_ms: int | None = None
    driver: DriverSpec = field(default_factory=lambda: DriverSpec(count=800))  # count: a cap
    start_after_ios: int = 60  # the transition starts once this many I/Os were issued
    guard: bool = True  # the prohibit route against the loopback fall-through
    size_mib: int = 64


@dataclass(kw_only=True)
class NvmeResult(UlpResult):
    """The shared ULP result (clients.kernel.ulp_result) and the controller's own."""

    ctrl_states: list[dict[str, Any]]  # the controller's state whenever it changed
    # survived: the controller we connected is LIVE at the end (same name, no reconnect)
    block_device_after: str


class _PmClient:
    """clients-first for a kernel client: quiesce and disconnect on the notice."""

    name = "nvme-rdma"

    def __init__(self, host: NvmeHost, drv: BlockDriver, events: list[dict[str, Any]]) -> None:
        self.host, self.drv, self.events = host, drv, events

    def _note(self, what: str, **kw: object) -> None:
        self.events.append({"t_ns": time.monotonic_ns(), "event": what, **kw})

    def suspend_prepare(self, transition: str, deadline_s: float) -> SuspendReply | None:
        left = self.drv.pause(timeout_s=max(0.1, deadline_s / 2))
        self._note("paused", in_flight=left)
        if left:
            return SuspendReply.veto(f"{len(left)} I/O still in flight")
        os.sync()
        self.host.disconnect(forget=False)
        self._note("disconnected")
        return SuspendReply.release()

    def resume_complete(self, transition: str, device: DeviceInfo) -> None:
        took = self.host.connect()
        self._note("reconnected", s=round(took, 3), block=str(self.host.block_device))
        assert self.host.block_device is not None
        self.drv.resume(self.host.block_device)


def _settle(host: NvmeHost, first: str | None, ordering: Ordering) -> dict[str, Any]:
    """Wait (bounded) until our controller is LIVE again or gone; the I/O goes on."""
    t0 = time.monotonic_ns()
    end = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        ctrl = host.find()
        state = ctrl.state if ctrl else "absent"
        if state in ("live", "absent") or time.monotonic() > end:
            return {"state": state, "ctrl": ctrl.name if ctrl else None,
                    "waited_ms": round((time.monotonic_ns() - t0) / 1e6, 1),
                    "timed_out": state not in ("live", "absent")}
        time.sleep(POLL_S)


def _detect_recover(samples: list[Any], ctrl: str | None, win: Window | None, back_ns: int | None,
                    records: list[Any]) -> tuple[float | None, float | None]:
    """detect: the device went -> our controller left LIVE; recover: the device was back
    -> the first I/O completed ok after that."""
    if win is None:
        return None, None
    detect = next(((s.t_ns - win.start_ns) / 1e6 for s in samples
                   if s.ctrl == ctrl and s.t_ns >= win.start_ns and s.state != "live"), None)
    oks = [r.done_ns for r in records if r.done_ns and back_ns is not None
           and r.done_ns >= back_ns and outcome(r, win) is not IoOutcome.FAILED_TO_APP]
    recover = (min(oks) - back_ns) / 1e6 if oks and back_ns is not None else None
    return detect, recover


def run_nvme(shim: Shim, cfg: TopologyConfig, sc: NvmeScenario,
             state: StateFile | None = None) -> NvmeResult:
    state = state or StateFile.load()
    opts = parse_policy(sc.policy)
    target = NvmetTarget(TargetConfig(addr=cfg.peer_addr, size_mib=sc.size_mib), state)
    blocks = sc.size_mib * 1024 * 1024 // sc.driver.block_size
    if sc.driver.count > blocks:
        raise RxePowerError(f"{sc.driver.count} I/Os do not fit {blocks} blocks",
                            "raise the size or lower the count")
    guard = None
    host = None
    drv = None
    events: list[dict[str, Any]] = []
    pm = None
    fs: list[Finding] = []  # the row's findings (its status: RowStatus.of)
    try:
        target.setup()
        if sc.guard:
            guard = route_guard.install(cfg, state)
        set_sysctl(state, HUNG_TASK, HUNG_TASK_TIMEOUT_S)
        if opts.admin_timeout is not None:  # read when the controller is made: set first
            ko.set_module_param(state, ADMIN_TIMEOUT_PARAM, opts.admin_timeout)
        host = NvmeHost(HostConfig(target.cfg.nqn, cfg.peer_addr, target.cfg.trsvcid,
                                   cfg.local_addr, opts), state)
        host.connect()
        first_ctrl = host.ctrl
        assert host.block_device is not None
        with kmsg.Tail() as tail, CtrlSampler() as ctrl_s, \
                route_guard.CmSampler() as cm_s:
            marker = kmsg.write_marker(f"nvme-rdma {sc.transition} {sc.ordering}", tail=tail)
            drv = BlockDriver(host.block_device, sc.driver)
            drv.start()
            wait_issued(drv, min(sc.start_after_ios, sc.driver.count))
            if sc.ordering is Ordering.CLIENTS_FIRST:
                pm = _PmClient(host, drv, events)
                shim.notifier.register(pm)
            req = TransitionRequest(sc.transition, sc.ordering, sc.hold_ms, OnVeto.FORCE,
                                    quiesce_timeout_s=QUIESCE_TIMEOUT_S)
            tres = shim.run(req).to_json()
            if pm is not None:
                shim.notifier.unregister(pm)
            win = window_of(tres)
            hang = None
            held = nvme_hang.pending(cfg)
            if held:  # the kernel client holds the device: nothing settles until it lets go
                drv.stop()
                hang = nvme_hang.wait_out(cfg, host.find, ctrl_s.samples, first_ctrl, held,
                                          began_ns(tres, StepKind.DELETE_DEVICE), tail,
                                          marker)
                settled = {"state": hang.ctrl_states_after[-1], "ctrl": hang.ctrl,
                           "waited_ms": hang.held_ms, "timed_out": not hang.released}
            else:
                settled = _settle(host, first_ctrl, sc.ordering)
                run_on(AFTER_SETTLE_S)
                drv.stop()
            records = drv.finish()
            scan = kmsg.scan_after(marker, tail=tail)
        ctrl_now = host.find()
        # survived: the controller we connected first is still there and LIVE (clients-first
        # disconnects it on purpose, so there it is the reconnected one that must be LIVE)
        survived = bool(ctrl_now and ctrl_now.state == "live" and (
            ctrl_now.name == first_ctrl or sc.ordering is Ordering.CLIENTS_FIRST))
        after = str(host.block_device) if ctrl_now else ""
        # the target's store, read on the peer side
        acked = latest_write_per_block(records, win, sc.driver.block_size)
        tgt = {rec.seq: check_block(target.read_block(b, sc.driver.block_size), rec.seq,
                                    rec.generation, b) for b, rec in acked.items()}
        # the driver writes each block once, so every acknowledged write has its block
        ledger = summarize(records, tgt, win, sc.driver.block_size)
        back = back_ns(tres)
        settled["ctrl_live_after_back_ms"] = next(
            ((x.t_ns - back) / 1e6 for x in ctrl_s.samples
             if back and x.ctrl == first_ctrl and x.state == "live" and x.t_ns >= back), None)
        detect, recover = _detect_recover(ctrl_s.samples, first_ctrl, win,
                                          back_ns(tres), records)
        conns = route_guard.connections(cm_s.samples, target.cfg.trsvcid,
                                        win.start_ns if win else 0,
                                        win.end_ns if win else 0)
        bad_conns = route_guard.off_wire(conns, cfg)
        coverage = io_coverage(records, tres)
        fs = _judge(ledger, conns, bad_conns, scan, tres, hang, cfg.local_dev, coverage)
        res = NvmeResult(
            scenario=asdict(sc) | {"ordering": sc.ordering.value}, options=opts.to_json(),
            transition=tres, ledger=ledger, records=[r.to_json() for r in records],
            ctrl_states=[asdict(s) for s in ctrl_s.samples],
            connections=[c.to_json() for c in conns],
            off_wire=[c.to_json() for c in bad_conns], survived=survived,
            block_device_after=after, detect_ms=detect, recover_ms=recover,
            kernel=scan.to_json(), findings=texts(fs), status=RowStatus.of(fs),
            client_events=events, settled=settled, hang=hang.to_json() if hang else None,
            coverage=coverage)
    finally:
        if pm is not None:
            shim.notifier.unregister(pm)
        left = _teardown(state, target, host, drv, guard)
    if left:  # (after an exception in the scenario that one propagates instead)
        # the ledger stands; what the kernel would not let go is the row's finding, and the
        # matrix runs no further nvme-rdma scenario on this kernel (harness.run.lanes.kernel)
        res.teardown_left = left
        fs += of_severity(Severity.BROKEN, [f"teardown: {p}" for p in left])
        res.judged(fs)
    return res


def _teardown(state: StateFile, target: NvmetTarget, host: NvmeHost | None,
              drv: BlockDriver | None, guard: dict[str, Any] | None) -> list[str]:
    """Remove what the scenario made, newest first; returns what could not be removed
    (each still in the state file, for `rxe-power cleanup`)."""
    problems = []
    if host is not None:
        try:
            host.disconnect()  # fails any I/O still queued: a stuck thread returns
        except RxePowerError as exc:
            problems.append(str(exc))
    if drv is not None:
        with contextlib.suppress(OSError):
            drv.close()
    problems += target.teardown()
    if guard is not None:
        route_guard.remove(guard, state)
    restore_sysctl(state, HUNG_TASK)
    ko.restore_module_param(state, ADMIN_TIMEOUT_PARAM)
    return problems

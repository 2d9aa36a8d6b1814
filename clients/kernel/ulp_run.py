"""The one run of a kernel client's (ULP's) scenario. The flow is the same for every
ULP; each supplies only what differs, as a `Ulp`: its server on the peer side, connect,
where the I/O goes, letting go and connecting again (clients-first), settle, its fate
(survived, its own record), teardown.

    res = run_ulp(shim, cfg, sc, NvmeUlp(cfg, sc, state), state)   # UlpResult[CtrlRecord]

The flow: the ULP's server (target) made on the peer side, each part in the state file;
the guard route; the hung-task sysctl; connect; the I/O driver started; at the start point
(sc.start_after_ios issued; clients-first: the PM client registered, which quiesces and
lets go on the notice and connects again on resume) the transition through the shim; a
held delete (the ULP's optional hook: nvme-rdma's hang path) or settle; the I/O stopped;
the kernel log scanned; each acknowledged write read back on the peer side; the findings
judged into the row status; teardown (what it left makes the row broken).

A new ULP is a module with its Ulp subclass and scenario, and an entry in
harness.run.lanes.kernel's KINDS.
"""

from __future__ import annotations

import contextlib
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic

from clients.kernel import route_guard
from clients.kernel.blockio import BlockDriver, DriverSpec
from clients.kernel.nvme_hang import HangReport
from clients.kernel.ulp_result import Own, UlpResult
from clients.kernel.ulp_scenario import (
    HUNG_TASK,
    HUNG_TASK_TIMEOUT_S,
    back_ns,
    io_coverage,
    judge,
    restore_sysctl,
    run_on,
    set_sysctl,
    wait_answered_after,
    wait_issued,
    window_of,
)
from harness.core.device import DeviceInfo
from harness.core.printer import NULL, Printer
from harness.core.state import StateFile
from harness.topology.config import TopologyConfig
from harness.workload.block_ledger import (
    IoRecord,
    Window,
    check_block,
    latest_write_per_block,
    summarize,
)
from harness.workload.findings import Finding, RowStatus, Severity, of_severity, texts
from power import kmsg
from power.notify import SuspendReply
from power.plan import OnVeto, Ordering
from power.result import TransitionRequest
from power.shim import Shim

AFTER_SETTLE_S = 1.5  # I/O goes on this long once the client settled (then stops)
QUIESCE_TIMEOUT_S = 30.0  # clients-first: pause, sync, let go within this


@dataclass(frozen=True)
class UlpScenario:
    """One scenario of a ULP (each ULP's own names its default policy)."""

    transition: str
    ordering: Ordering
    policy: str
    hold_ms: int | None = None
    driver: DriverSpec = field(default_factory=lambda: DriverSpec(count=800))  # count: a cap
    start_after_ios: int = 60  # the transition starts once this many I/Os were issued
    guard: bool = True  # the guard route against the loopback fall-through
    size_mib: int = 64  # the server's store (the nvmet null_blk disk, the exported tmpfs)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ordering": self.ordering.value}


@dataclass
class Measured:
    """What the run measured, for the ULP's hooks after the transition."""

    ordering: Ordering
    tres: dict[str, Any]  # the transition's result (power.result)
    win: Window | None  # the device went .. all steps done
    back: int | None  # when the device was back
    records: list[IoRecord]
    samples: list[Any]  # the ULP's own sampler's (Ulp.sampler)
    cm: list[route_guard.CmSample]  # the rdma_cm ids over time
    cm_errors: list[str]
    settled: dict[str, Any]  # the client after the transition (Ulp.settle)


class Ulp(ABC, Generic[Own]):
    """What a ULP supplies to run_ulp. `name` names its PM client and its kernel log
    marker; `opts` its parsed options (to_json()); `port` the service port its rdma_cm
    connections go to."""

    name: str
    opts: Any
    guard_route = "prohibit"  # route_guard.install's route type
    cm_interval_s = route_guard.CM_SAMPLE_INTERVAL_S

    @property
    @abstractmethod
    def port(self) -> int: ...

    @abstractmethod
    def set_up(self) -> None:
        """The server (target) on the peer side, each part recorded in the state file."""

    @abstractmethod
    def connect(self, events: list[dict[str, Any]]) -> None:
        """The client, from the local address (an event for what it measured, if any)."""

    @abstractmethod
    def io_path(self) -> Path:
        """Where the I/O driver reads and writes (now: after a reconnect it may move)."""

    @abstractmethod
    def sampler(self) -> contextlib.AbstractContextManager[Any]:
        """The ULP's own sampler (its `.samples`) over the transition."""

    @abstractmethod
    def release(self, drv: BlockDriver) -> str:
        """clients-first, the I/O paused and synced: let go of the device; the event."""

    @abstractmethod
    def reconnect(self) -> tuple[str, dict[str, Any]]:
        """clients-first, after resume: connect again; the event and what it measured."""

    @abstractmethod
    def settle(self, cm: route_guard.CmSampler, back: int | None) -> dict[str, Any]:
        """Wait (bounded) until the client is connected again or gone; the I/O goes on."""

    def held_delete(self, tres: dict[str, Any], drv: BlockDriver, samples: list[Any],
                    tail: kmsg.Tail, marker: kmsg.Marker, out: Printer,
                    ) -> tuple[HangReport, dict[str, Any]] | None:
        """The optional hang path: a kernel client that holds the device's delete after
        the transition, waited out (the I/O stopped first: nothing settles until it lets
        go); its report and `settled`. None: no delete held."""
        return None

    @abstractmethod
    def read_block(self, index: int, size: int) -> bytes:
        """One block of the server's store, read on the peer side."""

    @abstractmethod
    def fate(self, m: Measured) -> tuple[bool, Own]:
        """Whether the client's object survived, and the ULP's own record."""

    @abstractmethod
    def detect_recover(self, m: Measured, dev: str) -> tuple[float | None, float | None]:
        """detect: the device went -> the client saw it; recover: the device was back ->
        the first I/O completed ok after that (ms)."""

    def findings(self, m: Measured) -> list[Finding]:
        """The ULP's own findings, beside ulp_scenario.judge's."""
        return []

    @abstractmethod
    def teardown(self, drv: BlockDriver | None) -> tuple[list[str], list[str]]:
        """Remove what set_up and connect made, the driver's file too, in the ULP's order;
        returns what was left (problems, each still in the state file) and what needed a
        last resort (notes)."""


def close_io(drv: BlockDriver | None) -> None:
    if drv is not None:
        with contextlib.suppress(OSError):
            drv.close()


class PmClient:
    """clients-first for a kernel client (power.notify's PowerClient): quiesce, sync and
    let go on the notice; connect again and go on after resume."""

    def __init__(self, ulp: Ulp[Any], drv: BlockDriver, events: list[dict[str, Any]]) -> None:
        self.name = ulp.name
        self.ulp, self.drv, self.events = ulp, drv, events

    def _note(self, what: str, **kw: object) -> None:
        self.events.append({"t_ns": time.monotonic_ns(), "event": what, **kw})

    def suspend_prepare(self, transition: str, deadline_s: float) -> SuspendReply | None:
        left = self.drv.pause(timeout_s=max(0.1, deadline_s / 2))
        self._note("paused", in_flight=left)
        if left:
            return SuspendReply.veto(f"{len(left)} I/O still in flight")
        os.sync()
        self._note(self.ulp.release(self.drv))
        return SuspendReply.release()

    def resume_complete(self, transition: str, device: DeviceInfo) -> None:
        what, measured = self.ulp.reconnect()
        self._note(what, **measured)
        self.drv.resume(self.ulp.io_path())


def run_ulp(shim: Shim, cfg: TopologyConfig, sc: UlpScenario, ulp: Ulp[Own],
            state: StateFile, out: Printer = NULL) -> UlpResult[Own]:
    """One scenario of `ulp` (the module's docstring says the flow)."""
    guard = None
    drv = None
    events: list[dict[str, Any]] = []
    pm = None
    fs: list[Finding] = []  # the row's findings (its status: RowStatus.of)
    bs = sc.driver.block_size
    try:
        ulp.set_up()
        if sc.guard:
            guard = route_guard.install(cfg, state, ulp.guard_route)
        set_sysctl(state, HUNG_TASK, HUNG_TASK_TIMEOUT_S)
        ulp.connect(events)
        out(f"{ulp.name}: connected; I/O on {ulp.io_path()}")
        with kmsg.Tail() as tail, ulp.sampler() as own_s, \
                route_guard.CmSampler(ulp.cm_interval_s) as cm_s:
            marker = kmsg.write_marker(f"{ulp.name} {sc.transition} {sc.ordering}", tail=tail)
            drv = BlockDriver(ulp.io_path(), sc.driver)
            drv.start()
            wait_issued(drv, min(sc.start_after_ios, sc.driver.count))
            if sc.ordering is Ordering.CLIENTS_FIRST:
                pm = PmClient(ulp, drv, events)
                shim.notifier.register(pm)
            req = TransitionRequest(sc.transition, sc.ordering, sc.hold_ms, OnVeto.FORCE,
                                    quiesce_timeout_s=QUIESCE_TIMEOUT_S)
            tres = shim.run(req).to_json()
            if pm is not None:
                shim.notifier.unregister(pm)
            win, back = window_of(tres), back_ns(tres)
            held = ulp.held_delete(tres, drv, own_s.samples, tail, marker, out)
            hang = held[0] if held else None
            if held is not None:
                settled = held[1]
            else:
                settled = ulp.settle(cm_s, back)
                settled["answered_after_back_s"] = wait_answered_after(drv, back)
                run_on(AFTER_SETTLE_S)
                drv.stop()
            records = drv.finish()
            scan = kmsg.scan_after(marker, tail=tail)
        out(f"{ulp.name}: {len(records)} I/O; settled {settled.get('state')}")
        m = Measured(sc.ordering, tres, win, back, records, own_s.samples, cm_s.samples,
                     cm_s.errors, settled)
        survived, own = ulp.fate(m)
        # the server's store, read on the peer side (not through the client)
        acked = latest_write_per_block(records, win, bs)
        tgt = {rec.seq: check_block(ulp.read_block(b, bs), rec.seq, rec.generation, b)
               for b, rec in acked.items()}
        # the driver writes each block once, so every acknowledged write has its block
        ledger = summarize(records, tgt, win, bs)
        detect, recover = ulp.detect_recover(m, cfg.local_dev)
        conns = route_guard.connections(cm_s.samples, ulp.port, win.start_ns if win else 0,
                                        win.end_ns if win else 0)
        bad_conns = route_guard.off_wire(conns, cfg)
        coverage = io_coverage(records, tres)
        fs = judge(ledger, conns, bad_conns, scan, tres, hang, cfg.local_dev, coverage)
        fs += ulp.findings(m)
        res = UlpResult(
            scenario=sc.to_json(), options=ulp.opts.to_json(), transition=tres,
            ledger=ledger, records=[r.to_json() for r in records],
            connections=[c.to_json() for c in conns],
            off_wire=[c.to_json() for c in bad_conns], survived=survived,
            detect_ms=detect, recover_ms=recover, kernel=scan.to_json(), findings=texts(fs),
            status=RowStatus.of(fs), client_events=events, settled=settled,
            hang=hang.to_json() if hang else None, coverage=coverage, own=own)
    finally:
        if pm is not None:
            shim.notifier.unregister(pm)
        problems, notes = ulp.teardown(drv)
        if guard is not None:
            route_guard.remove(guard, state)
        restore_sysctl(state, HUNG_TASK)
    # (after an exception in the scenario, that one propagates instead)
    # a teardown that needed its last resort (umount -l) is the kernel client's finding;
    # what it could not remove makes the row broken (the ledger stands), and the matrix
    # runs no further scenario of this ULP on this kernel (harness.run.lanes.kernel)
    fs += of_severity(Severity.BAD, notes)
    fs += of_severity(Severity.BROKEN, [f"teardown left: {p} (run `rxe-power cleanup`)"
                                        for p in problems])
    res.teardown_left = problems
    res.judged(fs)
    return res

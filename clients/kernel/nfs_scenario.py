"""One NFS-over-RDMA scenario: nfsd on the peer side (NFSv4, rdma 20049, a tmpfs
export), a mount from the local address, O_DIRECT I/O with a ledger on a file under the
mount, one transition through the shim, then the exported file read on the peer side
(the tmpfs, not through the mount) and every acknowledged write checked.

    res = run_nfs(shim, cfg, NfsScenario("standby", Ordering.HCA_FIRST, "nfs-rdma:hard"))
    res.ledger.invariant_ok, res.status, res.findings

clients-first (what a PM-aware system does on the notice): stop submitting, wait for the
in-flight I/O, sync, close the file, unmount, answer released; after resume mount again
and go on. hca-first: nothing is done before the device goes.

The result is the ULP result nvme-rdma's is too (clients/kernel/ulp_result.py;
harness.run.lanes.kernel makes one table row of either); `xprt_states` (the mount's
transport counters), `transport` (the client's rdma_cm ids over time) and `mount_after`
are its own.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from clients.kernel import route_guard
from clients.kernel.blockio import BlockDriver, DriverSpec
from clients.kernel.nfs_client import MountConfig, NfsMount, XprtSampler, parse_policy
from clients.kernel.nfs_server import NfsServer, ServerConfig
from clients.kernel.ulp_result import UlpResult
from clients.kernel.ulp_scenario import (
    HUNG_TASK,
    HUNG_TASK_TIMEOUT_S,
    back_ns,
    io_coverage,
    judge,
    restore_sysctl,
    run_on,
    set_sysctl,
    wait_issued,
    window_of,
)
from harness.core.device import DeviceInfo
from harness.core.errors import RxePowerError
from harness.core.state import StateFile
from harness.system.rdma_cm_ids import CmId
from harness.topology.config import TopologyConfig
from harness.workload.block_ledger import (
    IoOutcome,
    IoRecord,
    Window,
    check_block,
    latest_write_per_block,
    outcome,
    summarize,
)
from harness.workload.findings import Finding, RowStatus, Severity, of_severity, texts
from power import kmsg
from power.notify import SuspendReply
from power.plan import OnVeto, Ordering
from power.result import TransitionRequest
from power.shim import Shim

SETTLE_TIMEOUT_S = 30.0  # after the transition: the client connected again (xprtrdma's
#                          reconnect backs off 5 s, then longer)
AFTER_SETTLE_S = 1.5  # I/O goes on this long once the transport settled (then stops)
QUIESCE_TIMEOUT_S = 30.0  # clients-first: pause, sync, unmount within this
CM_INTERVAL_S = 0.1  # rdma_cm ids sampled this often (detect_ms has this resolution)
POLL_S = 0.05
DATA_FILE = "rxpw-data"
CONNECTED = "CONNECT"  # an rdma_cm id's state while connected (rdma res show cm_id)
# the guard's route type: a prohibit route's EACCES fails a hard mount's RPCs (measured:
# 43 writes failed with EACCES under standby hca-first); EHOSTUNREACH is retried, as the
# ENETUNREACH of a host whose NIC is gone would be
GUARD_ROUTE = "unreachable"


@dataclass(frozen=True)
class NfsScenario:
    transition: str
    ordering: Ordering
    policy: str = "nfs-rdma:hard"
    hold_ms: int | None = None
    driver: DriverSpec = field(default_factory=lambda: DriverSpec(count=800))  # count: a cap
    start_after_ios: int = 60  # the transition starts once this many I/Os were issued
    guard: bool = True  # the guard route against the loopback fall-through
    size_mib: int = 64  # the exported tmpfs


@dataclass(kw_only=True)
class NfsResult(UlpResult):
    """The shared ULP result (clients.kernel.ulp_result) and the mount's own. survived:
    the mount is there at the end and served I/O after the device was back."""

    xprt_states: list[dict[str, Any]]  # the mount's transport counters when they changed
    transport: list[dict[str, Any]]  # the client's rdma_cm ids whenever they changed
    mount_after: str  # the mount's id at the end ("" if none)


class _PmClient:
    """clients-first for the NFS client: quiesce, sync, unmount on the notice."""

    name = "nfs-rdma"

    def __init__(self, mnt: NfsMount, drv: BlockDriver, events: list[dict[str, Any]]) -> None:
        self.mnt, self.drv, self.events = mnt, drv, events

    def _note(self, what: str, **kw: object) -> None:
        self.events.append({"t_ns": time.monotonic_ns(), "event": what, **kw})

    def suspend_prepare(self, transition: str, deadline_s: float) -> SuspendReply | None:
        left = self.drv.pause(timeout_s=max(0.1, deadline_s / 2))
        self._note("paused", in_flight=left)
        if left:
            return SuspendReply.veto(f"{len(left)} I/O still in flight")
        os.sync()
        self.drv.detach()
        self.mnt.unmount(forget=False, force=False)
        self._note("unmounted")
        return SuspendReply.release()

    def resume_complete(self, transition: str, device: DeviceInfo) -> None:
        took = self.mnt.mount()
        self._note("remounted", s=round(took, 3), mount_id=self.mnt.mount_id)
        self.drv.resume(self.mnt.path / DATA_FILE)


def client_ids(sample: route_guard.CmSample, port: int) -> list[CmId]:
    """The client's rdma_cm ids in one sample: those towards the service port."""
    return [c for c in sample.ids if c.dst_port == port and c.state != "LISTEN"]


def transport_changes(samples: list[route_guard.CmSample], port: int) -> list[dict[str, Any]]:
    """The client's cm ids (device, state, endpoints) each time they changed."""
    out: list[dict[str, Any]] = []
    last: list[str] | None = None
    for s in samples:
        now = sorted(f"{c.dev} {c.state} {c.src}->{c.dst}:{c.dst_port}"
                     for c in client_ids(s, port))
        if now != last:
            out.append({"t_ns": s.t_ns, "ids": now})
            last = now
    return out


def _connected_on(s: route_guard.CmSample, port: int, dev: str | None = None) -> bool:
    return any(c.state == CONNECTED and (dev is None or c.dev == dev)
               for c in client_ids(s, port))


def _settle(cm: route_guard.CmSampler, port: int, back: int | None) -> dict[str, Any]:
    """Wait (bounded) until a sample taken after the device was back shows the client
    connected again (on any device: which one is judged separately)."""
    t0 = time.monotonic_ns()
    if back is None:  # the device did not come back (the transition failed): nothing to wait for
        return {"state": "device not back", "connected_after_back_ms": None,
                "waited_ms": 0.0, "timed_out": False}
    end = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        after = [s for s in list(cm.samples) if s.t_ns >= back]
        hit = next((s for s in after if _connected_on(s, port)), None)
        if hit is not None or time.monotonic() > end:
            return {"state": "connected" if hit else "not connected",
                    "connected_after_back_ms": (hit.t_ns - back) / 1e6 if hit else None,
                    "waited_ms": round((time.monotonic_ns() - t0) / 1e6, 1),
                    "timed_out": hit is None}
        time.sleep(POLL_S)


def detect_recover(samples: list[route_guard.CmSample], port: int, dev: str,
                   win: Window | None, back: int | None,
                   records: list[IoRecord]) -> tuple[float | None, float | None]:
    """detect: the device went -> the first sample without the client connected on
    `dev`; recover: the device was back -> the first I/O completed ok after that."""
    if win is None:
        return None, None
    detect = next(((s.t_ns - win.start_ns) / 1e6 for s in samples
                   if s.t_ns >= win.start_ns and not _connected_on(s, port, dev)), None)
    oks = [r.done_ns for r in records if r.done_ns and back is not None
           and r.done_ns >= back and outcome(r, win) is not IoOutcome.FAILED_TO_APP]
    recover = (min(oks) - back) / 1e6 if oks and back is not None else None
    return detect, recover


def run_nfs(shim: Shim, cfg: TopologyConfig, sc: NfsScenario,
            state: StateFile | None = None) -> NfsResult:
    state = state or StateFile.load()
    opts = parse_policy(sc.policy)
    server = NfsServer(ServerConfig(client_addr=cfg.local_addr, size_mib=sc.size_mib), state)
    bs = sc.driver.block_size
    guard = None
    mnt = None
    drv = None
    events: list[dict[str, Any]] = []
    pm = None
    fs: list[Finding] = []  # the row's findings (its status: RowStatus.of)
    res: NfsResult | None = None
    try:
        server.setup()
        server.make_file(DATA_FILE, sc.driver.count * bs)
        if sc.guard:
            guard = route_guard.install(cfg, state, GUARD_ROUTE)
        set_sysctl(state, HUNG_TASK, HUNG_TASK_TIMEOUT_S)
        mnt = NfsMount(MountConfig(cfg.peer_addr, server.cfg.port, cfg.local_addr, opts),
                       state)
        took = mnt.mount()
        events.append({"t_ns": time.monotonic_ns(), "event": "mounted", "s": round(took, 3),
                       "mount_id": mnt.mount_id})
        first_mount = mnt.mount_id
        with kmsg.Tail() as tail, XprtSampler(mnt.path) as xs, \
                route_guard.CmSampler(CM_INTERVAL_S) as cm_s:
            marker = kmsg.write_marker(f"nfs-rdma {sc.transition} {sc.ordering}", tail=tail)
            drv = BlockDriver(mnt.path / DATA_FILE, sc.driver)
            drv.start()
            wait_issued(drv, min(sc.start_after_ios, sc.driver.count))
            if sc.ordering is Ordering.CLIENTS_FIRST:
                pm = _PmClient(mnt, drv, events)
                shim.notifier.register(pm)
            req = TransitionRequest(sc.transition, sc.ordering, sc.hold_ms, OnVeto.FORCE,
                                    quiesce_timeout_s=QUIESCE_TIMEOUT_S)
            tres = shim.run(req).to_json()
            if pm is not None:
                shim.notifier.unregister(pm)
            win = window_of(tres)
            back = back_ns(tres)
            settled = _settle(cm_s, server.cfg.port, back)
            run_on(AFTER_SETTLE_S)
            drv.stop()
            records = drv.finish()
            scan = kmsg.scan_after(marker, tail=tail)
        now = mnt.mounted()
        served = any(r.done_ns and back and r.submit_ns >= back
                     and outcome(r, win, size=bs) is IoOutcome.COMPLETED_OK for r in records)
        survived = bool(now and served and (now.mount_id == first_mount
                                            or sc.ordering is Ordering.CLIENTS_FIRST))
        # the exported file, read on the peer side (the tmpfs), not through the mount
        acked = latest_write_per_block(records, win, bs)
        tgt = {rec.seq: check_block(server.read_block(DATA_FILE, b, bs), rec.seq,
                                    rec.generation, b) for b, rec in acked.items()}
        ledger = summarize(records, tgt, win, bs)
        detect, recover = detect_recover(cm_s.samples, server.cfg.port, cfg.local_dev, win,
                                         back, records)
        conns = route_guard.connections(cm_s.samples, server.cfg.port,
                                        win.start_ns if win else 0, win.end_ns if win else 0)
        bad_conns = route_guard.off_wire(conns, cfg)
        coverage = io_coverage(records, tres)
        fs = judge(ledger, conns, bad_conns, scan, tres, None, cfg.local_dev, coverage)
        if settled["timed_out"]:
            fs.append(Finding(Severity.NOTE, "the client was not connected again within "
                              f"SETTLE_TIMEOUT_S={SETTLE_TIMEOUT_S:g}s of the device's return"))
        fs += of_severity(Severity.NOTE, [f"cm sampler: {e}" for e in cm_s.errors[:3]])
        res = NfsResult(
            scenario=asdict(sc) | {"ordering": sc.ordering.value}, options=opts.to_json(),
            transition=tres, ledger=ledger, records=[r.to_json() for r in records],
            xprt_states=[asdict(x) for x in xs.samples],
            transport=transport_changes(cm_s.samples, server.cfg.port),
            connections=[c.to_json() for c in conns],
            off_wire=[c.to_json() for c in bad_conns], survived=survived,
            mount_after=str(now.mount_id) if now else "", detect_ms=detect,
            recover_ms=recover, kernel=scan.to_json(), findings=texts(fs),
            status=RowStatus.of(fs), client_events=events, settled=settled,
            coverage=coverage)
    finally:
        if pm is not None:
            shim.notifier.unregister(pm)
        problems, notes = _teardown(state, server, mnt, drv, guard)
    # (after an exception in the scenario, that one propagates instead)
    # an unmount that needed its last resort (umount -l) is the kernel client's finding;
    # what teardown could not remove makes the row broken (the result is kept), and the
    # matrix runs no further nfs-rdma scenario on this kernel (harness.run.lanes.kernel)
    fs += of_severity(Severity.BAD, notes)
    fs += of_severity(Severity.BROKEN, [f"teardown left: {p} (run `rxe-power cleanup`)"
                                        for p in problems])
    res.teardown_left = problems
    res.judged(fs)
    return res


def _teardown(state: StateFile, server: NfsServer, mnt: NfsMount | None,
              drv: BlockDriver | None, guard: dict[str, Any] | None,
              ) -> tuple[list[str], list[str]]:
    """The mount before the server (a hard mount whose server is gone cannot unmount
    cleanly): close the file, umount -f (bounded; -l as the last resort), stop nfsd and
    rpc.mountd, unmount the tmpfs; the guard and the sysctl last. Returns what was left
    (problems) and what needed a last resort (notes)."""
    problems = []
    if drv is not None:
        with contextlib.suppress(OSError):
            drv.close()
    if mnt is not None:
        try:
            mnt.unmount()
        except RxePowerError as exc:
            problems.append(str(exc))
    problems += server.teardown()
    if guard is not None:
        route_guard.remove(guard, state)
    restore_sysctl(state, HUNG_TASK)
    return problems, (mnt.notes if mnt else []) + server.notes

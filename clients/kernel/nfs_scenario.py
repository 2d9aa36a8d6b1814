"""One NFS-over-RDMA scenario: nfsd on the peer side (NFSv4, rdma 20049, a tmpfs
export), a mount from the local address, O_DIRECT I/O with a ledger on a file under the
mount, one transition through the shim, then the exported file read on the peer side
(the tmpfs, not through the mount) and every acknowledged write checked.

    res = run_nfs(shim, cfg, NfsScenario("standby", Ordering.HCA_FIRST, "nfs-rdma:hard"))
    res.ledger.invariant_ok, res.status, res.findings

clients-first (what a PM-aware system does on the notice): stop submitting, wait for the
in-flight I/O, sync, close the file, unmount, answer released; after resume mount again
and go on. hca-first: nothing is done before the device goes.

The flow is the one of every ULP (clients/kernel/ulp_run.py); NfsUlp supplies what is
NFS's own. The result is the ULP result nvme-rdma's is too (clients/kernel/ulp_result.py;
harness.run.lanes.kernel makes one table row of either); its own record, a MountRecord:
`xprt_states` (the mount's transport counters), `transport` (the client's rdma_cm ids
over time) and `mount_after`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from clients.kernel import route_guard
from clients.kernel.blockio import BlockDriver
from clients.kernel.nfs_client import MountConfig, NfsMount, XprtSampler, parse_policy
from clients.kernel.nfs_server import NfsServer, ServerConfig
from clients.kernel.ulp_result import UlpResult
from clients.kernel.ulp_run import Measured, Ulp, UlpScenario, close_io, run_ulp
from clients.kernel.ulp_scenario import recover_ms
from harness.core.errors import RxePowerError
from harness.core.printer import NULL, Printer
from harness.core.state import StateFile
from harness.system.rdma_cm_ids import CmId
from harness.topology.config import TopologyConfig
from harness.workload.block_ledger import IoOutcome, IoRecord, Window, outcome
from harness.workload.findings import Finding, Severity, of_severity
from power.plan import Ordering
from power.shim import Shim

SETTLE_TIMEOUT_S = 30.0  # after the transition: the client connected again (xprtrdma's
#                          reconnect backs off 5 s, then longer)
CM_INTERVAL_S = 0.1  # rdma_cm ids sampled this often (detect_ms has this resolution)
POLL_S = 0.05
DATA_FILE = "rxpw-data"
CONNECTED = "CONNECT"  # an rdma_cm id's state while connected (rdma res show cm_id)
# the guard's route type: a prohibit route's EACCES fails a hard mount's RPCs (measured:
# 43 writes failed with EACCES under standby hca-first); EHOSTUNREACH is retried, as the
# ENETUNREACH of a host whose NIC is gone would be
GUARD_ROUTE = "unreachable"


class NfsServing(Protocol):
    """What the scenario uses of its server: an NfsServer here, or a RemoteNfsServer in the
    peer's own kernel (clients.kernel.peer_service_client)."""

    @property
    def cfg(self) -> ServerConfig: ...
    @property
    def notes(self) -> list[str]: ...
    def setup(self) -> None: ...
    def make_file(self, name: str, size: int) -> None: ...
    def read_block(self, name: str, index: int, size: int) -> bytes: ...
    def teardown(self) -> list[str]: ...


@dataclass(frozen=True)
class NfsScenario(UlpScenario):
    policy: str = "nfs-rdma:hard"


@dataclass
class MountRecord:
    """NFS's own part of its result. survived: the mount is there at the end and served
    I/O after the device was back."""

    xprt_states: list[dict[str, Any]]  # the mount's transport counters when they changed
    transport: list[dict[str, Any]]  # the client's rdma_cm ids whenever they changed
    mount_after: str  # the mount's id at the end ("" if none)


NfsResult: TypeAlias = UlpResult[MountRecord]


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
    return detect, recover_ms(records, win, back)


class NfsUlp(Ulp[MountRecord]):
    """NFS over RDMA: nfsd on the peer side exporting a tmpfs, a mount from the local
    address, O_DIRECT I/O on a file under it. clients-first closes the file, unmounts
    and mounts again."""

    name = "nfs-rdma"
    guard_route = GUARD_ROUTE
    cm_interval_s = CM_INTERVAL_S

    def __init__(self, cfg: TopologyConfig, sc: NfsScenario, state: StateFile,
                 server: NfsServing | None = None) -> None:
        self.cfg, self.sc, self.state = cfg, sc, state
        self.opts = parse_policy(sc.policy)
        # in this kernel, or in the peer's (clients.kernel.peer_service_client)
        self.server: NfsServing = server or NfsServer(
            ServerConfig(client_addr=cfg.local_addr, size_mib=sc.size_mib), state)
        self.mnt: NfsMount | None = None
        self.first_mount: int | None = None  # the mount we made

    @property
    def port(self) -> int:
        return self.server.cfg.port

    def _mnt(self) -> NfsMount:
        assert self.mnt is not None
        return self.mnt

    def set_up(self) -> None:
        self.server.setup()
        self.server.make_file(DATA_FILE, self.sc.driver.count * self.sc.driver.block_size)

    def connect(self, events: list[dict[str, Any]]) -> None:
        self.mnt = NfsMount(MountConfig(self.cfg.peer_addr, self.server.cfg.port,
                                        self.cfg.local_addr, self.opts), self.state)
        took = self.mnt.mount()
        events.append({"t_ns": time.monotonic_ns(), "event": "mounted", "s": round(took, 3),
                       "mount_id": self.mnt.mount_id})
        self.first_mount = self.mnt.mount_id

    def io_path(self) -> Path:
        return self._mnt().path / DATA_FILE

    def sampler(self) -> XprtSampler:
        return XprtSampler(self._mnt().path)

    def release(self, drv: BlockDriver) -> str:
        drv.detach()
        self._mnt().unmount(forget=False, force=False)
        return "unmounted"

    def reconnect(self) -> tuple[str, dict[str, Any]]:
        took = self._mnt().mount()
        return "remounted", {"s": round(took, 3), "mount_id": self._mnt().mount_id}

    def settle(self, cm: route_guard.CmSampler, back: int | None) -> dict[str, Any]:
        return _settle(cm, self.port, back)

    def read_block(self, index: int, size: int) -> bytes:
        """The exported file, read on the peer side (the tmpfs), not through the mount."""
        return self.server.read_block(DATA_FILE, index, size)

    def fate(self, m: Measured) -> tuple[bool, MountRecord]:
        now = self._mnt().mounted()
        served = any(r.done_ns and m.back and r.submit_ns >= m.back
                     and outcome(r, m.win, size=self.sc.driver.block_size)
                     is IoOutcome.COMPLETED_OK for r in m.records)
        survived = bool(now and served and (now.mount_id == self.first_mount
                                            or m.ordering is Ordering.CLIENTS_FIRST))
        return survived, MountRecord([asdict(x) for x in m.samples],
                                     transport_changes(m.cm, self.port),
                                     str(now.mount_id) if now else "")

    def detect_recover(self, m: Measured, dev: str) -> tuple[float | None, float | None]:
        return detect_recover(m.cm, self.port, dev, m.win, m.back, m.records)

    def findings(self, m: Measured) -> list[Finding]:
        fs = []
        if m.settled["timed_out"]:
            fs.append(Finding(Severity.NOTE, "the client was not connected again within "
                              f"SETTLE_TIMEOUT_S={SETTLE_TIMEOUT_S:g}s of the device's return"))
        return fs + of_severity(Severity.NOTE, [f"cm sampler: {e}" for e in m.cm_errors[:3]])

    def teardown(self, drv: BlockDriver | None) -> tuple[list[str], list[str]]:
        return _teardown(self.server, self.mnt, drv)


def run_nfs(shim: Shim, cfg: TopologyConfig, sc: NfsScenario,
            state: StateFile | None = None, out: Printer = NULL,
            server: NfsServing | None = None) -> NfsResult:
    """`server`: the NFS server to use (made by the scenario); None: nfsd in this kernel."""
    state = state or StateFile.load()
    return run_ulp(shim, cfg, sc, NfsUlp(cfg, sc, state, server), state, out)


def _teardown(server: NfsServing, mnt: NfsMount | None, drv: BlockDriver | None,
              ) -> tuple[list[str], list[str]]:
    """The mount before the server (a hard mount whose server is gone cannot unmount
    cleanly): close the file, umount -f (bounded; -l as the last resort), stop nfsd and
    rpc.mountd, unmount the tmpfs (the guard and the sysctl: run_ulp). Returns what was
    left (problems) and what needed a last resort (notes)."""
    problems = []
    close_io(drv)
    if mnt is not None:
        try:
            mnt.unmount()
        except RxePowerError as exc:
            problems.append(str(exc))
    problems += server.teardown()
    return problems, (mnt.notes if mnt else []) + server.notes

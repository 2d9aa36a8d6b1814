"""Keep a kernel client's connections on the wire, and check that they were.

Two HCAs in one kernel: when the local netdev is down its routes are gone, the lookup
for the peer's address falls through to `lookup local`, the peer's address is local,
and rdma_cm binds a kernel ULP's reconnect to the *peer's* device (both ends on rxe1,
a loopback around the wire; seen with xprtrdma). The guard is a prohibit route for the
peer's address in the local side's table, with a metric above the real route: while
the local side is up the real route wins; while it is down the lookup ends in
`prohibit` (EACCES) instead of falling through. A ULP that tells connect errors apart
gets `unreachable` instead (EHOSTUNREACH, what a host whose NIC is gone answers too, as
ENETUNREACH): measured, the NFS client fails a hard mount's RPCs with EACCES from a
prohibit route (the RPC client retries only network errors), and retries them after
EHOSTUNREACH.

`CmSampler` records, over the scenario, every rdma_cm id (harness.system.rdma_cm_ids)
with the device it is bound to; `connections` turns the samples into the kernel
client's connections (those whose destination port is the service) and
`off_wire` names those that did not cross the wire.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from clients.kernel.sampler import Sampler
from harness.core.errors import RxePowerError, TopologyError
from harness.core.state import StateFile
from harness.system.rdma_cm_ids import CmId, cm_ids
from harness.topology.config import TABLE_LOCAL_SIDE, TopologyConfig

GUARD_METRIC = 4242  # above the real route's metric 0
CM_SAMPLE_INTERVAL_S = 0.2
IP_TIMEOUT_S = 10.0


def install(cfg: TopologyConfig, state: StateFile,
            route_type: str = "prohibit") -> dict[str, Any]:
    """The guard route (`prohibit`, or `unreachable`), recorded first."""
    entry: dict[str, object] = {"dst": cfg.peer_addr, "table": int(TABLE_LOCAL_SIDE),
                                "metric": GUARD_METRIC}
    if route_type != "prohibit":  # entries without a type are prohibit routes
        entry["type"] = route_type
    state.record("route_prohibit", None, **entry)
    res = subprocess.run(["ip", "route", "replace", route_type, cfg.peer_addr, "table",
                          TABLE_LOCAL_SIDE, "metric", str(GUARD_METRIC)],
                         capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise TopologyError(f"cannot add the {route_type} route for {cfg.peer_addr}: "
                            f"{res.stderr.strip()}", "is the topology up (table "
                            f"{TABLE_LOCAL_SIDE})?")
    return entry


def remove(entry: dict[str, Any], state: StateFile) -> None:
    from harness.system.kernelobjs import undo

    undo({"kind": "route_prohibit", **entry})
    state.forget("route_prohibit", **entry)


@dataclass(frozen=True)
class CmSample:
    t_ns: int
    ids: tuple[CmId, ...]


class CmSampler(Sampler[CmSample]):
    """Samples `rdma -j res show cm_id` every CM_SAMPLE_INTERVAL_S in a thread."""

    join_timeout_s = 10.0

    def __init__(self, interval_s: float = CM_SAMPLE_INTERVAL_S) -> None:
        super().__init__(interval_s, "cm-sampler")
        self.errors: list[str] = []

    def sample_once(self) -> None:
        t = time.monotonic_ns()
        try:
            ids = cm_ids()
        except RxePowerError as exc:
            self.errors.append(exc.problem)
            return
        self.samples.append(CmSample(t, tuple(ids)))


@dataclass(frozen=True)
class Connection:
    """A client connection seen in the samples: its device and endpoints, when."""

    phase: str  # before / during / after the transition window
    dev: str
    src: str
    dst: str
    first_ns: int
    samples: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def connections(samples: list[CmSample], service_port: int, start_ns: int,
                end_ns: int) -> list[Connection]:
    """The client's connected cm_ids (destination port = the service), per phase."""
    seen: dict[tuple[str, str, str, str], list[int]] = {}
    for s in samples:
        phase = "before" if s.t_ns < start_ns else "during" if s.t_ns <= end_ns else "after"
        for c in s.ids:
            if c.dst_port == service_port and c.state != "LISTEN" and c.dev:
                seen.setdefault((phase, c.dev, c.src, c.dst), []).append(s.t_ns)
    return [Connection(k[0], k[1], k[2], k[3], min(v), len(v)) for k, v in sorted(
        seen.items(), key=lambda kv: min(kv[1]))]


def off_wire(conns: list[Connection], cfg: TopologyConfig) -> list[Connection]:
    """Connections that did not cross the wire: not on the local HCA, or not from the
    local address (both ends on the peer's device)."""
    return [c for c in conns if c.dev and (c.dev != cfg.local_dev or c.src != cfg.local_addr)]

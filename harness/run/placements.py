"""Where a run's peer HCA lives, as the run's session opens it: one class per placement
(harness.core.settings.PeerPlacement), in the PLACEMENTS table.

    SameKernelPeer   rxe0 and rxe1 in this kernel: the topology built here (or found up:
                     harness.topology.lifecycle) and removed at the end if built here
    GuestPeer        rxe1 in the peer guest's kernel (harness.vm.pair): this guest's end of
                     the wire set up (harness.topology.wire), the peer's service reached on
                     the management link behind the run's secret
                     (clients.kernel.peer_service_client), the peer's kernel recorded

Each `open` returns a Placed: the run's TopologyConfig (the pair's names its own), the
topology, the shim's Sides (harness.topology.sides), the peer's services (None in one
kernel: everything is here) and the peer's kernel for the provenance.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from clients.kernel.peer_service import BOOT_ID, SERVICE_TCP_PORT
from clients.kernel.peer_service_client import PeerServiceClient
from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.peer_auth import read_secret
from harness.core.settings import PeerPlacement
from harness.run.lanes.base import LaneKind, Scenario
from harness.system import command
from harness.system.provenance import PeerHost
from harness.topology import devices, lifecycle
from harness.topology.config import Endpoint, Topology, TopologyConfig
from harness.topology.sides import PairSides, SameKernelSides, Sides
from harness.topology.wire import RXE_NAME, Link, PairSide, link_end, set_up_side
from harness.vm import pair
from power.plan import get_transition


@dataclass
class Placed:
    cfg: TopologyConfig
    topo: Topology
    sides: Sides
    services: PeerServiceClient | None  # the peer's kernel-client servers, when remote
    peer_host: PeerHost | None


class PeerPlace(Protocol):
    def open(self, cfg: TopologyConfig) -> Placed: ...
    def close(self) -> None: ...


class SameKernelPeer:
    def __init__(self) -> None:
        self.built = False

    def open(self, cfg: TopologyConfig) -> Placed:
        topo, self.built = lifecycle.setup(cfg)
        return Placed(cfg, topo, SameKernelSides(), None, None)

    def close(self) -> None:
        if self.built:
            self.built = False
            lifecycle.teardown()


def pair_config(wire_netdev: str, peer_netdev: str) -> TopologyConfig:
    """The run's names with the peer in its own guest: rxe0 on the wire's NIC here."""
    here, there = link_end(Link.WIRE, PairSide.LOCAL), link_end(Link.WIRE, PairSide.PEER)
    return replace(TopologyConfig(), local_dev=RXE_NAME[PairSide.LOCAL],
                   peer_dev=RXE_NAME[PairSide.PEER], local_netdev=wire_netdev,
                   peer_netdev=peer_netdev, local_addr=here.addr, peer_addr=there.addr)


def peer_secret_file() -> Path:
    where = os.environ.get(settings.PEER_SECRET_FILE_ENV)
    if not where:
        raise RxePowerError(f"the peer is in its own guest, but {settings.PEER_SECRET_FILE_ENV} "
                            "names no secret file", "run it through `rxe-power ... --peer "
                            "guest` (harness.vm.pair hands the secret to both guests)")
    return Path(where)


class GuestPeer:
    """This guest's side of the pair: its end of the wire, and the peer's service."""

    def __init__(self, vcpus: int = pair.PEER_CPUS, memory: str = pair.PEER_MEMORY) -> None:
        self.vcpus, self.memory = vcpus, memory  # as harness.vm.pair boots the peer guest
        self.svc: PeerServiceClient | None = None
        self.local_dev: str | None = None

    def open(self, cfg: TopologyConfig) -> Placed:
        secret = read_secret(peer_secret_file())
        report = set_up_side(PairSide.LOCAL)
        self.local_dev = str(report["rxe"])
        mgmt = link_end(Link.MGMT, PairSide.PEER)
        self.svc = PeerServiceClient(mgmt.addr, SERVICE_TCP_PORT, secret)
        peer = self.svc.device
        pcfg = pair_config(str(report["wire"]), peer.netdev)
        local = devices.discover_local(pcfg)
        topo = Topology(local, Endpoint(**peer.to_json(), state=str(self.svc.hello["state"])))
        host = PeerHost(str(self.svc.hello["kernel"]), str(self.svc.hello["boot_id"]),
                        BOOT_ID.read_text().strip(), peer.dev, self.vcpus, self.memory)
        return Placed(pcfg, topo, PairSides(self.svc.port_state), self.svc, host)

    def close(self) -> None:
        if self.svc is not None:
            self.svc.close()  # the service tears its targets down and ends
            self.svc = None
        if self.local_dev is not None and devices.port_state(self.local_dev) is not None:
            with contextlib.suppress(RxePowerError):  # ours: set_up_side added it
                command.run(["rdma", "link", "delete", self.local_dev])
        self.local_dev = None


PLACEMENTS: dict[PeerPlacement, Any] = {
    PeerPlacement.SAME_KERNEL: SameKernelPeer,
    PeerPlacement.GUEST: GuestPeer,
}


def place(peer: PeerPlacement) -> PeerPlace:
    made: PeerPlace = PLACEMENTS[peer]()
    return made


# what runs with the peer in its own guest: the kernel clients whose server the peer's
# service makes (clients.kernel.peer_service)
GUEST_KERNEL_CLIENTS = ("nvme-rdma", "nfs-rdma")


def guest_problem(scenarios: list[Scenario]) -> str | None:
    """Why these scenarios cannot run with the peer in its own guest (None: they can):
    a lane other than the kernel clients of GUEST_KERNEL_CLIENTS (the peer guest runs no
    verbs agent yet), or a transition whose steps the pair cannot do."""
    others = sorted({p.text for sc in scenarios for p in sc.policies
                     if p.lane is not LaneKind.KERNEL or p.name not in GUEST_KERNEL_CLIENTS})
    if others:
        return (f"{', '.join(others)} run only with the peer in this kernel (the peer guest "
                f"serves {', '.join(GUEST_KERNEL_CLIENTS)} only)")
    for sc in scenarios:
        why = PairSides(lambda: "").unsupported(
            s.value for s in get_transition(sc.transition).plan(sc.ordering))
        if why is not None:
            return f"{sc.transition} {sc.ordering}: {why}"
    return None

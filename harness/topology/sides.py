"""Where the two HCAs live, as the shim and a run's session see it: one class per
placement of the peer (harness.core.settings.PeerPlacement), each with the same few
operations on the local side and one question about the peer.

    SameKernelSides()        rxe0 and rxe1 in this kernel, on our veth pair and switch
                             (harness.topology.lifecycle): everything here is ours
    PairSides(peer_port)     rxe0 here on the wire's NIC (harness.topology.wire), rxe1 in
                             the peer guest's kernel: its port state only through
                             `peer_port` (the peer's service over the management link)

The shim calls these instead of reaching for the topology itself, so a transition runs
the same steps in both placements; a step the placement cannot do (a NIC of the
emulator cannot be deleted and made again as our veth can) is refused before the
transition starts, saying so (`unsupported`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from harness.core.errors import RxePowerError, TopologyError
from harness.core.printer import NULL, Printer
from harness.core.settings import PeerPlacement
from harness.system import network
from harness.topology import devices, lifecycle, neighbour, netdevs
from harness.topology.config import Endpoint, TopologyConfig

# the steps (power.plan.StepKind values) that delete and make again the local netdev
NETDEV_STEPS = frozenset({"destroy-netdev", "create-netdev"})


class Sides(Protocol):
    placement: PeerPlacement

    def local(self, cfg: TopologyConfig) -> Endpoint: ...
    def peer_state(self, cfg: TopologyConfig) -> str: ...
    def wait_active(self, cfg: TopologyConfig) -> Endpoint: ...
    def link_down(self, cfg: TopologyConfig) -> None: ...
    def link_up(self, cfg: TopologyConfig) -> None: ...
    def resolve_neighbours(self, cfg: TopologyConfig) -> dict[str, float]: ...
    def restore(self, cfg: TopologyConfig, out: Printer = NULL,
                pending_timeout_s: float = devices.RDMA_LINK_DELETE_TIMEOUT_S) -> list[str]: ...
    def unsupported(self, steps: Iterable[str]) -> str | None: ...


def whole_problem(sides: Sides, cfg: TopologyConfig) -> str | None:
    """None when both HCAs are there and ACTIVE, else what is wrong."""
    try:
        local = sides.local(cfg)
    except TopologyError as exc:
        return exc.problem
    peer = sides.peer_state(cfg)
    if local.state != "ACTIVE" or peer != "ACTIVE":
        return f"ports {local.state}/{peer}"
    return None


class SameKernelSides:
    placement = PeerPlacement.SAME_KERNEL

    def local(self, cfg: TopologyConfig) -> Endpoint:
        return devices.discover(cfg).local

    def peer_state(self, cfg: TopologyConfig) -> str:
        try:
            return devices.discover(cfg).peer.state
        except TopologyError:
            return "absent"

    def wait_active(self, cfg: TopologyConfig) -> Endpoint:
        return devices.wait_ports_active(cfg).local

    def link_down(self, cfg: TopologyConfig) -> None:
        netdevs.set_netdev_up(cfg.local_netdev, False)

    def link_up(self, cfg: TopologyConfig) -> None:
        netdevs.side_up(cfg, "local")

    def resolve_neighbours(self, cfg: TopologyConfig) -> dict[str, float]:
        return {w: round(neighbour.resolve_neighbour(cfg, w) * 1000, 1)
                for w in ("local", "peer")}

    def restore(self, cfg: TopologyConfig, out: Printer = NULL,
                pending_timeout_s: float = devices.RDMA_LINK_DELETE_TIMEOUT_S) -> list[str]:
        return lifecycle.restore_local_side(cfg, out, pending_timeout_s)

    def unsupported(self, steps: Iterable[str]) -> str | None:
        return None


class PairSides:
    """The peer in its own kernel: rxe0 is on the wire's NIC (ours to delete and add
    again, the NIC itself is the emulator's), rxe1 is seen only through `peer_port`."""

    placement = PeerPlacement.GUEST

    def __init__(self, peer_port: Callable[[], str]) -> None:
        self.peer_port = peer_port

    def local(self, cfg: TopologyConfig) -> Endpoint:
        return devices.discover_local(cfg)

    def peer_state(self, cfg: TopologyConfig) -> str:
        return self.peer_port()

    def wait_active(self, cfg: TopologyConfig) -> Endpoint:
        devices.wait_port_state(cfg.local_dev, "ACTIVE")
        return devices.discover_local(cfg)

    def link_down(self, cfg: TopologyConfig) -> None:
        """The wire's NIC here, administratively down: its carrier drops on this side
        only (the peer's NIC keeps its carrier: not a cable pull)."""
        network.set_link_up(cfg.local_netdev, False)

    def link_up(self, cfg: TopologyConfig) -> None:
        network.set_link_up(cfg.local_netdev, True)

    def resolve_neighbours(self, cfg: TopologyConfig) -> dict[str, float]:
        # the peer's kernel learns our address from our ARP request
        return {"local": round(neighbour.resolve_neighbour(cfg, "local") * 1000, 1)}

    def restore(self, cfg: TopologyConfig, out: Printer = NULL,
                pending_timeout_s: float = devices.RDMA_LINK_DELETE_TIMEOUT_S) -> list[str]:
        """rxe0 back on the wire's NIC, its link up, its port ACTIVE (what the pair's set-up
        made: harness.topology.wire); what could not be restored."""
        with contextlib.suppress(TopologyError):
            if self.local(cfg).state == "ACTIVE":
                return []
        deadline = time.monotonic() + pending_timeout_s
        while (pend := devices.pending_deletes(cfg.local_dev)) and time.monotonic() < deadline:
            time.sleep(devices.POLL_INTERVAL_S)
        if pend:
            return [f"{cfg.local_dev} cannot be re-created: its delete is still pending in "
                    f"pid {', '.join(map(str, pend))}"]
        try:
            network.set_link_up(cfg.local_netdev, True)
            if devices.port_state(cfg.local_dev) is None:
                devices.add_rdma_link(cfg.local_dev, cfg.local_netdev)
                out(f"re-created {cfg.local_dev} on {cfg.local_netdev}")
            self.wait_active(cfg)
        except RxePowerError as exc:
            return [f"local side not restored: {exc}"]
        return []

    def unsupported(self, steps: Iterable[str]) -> str | None:
        gone = sorted(NETDEV_STEPS.intersection(steps))
        if gone:
            return (f"steps {', '.join(gone)} delete and re-make the local netdev: with the "
                    "peer in its own guest the netdev is the emulator's NIC, not a veth of "
                    "ours (a PCI hot-unplug of it is not built yet)")
        return None

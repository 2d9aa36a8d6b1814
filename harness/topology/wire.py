"""The two-kernel pair's links, and one guest's end of them (issue 24).

The local guest and the peer guest (harness.vm.pair) are joined by two virtual links,
each a QEMU `dgram` netdev over a pair of Unix datagram sockets on the host: no root, no
bridge, nothing of the host's network. The *wire* is the data path (rxe on each end;
faults go there); the *management* link carries the harness's channel to the peer agent
only, so a fault on the wire never touches it. Each end is known by its MAC address
(the guest's name for the netdev is the guest's business).

In a guest: `python -P -m harness.topology.wire --side local|peer` finds its two
netdevs, addresses them, adds rxe on the wire and waits for its port to be ACTIVE. It
prints one JSON line: the netdevs, the rxe device, and how long each step took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from harness.core.errors import BoundExceeded, RxePowerError
from harness.system import command, network
from harness.system.rxe_module import load_rxe_module
from harness.topology.devices import add_rdma_link, wait_port_state

PREFIX_LEN = 24
NETDEV_APPEAR_TIMEOUT_S = 15.0  # the virtio NIC's netdev after its driver is loaded
NETDEV_POLL_S = 0.1


class PairSide(StrEnum):
    LOCAL = "local"
    PEER = "peer"

    @property
    def other(self) -> PairSide:
        return PairSide.PEER if self is PairSide.LOCAL else PairSide.LOCAL


class Link(StrEnum):
    WIRE = "wire"  # the data path: rxe, and every fault
    MGMT = "mgmt"  # the harness's channel to the peer agent, never faulted


@dataclass(frozen=True)
class LinkEnd:
    link: Link
    side: PairSide
    mac: str
    addr: str  # IPv4, PREFIX_LEN bits of network

    @property
    def cidr(self) -> str:
        return f"{self.addr}/{PREFIX_LEN}"


_NET = {Link.WIRE: "198.18.0", Link.MGMT: "198.18.1"}  # RFC 2544 benchmarking range
_HOST = {PairSide.LOCAL: 1, PairSide.PEER: 2}
_MAC_LINK = {Link.WIRE: 0x00, Link.MGMT: 0x01}
RXE_NAME = {PairSide.LOCAL: "rxe0", PairSide.PEER: "rxe1"}


def link_end(link: Link, side: PairSide) -> LinkEnd:
    """The one plan of the pair's addresses: 198.18.0.x on the wire, 198.18.1.x on the
    management link; x is 1 for the local side, 2 for the peer."""
    host = _HOST[side]
    return LinkEnd(link, side, f"52:54:00:18:{_MAC_LINK[link]:02x}:{host:02x}",
                   f"{_NET[link]}.{host}")


def netdev_by_mac(mac: str, net: Path = Path("/sys/class/net")) -> str | None:
    """The netdev whose address is `mac` (sysfs), or None."""
    for dev in sorted(net.iterdir()) if net.is_dir() else []:
        try:
            if (dev / "address").read_text().strip().lower() == mac.lower():
                return dev.name
        except OSError:
            continue
    return None


def wait_netdev(mac: str, timeout_s: float = NETDEV_APPEAR_TIMEOUT_S) -> str:
    """The netdev of `mac`, loading virtio_net first when it is not there (a guest without
    udev loads no driver for the NIC by itself)."""
    name = netdev_by_mac(mac)
    if name is None:
        command.run(["modprobe", "virtio_net"])
    t0 = time.monotonic()
    while name is None:
        if time.monotonic() - t0 > timeout_s:
            raise BoundExceeded(f"waiting for the netdev of MAC {mac}",
                                "NETDEV_APPEAR_TIMEOUT_S", timeout_s,
                                f"a netdev with address {mac} in /sys/class/net")
        time.sleep(NETDEV_POLL_S)
        name = netdev_by_mac(mac)
    return name


def bring_up(end: LinkEnd) -> str:
    """Address `end`'s netdev and set it up; its name."""
    name = wait_netdev(end.mac)
    command.run(["ip", "addr", "replace", end.cidr, "dev", name])
    network.set_link_up(name, True)
    return name


def uptime_s(path: Path = Path("/proc/uptime")) -> float:
    return float(path.read_text().split()[0])


def set_up_side(side: PairSide) -> dict[str, object]:
    started = uptime_s()
    t0 = time.monotonic()
    wire, mgmt = link_end(Link.WIRE, side), link_end(Link.MGMT, side)
    wire_dev, mgmt_dev = bring_up(wire), bring_up(mgmt)
    links_s = time.monotonic() - t0
    rxe = RXE_NAME[side]
    load_rxe_module()
    add_rdma_link(rxe, wire_dev)
    active_s = wait_port_state(rxe, "ACTIVE")
    report: dict[str, object] = {
        "side": side.value, "wire": wire_dev, "mgmt": mgmt_dev, "rxe": rxe,
        "guest_uptime_at_start_s": round(started, 2), "links_s": round(links_s, 2),
        "rxe_active_s": round(active_s, 2)}
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.topology.wire",
                                 description="set up this guest's end of the pair's links")
    ap.add_argument("--side", type=PairSide, choices=list(PairSide), required=True)
    args = ap.parse_args(argv)
    try:
        report = set_up_side(args.side)
    except RxePowerError as exc:
        print(f"wire: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print("WIRE " + json.dumps(report, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

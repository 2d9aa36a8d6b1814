"""Network interfaces: their sysfs state, up/down by ioctl, and `ip -j` records
(links, addresses, rules, routes) parsed into typed records."""

from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import OsCallError
from harness.system.command import JsonObject
from harness.system.sysfs import read_small


def sysfs_netdev(name: str, net: Path = Path("/sys/class/net")) -> tuple[int, bool] | None:
    """(ifindex, administratively up) of a netdev from sysfs; None when it does not exist."""
    idx, flags = read_small(f"{net}/{name}/ifindex"), read_small(f"{net}/{name}/flags")
    if idx is None or flags is None:
        return None
    return int(idx), bool(int(flags, 16) & 0x1)  # IFF_UP


def cpu_mask(online: str) -> str:
    """/sys/devices/system/cpu/online ("0-1", "0,2-3") as the hex mask sysfs takes for
    rps_cpus: 32-bit groups, most significant first, comma-separated ("3", "1,00000000")."""
    bits = 0
    for part in online.strip().split(","):
        lo, _, hi = part.partition("-")
        for cpu in range(int(lo), int(hi or lo) + 1):
            bits |= 1 << cpu
    if not bits:
        raise ValueError(f"no CPU in {online!r}")
    groups = []
    while bits:
        groups.append(bits & 0xFFFFFFFF)
        bits >>= 32
    return ",".join([f"{groups[-1]:x}"] + [f"{g:08x}" for g in reversed(groups[:-1])])


def steer_flows(name: str, on: bool = True, net: Path = Path("/sys/class/net"),
                online: Path = Path("/sys/devices/system/cpu/online")) -> bool:
    """Receive packet steering on every receive queue of netdev NAME over all online CPUs
    (`on`; else none, the kernel's default): the packets of one flow are then handled on
    one CPU, in order. Without it a veth queues what it receives on the sending CPU
    (netif_rx), and packets sent from two CPUs are taken in parallel and can overtake each
    other. False when the kernel has no RPS (no rps_cpus files)."""
    files = sorted((net / name / "queues").glob("rx-*/rps_cpus"))
    if not files:
        return False
    mask = cpu_mask(online.read_text()) if on else "0"
    for f in files:
        try:
            f.write_text(mask)
        except OSError as exc:
            raise OsCallError(f"cannot write {mask} to {f}", exc.errno or 0,
                              "are we root, and is the netdev ours?") from exc
    return True


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq: the name, then ifr_flags


def set_link_up(name: str, up: bool) -> None:
    """`ip link set NAME up|down` without running it: SIOCSIFFLAGS on a socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = fcntl.ioctl(s, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name.encode(), 0))
            flags = _IFREQ_FLAGS.unpack(req)[1]
            flags = flags | IFF_UP if up else flags & ~IFF_UP
            fcntl.ioctl(s, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(name.encode(), flags))
        except OSError as exc:
            raise OsCallError(f"cannot set {name} {'up' if up else 'down'}", exc.errno or 0,
                              "is it there, and are we root?") from exc


@dataclass(frozen=True)
class NetLink:
    """A network interface, from `ip -j -d link show`."""

    ifname: str
    ifindex: int
    operstate: str
    up: bool  # administratively up (IFF_UP flag)
    kind: str | None  # "veth", ...
    peer_ifindex: int | None  # link_index of a veth


def parse_ip_links(data: list[JsonObject]) -> list[NetLink]:
    out = []
    for item in data:
        info = item.get("linkinfo") or {}
        out.append(NetLink(
            ifname=str(item["ifname"]),
            ifindex=int(item["ifindex"]),
            operstate=str(item.get("operstate", "")),
            up="UP" in item.get("flags", []),
            kind=info.get("info_kind"),
            peer_ifindex=item.get("link_index"),
        ))
    return out


@dataclass(frozen=True)
class IpAddr:
    ifname: str
    address: str
    prefixlen: int


def parse_ip_addrs(data: list[JsonObject]) -> list[IpAddr]:
    out = []
    for item in data:
        for a in item.get("addr_info", []):
            if a.get("family") == "inet":
                out.append(IpAddr(str(item["ifname"]), str(a["local"]), int(a["prefixlen"])))
    return out


@dataclass(frozen=True)
class IpRule:
    """A policy routing rule, from `ip -j rule show`."""

    priority: int
    table: str
    src: str | None = None
    dst: str | None = None
    iif: str | None = None

    def selector_args(self) -> list[str]:
        """The `ip rule` arguments that identify this rule exactly."""
        args = ["pref", str(self.priority)]
        if self.iif:
            args += ["iif", self.iif]
        if self.src:
            args += ["from", self.src]
        if self.dst:
            args += ["to", self.dst]
        return [*args, "lookup", self.table]


def parse_ip_rules(data: list[JsonObject]) -> list[IpRule]:
    out = []
    for item in data:
        src = item.get("src")
        dst = item.get("dst")
        if src == "all":
            src = None
        out.append(IpRule(
            priority=int(item["priority"]),
            table=str(item.get("table", "")),
            src=_with_len(src, item.get("srclen")),
            dst=_with_len(dst, item.get("dstlen")),
            iif=item.get("iif"),
        ))
    return out


def _with_len(addr: str | None, length: int | None) -> str | None:
    if addr is None:
        return None
    if length is None or length == 32:
        return addr
    return f"{addr}/{length}"


@dataclass(frozen=True)
class IpRoute:
    dst: str
    dev: str | None
    table: str


def parse_ip_routes(data: list[JsonObject], table: str) -> list[IpRoute]:
    return [IpRoute(str(item["dst"]), item.get("dev"), table) for item in data]

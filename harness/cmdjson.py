"""Run `ip` / `rdma` / `sysctl`-like commands and parse their JSON into typed records.

Never scrape human text: every query uses `-j` and the parsers below are pure,
so they are unit-tested on any host with recorded output.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BoundExceeded, OsCallError, RxePowerError

CMD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CmdResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], timeout_s: float = CMD_TIMEOUT_S, check: bool = True) -> CmdResult:
    """Run a command with a bound; on failure raise naming the command and its stderr."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise OsCallError(
            f"cannot run {argv[0]!r}", exc.errno or 2,
            "install it (Debian/Ubuntu: apt-get install iproute2 rdma-core)",
        ) from exc
    except subprocess.TimeoutExpired:
        raise BoundExceeded(" ".join(argv), "CMD_TIMEOUT_S", timeout_s,
                            f"the command {argv[0]} had not exited") from None
    res = CmdResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise RxePowerError(
            f"`{' '.join(argv)}` failed with exit {proc.returncode}: {proc.stderr.strip()}",
            "see the command's message above",
        )
    return res


def run_json(argv: list[str], timeout_s: float = CMD_TIMEOUT_S) -> list[dict]:
    res = run(argv, timeout_s)
    return parse_json_list(res.stdout, " ".join(argv))


def parse_json_list(text: str, what: str) -> list[dict]:
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RxePowerError(f"`{what}` printed invalid JSON: {exc}",
                            "update iproute2 (needs -j support)") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise RxePowerError(f"`{what}` printed JSON of an unexpected shape", "update iproute2")
    return data


# --- typed records -------------------------------------------------------------------


@dataclass(frozen=True)
class RdmaLink:
    """One port of an RDMA device, from `rdma -j link show`."""

    ifname: str  # RDMA device, e.g. rxe0
    port: int
    state: str  # ACTIVE, DOWN, ...
    physical_state: str  # LINK_UP, DISABLED, ...
    netdev: str | None
    netdev_index: int | None


def parse_rdma_links(data: list[dict]) -> list[RdmaLink]:
    out = []
    for item in data:
        out.append(RdmaLink(
            ifname=str(item["ifname"]),
            port=int(item.get("port", 1)),
            state=str(item.get("state", "")),
            physical_state=str(item.get("physical_state", "")),
            netdev=item.get("netdev"),
            netdev_index=item.get("netdev_index"),
        ))
    return out


@dataclass(frozen=True)
class NetLink:
    """A network interface, from `ip -j -d link show`."""

    ifname: str
    ifindex: int
    operstate: str
    up: bool  # administratively up (IFF_UP flag)
    kind: str | None  # "veth", ...
    peer_ifindex: int | None  # link_index of a veth


def parse_ip_links(data: list[dict]) -> list[NetLink]:
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


def parse_ip_addrs(data: list[dict]) -> list[IpAddr]:
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


def parse_ip_rules(data: list[dict]) -> list[IpRule]:
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


def parse_ip_routes(data: list[dict], table: str) -> list[IpRoute]:
    return [IpRoute(str(item["dst"]), item.get("dev"), table) for item in data]


# --- sysfs helpers (single values, not human text) ------------------------------------


@dataclass(frozen=True)
class Gid:
    index: int
    gid: str  # e.g. 0000:0000:0000:0000:0000:ffff:c612:0001
    gid_type: str  # "RoCE v2" or "IB/RoCE v1"
    ndev: str | None


ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"


def _read_small(path: str) -> str | None:
    """One sysfs attribute with plain os calls (a port has 1024 GID entries: pathlib's
    per-file cost adds up to seconds under emulation). None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 256).decode().strip()
    except OSError:  # an unset GID entry reads as EINVAL on its type
        return None
    finally:
        os.close(fd)


def read_gids(device: str, port: int = 1, sysfs: Path = Path("/sys/class/infiniband")) -> list[Gid]:
    base = f"{sysfs}/{device}/ports/{port}"
    try:
        names = os.listdir(f"{base}/gids")
    except OSError:
        return []
    out = []
    for name in names:
        gid = _read_small(f"{base}/gids/{name}")
        if gid is None or gid == ZERO_GID:
            continue
        gtype = _read_small(f"{base}/gid_attrs/types/{name}")
        if gtype is None:
            continue
        out.append(Gid(int(name), gid, gtype, _read_small(f"{base}/gid_attrs/ndevs/{name}")))
    return sorted(out, key=lambda g: g.index)


def ipv4_mapped_gid(ipv4: str) -> str:
    """The IPv4-mapped GID rxe derives from an address, in sysfs spelling."""
    a, b, c, d = (int(x) for x in ipv4.split("."))
    return f"0000:0000:0000:0000:0000:ffff:{a:02x}{b:02x}:{c:02x}{d:02x}"


def find_rocev2_gid(gids: list[Gid], ipv4: str) -> Gid | None:
    """The RoCEv2 GID for this IPv4 address, found by type and value, never by index."""
    want = ipv4_mapped_gid(ipv4)
    for g in gids:
        if g.gid == want and g.gid_type.lower().replace(" ", "") == "rocev2":
            return g
    return None

"""Run `ip` / `rdma` / `sysctl`-like commands and parse their JSON into typed records.

Never scrape human text: every query uses `-j` and the parsers below are pure,
so they are unit-tested on any host with recorded output.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
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


PHYS_STATES = {1: "SLEEP", 2: "POLLING", 3: "DISABLED", 4: "PORT_CONFIGURATION_TRAINING",
               5: "LINK_UP", 6: "LINK_ERROR_RECOVERY", 7: "PHY_TEST"}  # as `rdma` names them
PORT_STATES = {0: "NOP", 1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
# <rdma/rdma_netlink.h>: what `rdma link show` reads, the RDMA_NL_NLDEV client's device
# dump, then each device's port dump (which needs the device's index)
NETLINK_RDMA = 20
NLDEV_GET = (5 << 10) + 1  # RDMA_NL_GET_TYPE(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_GET)
NLDEV_PORT_GET = (5 << 10) + 5  # RDMA_NL_GET_TYPE(RDMA_NL_NLDEV, RDMA_NLDEV_CMD_PORT_GET)
NLA_DEV_INDEX, NLA_DEV_NAME, NLA_PORT_INDEX, NLA_PORT_STATE, NLA_PHYS_STATE = 1, 2, 3, 12, 13
NLA_NDEV_INDEX, NLA_NDEV_NAME = 50, 51
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NETLINK_TIMEOUT_S = 5.0
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # len, type


def parse_netlink(data: bytes) -> tuple[list[dict[int, bytes]], bool]:
    """The attribute sets of the messages in one netlink read, and whether the dump ended.
    Raises OsCallError for an error (NLMSG_ERROR, or a NLMSG_DONE carrying one)."""
    out, done, off = [], False, 0
    while off + _NLMSG.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size:
            break
        body = data[off + _NLMSG.size:off + length]
        off += (length + 3) & ~3
        if mtype in (NLMSG_ERROR, NLMSG_DONE):
            err = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
            if err:
                raise OsCallError("rdma netlink dump", err,
                                  "run as root; is the rdma netlink interface there?")
            done = mtype == NLMSG_DONE
            if done:
                break
            continue
        attrs, a = {}, 0
        while a + _NLA.size <= len(body):
            alen, atype = _NLA.unpack_from(body, a)
            if alen < _NLA.size:
                break
            attrs[atype & 0x3FFF] = body[a + _NLA.size:a + alen]
            a += (alen + 3) & ~3
        out.append(attrs)
    return out, done


def _nl_dump(sock: socket.socket, mtype: int, attrs: bytes = b"") -> list[dict[int, bytes]]:
    sock.send(_NLMSG.pack(_NLMSG.size + len(attrs), mtype, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
              + attrs)
    out: list[dict[int, bytes]] = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            raise BoundExceeded("rdma netlink dump", "NETLINK_TIMEOUT_S", NETLINK_TIMEOUT_S,
                                "the dump's end") from None
        msgs, done = parse_netlink(data)
        out += msgs
        if done or not data:
            return out


def link_of(attrs: dict[int, bytes]) -> RdmaLink:
    """One port of a port dump as the record `rdma -j link show` parses to."""
    return RdmaLink(_nla_text(attrs, NLA_DEV_NAME) or "",
                    _nla_num(attrs, NLA_PORT_INDEX, "=I") or 0,
                    PORT_STATES.get(_nla_num(attrs, NLA_PORT_STATE, "=B") or 0, ""),
                    PHYS_STATES.get(_nla_num(attrs, NLA_PHYS_STATE, "=B") or 0, ""),
                    _nla_text(attrs, NLA_NDEV_NAME), _nla_num(attrs, NLA_NDEV_INDEX, "=I"))


def nldev_links() -> list[RdmaLink]:
    """`rdma link show` without running it: the same netlink dumps, in this process (each
    `rdma`/`ip` run costs 60-300 ms under emulation, and the power shim polls). A device
    being deleted is left out, as `rdma` leaves it out (sysfs still shows it)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_RDMA) as s:
        s.settimeout(NETLINK_TIMEOUT_S)
        s.bind((0, 0))
        out: list[RdmaLink] = []
        for dev in _nl_dump(s, NLDEV_GET):
            idx = dev.get(NLA_DEV_INDEX)
            if idx is None:
                continue
            try:
                ports = _nl_dump(s, NLDEV_PORT_GET, _NLA.pack(8, NLA_DEV_INDEX) + idx[:4])
            except OsCallError:
                continue  # gone between the two dumps
            out += [link_of(p) for p in ports if NLA_PORT_INDEX in p]
        return sorted(out, key=lambda lk: (lk.ifname, lk.port))


def _nla_text(attrs: dict[int, bytes], key: int) -> str | None:
    v = attrs.get(key)
    return v.split(b"\0", 1)[0].decode() if v is not None else None


def _nla_num(attrs: dict[int, bytes], key: int, fmt: str) -> int | None:
    v = attrs.get(key)
    return struct.unpack_from(fmt, v)[0] if v is not None else None


def sysfs_netdev(name: str, net: Path = Path("/sys/class/net")) -> tuple[int, bool] | None:
    """(ifindex, administratively up) of a netdev from sysfs; None when it does not exist."""
    idx, flags = _read_small(f"{net}/{name}/ifindex"), _read_small(f"{net}/{name}/flags")
    if idx is None or flags is None:
        return None
    return int(idx), bool(int(flags, 16) & 0x1)  # IFF_UP


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


def lookup_rocev2_gid(device: str, ipv4: str, port: int = 1,
                      sysfs: Path = Path("/sys/class/infiniband")) -> Gid | None:
    """find_rocev2_gid(read_gids(...)), reading entries in index order only until the GID
    is found: a port has 1,024 entries and ours sits near the start, so this reads a few
    files instead of thousands (the shim polls it while a port comes back)."""
    base = f"{sysfs}/{device}/ports/{port}"
    try:
        names = sorted(os.listdir(f"{base}/gids"), key=lambda n: int(n) if n.isdigit() else -1)
    except OSError:
        return None
    want = ipv4_mapped_gid(ipv4)
    for name in names:
        if _read_small(f"{base}/gids/{name}") != want:
            continue
        gtype = _read_small(f"{base}/gid_attrs/types/{name}")
        if gtype is not None and gtype.lower().replace(" ", "") == "rocev2":
            return Gid(int(name), want, gtype, _read_small(f"{base}/gid_attrs/ndevs/{name}"))
    return None

"""The RDMA devices and their ports, from RDMA netlink (what `rdma link show` reads),
parsed into typed records; `parse_rdma_links` reads recorded `rdma -j link show` output."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from harness.core.errors import BoundExceeded, OsCallError
from harness.system.command import JsonObject


@dataclass(frozen=True)
class RdmaLink:
    """One port of an RDMA device, from `rdma -j link show`."""

    ifname: str  # RDMA device, e.g. rxe0
    port: int
    state: str  # ACTIVE, DOWN, ...
    physical_state: str  # LINK_UP, DISABLED, ...
    netdev: str | None
    netdev_index: int | None


def parse_rdma_links(data: list[JsonObject]) -> list[RdmaLink]:
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

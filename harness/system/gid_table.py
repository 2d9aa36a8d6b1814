"""A port's GID table from sysfs, and the RoCEv2 GID of an IPv4 address."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.system.sysfs import read_small


@dataclass(frozen=True)
class Gid:
    index: int
    gid: str  # e.g. 0000:0000:0000:0000:0000:ffff:c612:0001
    gid_type: str  # "RoCE v2" or "IB/RoCE v1"
    ndev: str | None


ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"


def read_gids(device: str, port: int = 1, sysfs: Path = Path("/sys/class/infiniband")) -> list[Gid]:
    base = f"{sysfs}/{device}/ports/{port}"
    try:
        names = os.listdir(f"{base}/gids")
    except OSError:
        return []
    out = []
    for name in names:
        gid = read_small(f"{base}/gids/{name}")
        if gid is None or gid == ZERO_GID:
            continue
        gtype = read_small(f"{base}/gid_attrs/types/{name}")
        if gtype is None:
            continue
        out.append(Gid(int(name), gid, gtype, read_small(f"{base}/gid_attrs/ndevs/{name}")))
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
        if read_small(f"{base}/gids/{name}") != want:
            continue
        gtype = read_small(f"{base}/gid_attrs/types/{name}")
        if gtype is not None and gtype.lower().replace(" ", "") == "rocev2":
            return Gid(int(name), want, gtype, read_small(f"{base}/gid_attrs/ndevs/{name}"))
    return None

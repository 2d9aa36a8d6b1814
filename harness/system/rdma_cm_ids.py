"""rdma_cm ids as `rdma -j res show cm_id` gives them, parsed into typed records: the
kernel clients' connections (clients/kernel/route_guard.py) and an outside program's
listening server (harness/run/outside_ready.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.system import command

CM_ID_TIMEOUT_S = 5.0  # one `rdma -j res show cm_id`
LISTEN = "LISTEN"  # the state of a listening id


@dataclass(frozen=True)
class CmId:
    """One rdma_cm id as `rdma -j res show cm_id` gives it."""

    dev: str
    state: str
    src: str
    src_port: int | None
    dst: str
    dst_port: int | None
    comm: str
    lqpn: int | None = None
    pid: int | None = None  # the owning process of a userspace id (none for a kernel one)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> CmId:
        src, src_port = split_addr(d.get("src-addr"), d.get("src-port"))
        dst, dst_port = split_addr(d.get("dst-addr"), d.get("dst-port"))
        lqpn, pid = d.get("lqpn"), d.get("pid")
        return cls(str(d.get("ifname", "")), str(d.get("state", "")), src, src_port, dst,
                   dst_port, str(d.get("comm", "")), lqpn if isinstance(lqpn, int) else None,
                   pid if isinstance(pid, int) else None)

    def __str__(self) -> str:
        owner = f"pid {self.pid} ({self.comm})" if self.pid is not None else self.comm
        return f"{self.state} on {self.dev or '?'} {self.src}:{self.src_port} by {owner}"


def split_addr(addr: object, port: object = None) -> tuple[str, int | None]:
    """iproute2 6.1 prints `"src-addr": "198.18.0.1:38632"` (address and port in one
    field, IPv6 as `[addr]:port`); a separate port field is used when there is one."""
    text = str(addr or "")
    if isinstance(port, int):
        return text, port
    host, colon, tail = text.rpartition(":")
    if colon and tail.isdigit() and (host.count(":") == 0 or host.startswith("[")):
        return host.strip("[]"), int(tail)
    return text, None


def parse_cm_ids(data: list[command.JsonObject]) -> list[CmId]:
    return [CmId.parse(d) for d in data if isinstance(d, dict)]


def cm_ids(timeout_s: float = CM_ID_TIMEOUT_S) -> list[CmId]:
    """Every rdma_cm id now (bounded); RxePowerError when `rdma` fails."""
    return parse_cm_ids(command.run_json(["rdma", "-j", "res", "show", "cm_id"], timeout_s))


def listening(ids: list[CmId], dev: str, pid: int, port: int | None = None) -> list[CmId]:
    """The ids of process PID listening on DEV (on PORT, if given)."""
    return [c for c in ids if c.state == LISTEN and c.dev == dev and c.pid == pid
            and (port is None or c.src_port == port)]

"""What the peer agent does with the QPs of a client that is gone: what a real target does.

A target learns that its host is gone from its own keep-alive, not from the host: Linux's
NVMe-oF target (nvmet) ends a controller, and destroys its queues' QPs, when no
keep-alive came for kato seconds (drivers/nvme/target/core.c, nvmet_keep_alive_timer).
Here a client's keep-alive is its connection to the agent's socket (each worker opens its
own, and its QPs are made over it): when that connection closes (the process exited or
was killed) the agent waits PARTNER_KEEPALIVE_TIMEOUT_S and then destroys every QP made
over it that is still there (with its CQ and MR), recording each. The controller's own
connection is never watched: the agent exits when it goes.

Bookkeeping only (no verbs), so that its rules are tested on any host.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

# The host's default keep-alive timeout in Linux (NVME_DEFAULT_KATO, 5 s, in
# drivers/nvme/host/nvme.h), which nvmet uses as its own bound: a target holds the QPs
# of a host it has not heard from for this long, then tears them down.
PARTNER_KEEPALIVE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Owner:
    """The connection a QP was made over: its number in the agent, the connecting
    process (SO_PEERCRED), and whether it is the controller's."""

    conn: int
    pid: int | None
    controller: bool


@dataclass(frozen=True)
class Reaped:
    """A QP the agent destroyed because its client was gone for the bound."""

    qp_id: int
    owner_pid: int | None
    gone_s: float  # connection closed -> QP destroyed (at least the bound)
    t: float  # when (the agent's time.monotonic())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class PartnerWatch:
    """Which connection each QP belongs to, which connections are gone since when, and
    which QPs are due to be destroyed."""

    def __init__(self, timeout_s: float = PARTNER_KEEPALIVE_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.owner_of: dict[int, Owner] = {}
        self.gone_at: dict[int, float] = {}  # connection -> when it closed
        self.reaped: list[Reaped] = []

    def own(self, qp_id: int, owner: Owner) -> None:
        self.owner_of[qp_id] = owner

    def forget(self, qp_id: int) -> None:
        """The QP was destroyed on request (its owner's or the controller's)."""
        self.owner_of.pop(qp_id, None)

    def partner_gone(self, conn: int, now: float) -> None:
        """A client's connection closed: its QPs are destroyed at now + the bound."""
        if any(o.conn == conn and not o.controller for o in self.owner_of.values()):
            self.gone_at.setdefault(conn, now)

    def due(self, now: float) -> list[int]:
        """QPs whose connection has been gone for the bound (to destroy now)."""
        return sorted(q for q, o in self.owner_of.items()
                      if not o.controller and o.conn in self.gone_at
                      and now - self.gone_at[o.conn] >= self.timeout_s)

    def destroyed(self, qp_id: int, now: float) -> Reaped:
        """Record that a due QP was destroyed."""
        o = self.owner_of.pop(qp_id)
        rec = Reaped(qp_id, o.pid, round(now - self.gone_at[o.conn], 3), now)
        self.reaped.append(rec)
        if not any(x.conn == o.conn for x in self.owner_of.values()):
            del self.gone_at[o.conn]
        return rec

    def next_due(self) -> float | None:
        """When the next QP falls due (time.monotonic()), None when none is waiting."""
        times = [self.gone_at[o.conn] + self.timeout_s for o in self.owner_of.values()
                 if not o.controller and o.conn in self.gone_at]
        return min(times) if times else None

    def report(self, now: float) -> dict[str, Any]:
        """Every live QP with its owner (and how long that owner has been gone), every QP
        reaped so far, and the bound."""
        return {"keepalive_s": self.timeout_s,
                "qps": [{"qp_id": q, "owner_pid": o.pid, "controller": o.controller,
                         "partner_gone_s": (round(now - self.gone_at[o.conn], 3)
                                            if o.conn in self.gone_at else None)}
                        for q, o in sorted(self.owner_of.items())],
                "reaped": [r.to_json() for r in self.reaped]}


def peer_pid(conn: socket.socket) -> int | None:
    """The pid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    except OSError:
        return None
    return int(pid) or None

"""One request's record in a ledger: its attempts and its outcome."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.workload.outcomes import Outcome, PeerView
from harness.workload.spec import Op


@dataclass
class Attempt:
    generation: int
    posted_ns: int
    status: str | None = None  # WC status name; None until completed
    vendor_err: int = 0
    completed_ns: int | None = None
    errno: int | None = None  # set when rejected at post


@dataclass
class LedgerEntry:
    req_id: int
    op: Op
    size: int
    qp_index: int
    attempts: list[Attempt] = field(default_factory=list)
    outcome: Outcome | None = None
    reason: str = ""
    peer: PeerView | None = None
    arrived_ns: int | None = None  # when the application handed it over (None: not known)
    held: bool = False  # its first attempt waited in the client's queue across a reopen

    @property
    def wait_ns(self) -> int | None:
        """How long it waited in the client's queue before its first post."""
        if self.arrived_ns is None or not self.attempts:
            return None
        return self.attempts[0].posted_ns - self.arrived_ns

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["op"] = self.op.value
        d["outcome"] = self.outcome.value if self.outcome else None
        d["peer"] = self.peer.value if self.peer else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LedgerEntry:
        return cls(d["req_id"], Op(d["op"]), d["size"], d["qp_index"],
                   [Attempt(**a) for a in d["attempts"]],
                   Outcome(d["outcome"]) if d["outcome"] else None, d.get("reason", ""),
                   PeerView(d["peer"]) if d.get("peer") else None, d.get("arrived_ns"),
                   bool(d.get("held", False)))

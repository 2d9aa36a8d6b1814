"""The workload and the per-request ledger: one terminal outcome per application request.

Every application request gets exactly one outcome on our side, and, where the
peer can see it (SEND and WRITE_WITH_IMM land in the peer's receive queue), one
view from the peer's side. The invariant a run must hold: no request without an
outcome. A request that was posted and never completed by the deadline is LOST,
which is an outcome (and a bad one), so "unaccounted" only happens if the client
itself forgot a request: a harness bug or a crashed worker.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Op(StrEnum):
    SEND = "SEND"  # SEND_WITH_IMM, imm = seq: the peer checks header, checksum, pattern
    WRITE = "WRITE"  # RDMA_WRITE_WITH_IMM into the peer's slot for seq: checked the same way
    READ = "READ"  # RDMA_READ of what the peer filled: checked here
    FETCH_ADD = "FETCH_ADD"  # +1 on the peer's counter: the final count is checked


PEER_VISIBLE = frozenset({Op.SEND, Op.WRITE})


@dataclass(frozen=True)
class WorkloadSpec:
    ops: tuple[Op, ...] = (Op.SEND, Op.WRITE, Op.READ, Op.FETCH_ADD)
    sizes: tuple[int, ...] = (64, 4096)
    count: int = 120
    rate_per_s: float = 0.0  # 0: as fast as the queue depth allows
    queue_depth: int = 8
    qps: int = 1
    completion: str = "events"  # "events" (completion channel + select) or "poll"
    # the RC QPs' retry_cnt. On rxe 7 means retry forever (rxe_comp.c never decrements
    # it), so a client with 7 never learns that its peer is gone; 0-6 end in RETRY_EXC_ERR
    retry_cnt: int = 7

    def validate(self) -> WorkloadSpec:
        from harness.errors import SettingError

        if self.count < 1 or self.queue_depth < 1 or self.qps < 1:
            raise SettingError(f"count {self.count}, queue depth {self.queue_depth} and qps "
                               f"{self.qps} must all be >= 1", "give positive numbers")
        if self.count > MAX_COUNT:
            raise SettingError(f"count {self.count} is over MAX_COUNT={MAX_COUNT}: the ledger "
                               "would not fit the worker's finish report (one message of at "
                               "most harness.protocol.MAX_MESSAGE_BYTES)",
                               f"run at most {MAX_COUNT} requests per client, or more rounds")
        if not self.ops or any(s < 1 or s > MAX_MESSAGE for s in self.sizes) or not self.sizes:
            raise SettingError(f"sizes {self.sizes} must be 1..{MAX_MESSAGE} bytes and ops "
                               "non-empty", "pick message sizes that fit a slot")
        if self.completion not in ("events", "poll"):
            raise SettingError(f"completion {self.completion!r}", "use events or poll")
        if self.rate_per_s < 0:
            raise SettingError(f"rate {self.rate_per_s} is negative", "use 0 for unlimited")
        if not 0 <= self.retry_cnt <= 7:
            raise SettingError(f"retry_cnt {self.retry_cnt} is outside 0..7",
                               "give the 3-bit RC retry count")
        return self

    def requests(self) -> list[AppRequest]:
        """Deterministic: op, size and QP cycle through their lists."""
        out = []
        for i in range(self.count):
            op = self.ops[i % len(self.ops)]
            size = 8 if op is Op.FETCH_ADD else self.sizes[(i // len(self.ops)) % len(self.sizes)]
            out.append(AppRequest(i, op, size, i % self.qps))
        return out

    def to_json(self) -> dict:
        return {**asdict(self), "ops": [o.value for o in self.ops], "sizes": list(self.sizes)}

    @classmethod
    def from_json(cls, d: dict) -> WorkloadSpec:
        """Build from a message's `spec` object, checking every field's type (a
        ProtocolError names the field), then validate() (a SettingError names the value)."""
        from harness.errors import ProtocolError

        def field_(name: str, ok: Callable[[Any], bool], what: str) -> Any:
            val = d.get(name) if isinstance(d, dict) else None
            if not ok(val):
                raise ProtocolError(f"workload spec field {name!r} is {str(val)[:60]!r}, "
                                    f"not {what}", f"send {name!r} as {what}")
            return val

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        ops = field_("ops", lambda v: isinstance(v, list) and all(o in Op.__members__.values()
                                                                  for o in v),
                     f"a list of {', '.join(o.value for o in Op)}")
        sizes = field_("sizes", lambda v: isinstance(v, list) and all(is_int(x) for x in v),
                       "a list of integers")
        return cls(tuple(Op(o) for o in ops), tuple(sizes),
                   field_("count", is_int, "an integer"),
                   field_("rate_per_s", lambda v: is_int(v) or (isinstance(v, float)
                                                               and math.isfinite(v)),
                          "a finite number"),
                   field_("queue_depth", is_int, "an integer"),
                   field_("qps", is_int, "an integer"),
                   field_("completion", lambda v: isinstance(v, str), "a string"),
                   field_("retry_cnt", is_int, "an integer") if "retry_cnt" in d
                   else cls.retry_cnt).validate()


MAX_MESSAGE = 16384  # one peer receive slot
# Requests per client and round: the finish report carries the whole ledger (about 240
# bytes a request, more with replays) in one message of at most 1 MiB.
MAX_COUNT = 2000


@dataclass(frozen=True)
class AppRequest:
    req_id: int
    op: Op
    size: int
    qp_index: int

    @property
    def seq(self) -> int:
        """On the wire (imm data and payload header); 0 is never used."""
        return self.req_id + 1


class Outcome(StrEnum):
    COMPLETED_OK = "completed-ok"  # completed successfully on its first QP generation
    REPLAYED_OK = "replayed-ok"  # completed successfully after a replay on a later generation
    REJECTED_AT_POST = "rejected-at-post"  # post_send failed (errno)
    COMPLETED_ERROR = "completed-error"  # a completion with an error status (not a flush)
    FLUSHED = "flushed"  # WR_FLUSH_ERR: the QP went to ERR with it queued
    FAILED_TO_APP = "failed-to-app"  # never posted: the client refused it to its caller
    LOST = "lost"  # posted, never completed by the deadline


class PeerView(StrEnum):
    DELIVERED_ONCE = "delivered-once"
    DUPLICATED = "duplicated"
    CORRUPTED = "corrupted"
    MISSING = "missing"
    NOT_VISIBLE = "not-visible"  # READ and atomics: the peer's HCA answers without its CPU


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

    def to_json(self) -> dict:
        d = asdict(self)
        d["op"] = self.op.value
        d["outcome"] = self.outcome.value if self.outcome else None
        d["peer"] = self.peer.value if self.peer else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> LedgerEntry:
        return cls(d["req_id"], Op(d["op"]), d["size"], d["qp_index"],
                   [Attempt(**a) for a in d["attempts"]],
                   Outcome(d["outcome"]) if d["outcome"] else None, d.get("reason", ""),
                   PeerView(d["peer"]) if d.get("peer") else None)


class Ledger:
    """The client's record. Outcomes are final once set, except a failed attempt that the
    client replays: `retry` reopens the entry for a new attempt."""

    def __init__(self, requests: list[AppRequest]) -> None:
        self.entries = {r.req_id: LedgerEntry(r.req_id, r.op, r.size, r.qp_index)
                        for r in requests}

    def posted(self, req_id: int, generation: int, t_ns: int) -> None:
        self.entries[req_id].attempts.append(Attempt(generation, t_ns))

    def rejected(self, req_id: int, err: int, reason: str) -> None:
        e = self.entries[req_id]
        e.attempts[-1].errno = err
        e.outcome, e.reason = Outcome.REJECTED_AT_POST, reason

    def completed(self, req_id: int, status: str, vendor_err: int, t_ns: int) -> None:
        e = self.entries[req_id]
        att = e.attempts[-1]
        att.status, att.vendor_err, att.completed_ns = status, vendor_err, t_ns
        if status == "SUCCESS":
            e.outcome = Outcome.REPLAYED_OK if len(e.attempts) > 1 else Outcome.COMPLETED_OK
        elif status == "WR_FLUSH_ERR":
            e.outcome = Outcome.FLUSHED
        else:
            e.outcome, e.reason = Outcome.COMPLETED_ERROR, f"{status} vendor_err {vendor_err}"

    def retry(self, req_id: int) -> None:
        """The client will replay this request: its failed outcome is not terminal."""
        self.entries[req_id].outcome = None

    def failed_to_app(self, req_id: int, reason: str) -> None:
        e = self.entries[req_id]
        e.outcome, e.reason = Outcome.FAILED_TO_APP, reason

    def in_flight(self) -> list[int]:
        return [i for i, e in self.entries.items()
                if e.attempts and e.attempts[-1].completed_ns is None
                and e.attempts[-1].errno is None]

    def finalize(self) -> None:
        """At the deadline: whatever was posted and never completed is LOST."""
        for i in self.in_flight():
            e = self.entries[i]
            e.outcome, e.reason = Outcome.LOST, "posted, no completion by the deadline"

    def unaccounted(self) -> list[int]:
        return [i for i, e in self.entries.items() if e.outcome is None]

    def counts(self) -> dict[str, int]:
        c = Counter(e.outcome.value if e.outcome else "unaccounted"
                    for e in self.entries.values())
        return dict(sorted(c.items()))

    def peer_counts(self) -> dict[str, int]:
        c = Counter(e.peer.value for e in self.entries.values() if e.peer)
        return dict(sorted(c.items()))

    def to_json(self) -> list[dict]:
        return [e.to_json() for e in self.entries.values()]

    @classmethod
    def from_json(cls, rows: list[dict]) -> Ledger:
        led = cls([])
        led.entries = {r["req_id"]: LedgerEntry.from_json(r) for r in rows}
        return led


def apply_peer_view(ledger: Ledger, arrivals: list[dict]) -> None:
    """Match the peer's arrivals (seq, ok) to the ledger: once, duplicated, corrupted, missing."""
    by_seq: dict[int, list[dict]] = {}
    for a in arrivals:
        if a.get("seq") is not None:
            by_seq.setdefault(int(a["seq"]), []).append(a)
    for e in ledger.entries.values():
        if e.op not in PEER_VISIBLE:
            e.peer = PeerView.NOT_VISIBLE
            continue
        seen = by_seq.get(e.req_id + 1, [])
        if not seen:
            e.peer = PeerView.MISSING
        elif not all(a["ok"] for a in seen):
            e.peer = PeerView.CORRUPTED
        elif len(seen) > 1:
            e.peer = PeerView.DUPLICATED
        else:
            e.peer = PeerView.DELIVERED_ONCE

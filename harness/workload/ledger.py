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
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
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
    write_slots: int = 64  # WRITE_WITH_IMM targets in the peer's area (slot seq % write_slots)
    # 1: every WR signaled. k > 1 (one QP, no rate): every k-th WR, and the one that fills
    # the window or empties the queue, is signaled, as perftest's CQ moderation; the WRs
    # before a completion completed before it (RC completes a QP's WRs in order), so each
    # request still gets its own outcome, with the completion's time (an upper bound)
    signal_every: int = 1

    @property
    def slot_size(self) -> int:
        """Bytes of one buffer slot, here and at the peer (send, receive, WRITE target,
        READ source): the largest message, rounded up to 64 (a cache line)."""
        return max(64, -(-max(self.sizes) // 64) * 64)

    def local_mr_bytes(self) -> int:
        """One QP's MR here: a slot per outstanding request and one for the goodbye."""
        return (self.queue_depth + 1) * self.slot_size

    def peer_mr_bytes(self) -> int:
        """One QP's MR at the peer agent: 2 x queue_depth receive slots, then the RDMA area
        (write_slots WRITE targets, the READ source slot, the atomic counter)."""
        return (2 * self.queue_depth + self.write_slots + 1) * self.slot_size + 64

    def validate(self) -> WorkloadSpec:
        from harness.core.errors import SettingError

        if self.count < 1 or self.queue_depth < 1 or self.qps < 1:
            raise SettingError(f"count {self.count}, queue depth {self.queue_depth} and qps "
                               f"{self.qps} must all be >= 1", "give positive numbers")
        if self.count > MAX_COUNT:
            raise SettingError(f"count {self.count} is over MAX_COUNT={MAX_COUNT} requests "
                               "per client and round",
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
        if self.write_slots < 1:
            raise SettingError(f"write_slots {self.write_slots} must be >= 1",
                               "give the peer at least one WRITE target slot")
        if not 1 <= self.signal_every <= self.queue_depth:
            raise SettingError(f"signal_every {self.signal_every} must be 1..queue depth "
                               f"{self.queue_depth}", "signal at least once per window")
        if self.signal_every > 1 and (self.qps != 1 or self.rate_per_s):
            raise SettingError(f"signal_every {self.signal_every} needs one QP and no rate "
                               f"limit (qps {self.qps}, rate {self.rate_per_s})",
                               "use signal_every 1 for paced or multi-QP workloads")
        mr = self.qps * (self.local_mr_bytes() + self.peer_mr_bytes())
        if mr > MAX_CLIENT_MR_BYTES:
            raise SettingError(
                f"this workload registers {mr >> 20} MiB of memory ({self.qps} QPs x "
                f"(({self.queue_depth} + 1) + (2 x {self.queue_depth} + {self.write_slots} + "
                f"1)) slots of {self.slot_size} bytes, here and at the peer agent), over "
                f"MAX_CLIENT_MR_BYTES={MAX_CLIENT_MR_BYTES >> 20} MiB",
                "use fewer QPs, a smaller queue depth, fewer write_slots or smaller sizes")
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
        from harness.core.errors import ProtocolError

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
                   else cls.retry_cnt,
                   field_("write_slots", is_int, "an integer") if "write_slots" in d
                   else cls.write_slots,
                   field_("signal_every", is_int, "an integer") if "signal_every" in d
                   else cls.signal_every).validate()


# The largest message: slots are sized from the workload's largest size (slot_size).
MAX_MESSAGE = 256 * 1024
# Requests per client and round. The worker keeps its ledger in flat arrays (Recorder)
# and hands it back in pages of columns (a few dozen bytes a request), not in one message.
MAX_COUNT = 1_000_000
# Memory one client registers (its QPs' MRs and their peer agent QPs' MRs): the VM
# mode's guest has 2 GiB.
MAX_CLIENT_MR_BYTES = 512 << 20


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

    @classmethod
    def from_pages(cls, pages: Iterable[dict]) -> Ledger:
        """Rebuild a ledger from the pages of columns a worker's Recorder hands back."""
        led = cls([])
        for page in pages:
            for e in entries_from_page(page):
                led.entries[e.req_id] = e
        return led


# --- the worker's ledger: flat arrays, handed back in pages of columns ---------------------

OUTCOME_CODE = {None: "-", Outcome.COMPLETED_OK: "o", Outcome.REPLAYED_OK: "r",
                Outcome.REJECTED_AT_POST: "j", Outcome.COMPLETED_ERROR: "e",
                Outcome.FLUSHED: "f", Outcome.FAILED_TO_APP: "a", Outcome.LOST: "l"}
CODE_OUTCOME = {v: k for k, v in OUTCOME_CODE.items()}
OP_CODE = {Op.SEND: "S", Op.WRITE: "W", Op.READ: "R", Op.FETCH_ADD: "F"}
CODE_OP = {v: k for k, v in OP_CODE.items()}
_OUTCOMES = list(OUTCOME_CODE)  # index 0 is None: a bytearray of zeros is "no outcome"
_OUTCOME_INDEX = {o: i for i, o in enumerate(_OUTCOMES)}
PAGE_FORMAT = 1


class Recorder:
    """The client's ledger as the worker keeps it: the same operations and rules as Ledger
    (posted, rejected, completed, retry, failed_to_app, finalize...), stored in flat arrays
    so that the I/O path allocates nothing per request. The current attempt of each
    request lives in the arrays; earlier attempts (replays) move to `history`.
    `page(start, limit)` hands the ledger back as columns (Ledger.from_pages rebuilds
    it): every request and every attempt, a few dozen bytes a request."""

    def __init__(self, requests: list[AppRequest]) -> None:
        if any(r.req_id != i for i, r in enumerate(requests)):
            raise ValueError("requests must be numbered 0..n-1 in order")
        n = len(requests)
        self.requests = requests
        self.outcome = bytearray(n)  # index into _OUTCOMES
        self.reason: dict[int, str] = {}
        self.natt = array("I", bytes(4 * n))  # attempts so far
        self.gen = array("q", bytes(8 * n))  # the current attempt's fields...
        self.post = array("q", bytes(8 * n))
        self.done = array("q", [-1]) * n  # -1: not completed
        self.status = bytearray(n)  # 0: none, else index + 1 into status_names
        self.vendor: dict[int, int] = {}  # non-zero vendor_err only
        self.errno: dict[int, int] = {}  # set when rejected at post
        self.history: dict[int, list[Attempt]] = {}
        self.status_names: list[str] = []
        self._status_code: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.outcome)

    def _attempt(self, i: int) -> Attempt:
        st = self.status[i]
        done = self.done[i]
        return Attempt(self.gen[i], self.post[i], self.status_names[st - 1] if st else None,
                       self.vendor.get(i, 0), None if done < 0 else done, self.errno.get(i))

    def attempts(self, i: int) -> list[Attempt]:
        return [*self.history.get(i, ()), self._attempt(i)] if self.natt[i] else []

    def posted(self, req_id: int, generation: int, t_ns: int) -> None:
        if self.natt[req_id]:
            self.history.setdefault(req_id, []).append(self._attempt(req_id))
            self.status[req_id] = 0
            self.done[req_id] = -1
            self.vendor.pop(req_id, None)
            self.errno.pop(req_id, None)
        self.natt[req_id] += 1
        self.gen[req_id] = generation
        self.post[req_id] = t_ns

    def rejected(self, req_id: int, err: int, reason: str) -> None:
        self.errno[req_id] = err
        self.outcome[req_id] = _OUTCOME_INDEX[Outcome.REJECTED_AT_POST]
        self.reason[req_id] = reason

    def completed(self, req_id: int, status: str, vendor_err: int, t_ns: int) -> None:
        code = self._status_code.get(status)
        if code is None:
            self.status_names.append(status)
            code = self._status_code[status] = len(self.status_names)
        self.status[req_id] = code
        if vendor_err:
            self.vendor[req_id] = vendor_err
        elif req_id in self.vendor:
            del self.vendor[req_id]
        self.done[req_id] = t_ns
        if status == "SUCCESS":
            self.outcome[req_id] = 2 if self.natt[req_id] > 1 else 1  # replayed / ok
        elif status == "WR_FLUSH_ERR":
            self.outcome[req_id] = _OUTCOME_INDEX[Outcome.FLUSHED]
        else:
            self.outcome[req_id] = _OUTCOME_INDEX[Outcome.COMPLETED_ERROR]
            self.reason[req_id] = f"{status} vendor_err {vendor_err}"

    def retry(self, req_id: int) -> None:
        self.outcome[req_id] = 0

    def failed_to_app(self, req_id: int, reason: str) -> None:
        self.outcome[req_id] = _OUTCOME_INDEX[Outcome.FAILED_TO_APP]
        self.reason[req_id] = reason

    def in_flight(self) -> list[int]:
        done, errno = self.done, self.errno
        return [i for i, k in enumerate(self.natt) if k and done[i] < 0 and i not in errno]

    def finalize(self) -> None:
        lost = _OUTCOME_INDEX[Outcome.LOST]
        for i in self.in_flight():
            self.outcome[i] = lost
            self.reason[i] = "posted, no completion by the deadline"

    def unaccounted(self) -> list[int]:
        out, i = [], self.outcome.find(0)
        while i >= 0:
            out.append(i)
            i = self.outcome.find(0, i + 1)
        return out

    def counts(self) -> dict[str, int]:
        c = Counter(self.outcome)
        return dict(sorted((_OUTCOMES[k].value if k else "unaccounted", v)
                           for k, v in c.items()))

    def latencies_ns(self) -> list[int]:
        """post -> completion of every completed current attempt (for figures)."""
        return [d - p for d, p in zip(self.done, self.post, strict=True) if d >= 0]

    def page(self, start: int, limit: int) -> dict:
        """Requests [start, start + limit) as columns (see Ledger.from_pages)."""
        start = min(max(start, 0), len(self))
        stop = min(len(self), start + max(limit, 0))
        reqs = self.requests
        rows = range(start, stop)
        return _columns(start, stop, [reqs[i] for i in rows],
                        [_OUTCOMES[self.outcome[i]] for i in rows],
                        {i: self.reason[i] for i in rows if i in self.reason},
                        [self.attempts(i) for i in rows])

    def to_ledger(self) -> Ledger:
        """The same ledger as a Ledger (for analysis in the worker's own process)."""
        return Ledger.from_pages([self.page(0, len(self))])


def _columns(start: int, stop: int, reqs: list[AppRequest], outcomes: list[Outcome | None],
             reasons: dict[int, str], attempts: list[list[Attempt]]) -> dict:
    natt, gens, posted, lat, stat, vendor, errno = [], [], [], [], [], [], []
    names: dict[str, int] = {}
    t0 = prev = next((a.posted_ns for atts in attempts for a in atts), 0)
    k = 0
    for atts in attempts:
        natt.append(len(atts))
        for a in atts:
            gens.append(a.generation)
            posted.append(a.posted_ns - prev)
            prev = a.posted_ns
            lat.append(None if a.completed_ns is None else a.completed_ns - a.posted_ns)
            stat.append(None if a.status is None else names.setdefault(a.status, len(names)))
            if a.vendor_err:
                vendor.append([k, a.vendor_err])
            if a.errno is not None:
                errno.append([k, a.errno])
            k += 1
    return {"format": PAGE_FORMAT, "start": start, "stop": stop,
            "ops": "".join(OP_CODE[r.op] for r in reqs), "sizes": [r.size for r in reqs],
            "qps": [r.qp_index for r in reqs],
            "outcomes": "".join(OUTCOME_CODE[o] for o in outcomes),
            "reasons": [[i, t] for i, t in sorted(reasons.items())],
            "attempts": natt, "t0": t0, "generations": gens, "posted": posted,
            "latency": lat, "statuses": stat, "status_names": list(names),
            "vendor_err": vendor, "errno": errno}


def ledger_page(led: Ledger, start: int, limit: int) -> dict:
    """A Ledger's requests [start, start + limit) as the columns Recorder.page makes."""
    ids = sorted(led.entries)[start:start + max(limit, 0)]
    es = [led.entries[i] for i in ids]
    return _columns(start, start + len(es),
                    [AppRequest(e.req_id, e.op, e.size, e.qp_index) for e in es],
                    [e.outcome for e in es],
                    {e.req_id: e.reason for e in es if e.reason},
                    [e.attempts for e in es])


def entries_from_page(page: dict) -> Iterable[LedgerEntry]:
    """The LedgerEntry rows of one page of columns (the inverse of Recorder.page)."""
    from harness.core.errors import ProtocolError

    try:
        if page.get("format") != PAGE_FORMAT:
            raise ValueError(f"format {page.get('format')!r}, expected {PAGE_FORMAT}")
        start, stop = int(page["start"]), int(page["stop"])
        n = stop - start
        cols = (page["ops"], page["sizes"], page["qps"], page["outcomes"], page["attempts"])
        if any(len(c) != n for c in cols):
            raise ValueError(f"columns of {[len(c) for c in cols]} rows for {n} requests")
        reasons = {int(i): str(t) for i, t in page["reasons"]}
        vendor = {int(k): int(v) for k, v in page["vendor_err"]}
        errno = {int(k): int(v) for k, v in page["errno"]}
        names = page["status_names"]
        gens, posted, lat, stat = (page["generations"], page["posted"], page["latency"],
                                   page["statuses"])
        t = int(page["t0"])
        k = 0
        out = []
        for j in range(n):
            atts = []
            for _ in range(int(page["attempts"][j])):
                t += int(posted[k])
                atts.append(Attempt(int(gens[k]), t,
                                    None if stat[k] is None else str(names[stat[k]]),
                                    vendor.get(k, 0),
                                    None if lat[k] is None else t + int(lat[k]), errno.get(k)))
                k += 1
            i = start + j
            out.append(LedgerEntry(i, CODE_OP[page["ops"][j]], int(page["sizes"][j]),
                                   int(page["qps"][j]), atts,
                                   CODE_OUTCOME[page["outcomes"][j]], reasons.get(i, "")))
        if k != len(gens):
            raise ValueError(f"{len(gens)} attempts listed, {k} counted")
        return out
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProtocolError(f"a ledger page is malformed: {type(exc).__name__}: {exc}",
                            "send pages made by Recorder.page") from None


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

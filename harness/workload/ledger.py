"""The controller's per-request ledger: one terminal outcome per application request.

The client worker keeps its ledger as a Recorder (harness.workload.recorder) and hands
it back in pages; Ledger.from_pages rebuilds it here, where the peer's view is added
(apply_peer_view). Both apply the outcome rules of harness.workload.outcomes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from harness.rdma.payload import GOODBYE_SEQ
from harness.workload.entries import Attempt, LedgerEntry
from harness.workload.outcomes import (
    OUTCOME_RULES,
    LedgerEvent,
    Outcome,
    PeerView,
    completion_outcome,
    held_across,
)
from harness.workload.pages import columns, entries_from_page
from harness.workload.spec import MAX_MESSAGE, PEER_VISIBLE, AppRequest, Op, WorkloadSpec

__all__ = [  # the names importers outside the workload take from here
    "MAX_MESSAGE", "Attempt", "Ledger", "LedgerEntry", "Op", "Outcome", "PeerView",
    "WorkloadSpec", "apply_peer_view",
]


class Ledger:
    """The client's record. Outcomes are final once set, except a failed attempt that the
    client replays: `retry` reopens the entry for a new attempt."""

    def __init__(self, requests: list[AppRequest]) -> None:
        self.entries = {r.req_id: LedgerEntry(r.req_id, r.op, r.size, r.qp_index)
                        for r in requests}

    def arrived(self, req_id: int, t_ns: int) -> None:
        self.entries[req_id].arrived_ns = t_ns

    def posted(self, req_id: int, generation: int, t_ns: int, held_below: int = 0) -> None:
        e = self.entries[req_id]
        if held_across(req_id, len(e.attempts), held_below):
            e.held = True
        if e.arrived_ns is None:  # handed over when taken (closed loop)
            e.arrived_ns = t_ns
        e.attempts.append(Attempt(generation, t_ns))

    def rejected(self, req_id: int, err: int, reason: str) -> None:
        e = self.entries[req_id]
        e.attempts[-1].errno = err
        e.outcome, e.reason = OUTCOME_RULES[LedgerEvent.REJECTED][0], reason

    def completed(self, req_id: int, status: str, vendor_err: int, t_ns: int) -> None:
        e = self.entries[req_id]
        att = e.attempts[-1]
        att.status, att.vendor_err, att.completed_ns = status, vendor_err, t_ns
        e.outcome, reason = completion_outcome(status, len(e.attempts), vendor_err, e.held)
        if reason:
            e.reason = reason

    def retry(self, req_id: int) -> None:
        """The client will replay this request: its failed outcome is not terminal."""
        self.entries[req_id].outcome = None

    def failed_to_app(self, req_id: int, reason: str) -> None:
        e = self.entries[req_id]
        e.outcome, e.reason = OUTCOME_RULES[LedgerEvent.REFUSED][0], reason

    def abandoned(self, req_id: int, reason: str) -> None:
        """Posted, and the device went before it completed: failed to the caller."""
        e = self.entries[req_id]
        e.outcome, e.reason = OUTCOME_RULES[LedgerEvent.DEVICE_GONE][0], reason

    def restore(self, req: AppRequest, reason: str) -> None:
        """Put back a request the ledger does not have although it was issued (its
        journal, or the peer, says so): without an outcome, so it is unaccounted."""
        self.entries[req.req_id] = LedgerEntry(req.req_id, req.op, req.size, req.qp_index,
                                               reason=reason)
        self.entries = dict(sorted(self.entries.items()))

    def in_flight(self) -> list[int]:
        return [i for i, e in self.entries.items()
                if e.attempts and e.attempts[-1].completed_ns is None
                and e.attempts[-1].errno is None and e.outcome is not Outcome.ABANDONED]

    def finalize(self) -> None:
        """At the deadline: whatever was posted and never completed is LOST."""
        for i in self.in_flight():
            e = self.entries[i]
            e.outcome, e.reason = OUTCOME_RULES[LedgerEvent.DEADLINE]

    def unaccounted(self) -> list[int]:
        return [i for i, e in self.entries.items() if e.outcome is None]

    def counts(self) -> dict[str, int]:
        c = Counter(e.outcome.value if e.outcome else "unaccounted"
                    for e in self.entries.values())
        return dict(sorted(c.items()))

    def peer_counts(self) -> dict[str, int]:
        c = Counter(e.peer.value for e in self.entries.values() if e.peer)
        return dict(sorted(c.items()))

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.entries.values()]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]]) -> Ledger:
        led = cls([])
        led.entries = {r["req_id"]: LedgerEntry.from_json(r) for r in rows}
        return led

    def page(self, start: int, limit: int) -> dict[str, Any]:
        """Requests [start, start + limit) as the columns Recorder.page makes."""
        ids = sorted(self.entries)[start:start + max(limit, 0)]
        es = [self.entries[i] for i in ids]
        return columns(start, start + len(es),
                       [AppRequest(e.req_id, e.op, e.size, e.qp_index) for e in es],
                       [e.outcome for e in es],
                       {e.req_id: e.reason for e in es if e.reason},
                       [e.attempts for e in es], [e.arrived_ns for e in es],
                       [e.held for e in es])

    @classmethod
    def from_pages(cls, pages: Iterable[dict[str, Any]]) -> Ledger:
        """Rebuild a ledger from the pages of columns a worker's Recorder hands back."""
        led = cls([])
        for page in pages:
            for e in entries_from_page(page):
                led.entries[e.req_id] = e
        return led


def apply_peer_view(ledger: Ledger, arrivals: list[dict[str, Any]]) -> list[int]:
    """Match the peer's arrivals (seq, ok) to the ledger: once, duplicated, corrupted, missing.
    Returns the requests the peer received intact that the ledger does not have (a
    dropped entry: unaccounted; the goodbye and a damaged message name no request)."""
    by_seq: dict[int, list[dict[str, Any]]] = {}
    for a in arrivals:
        if a.get("seq") is not None:
            by_seq.setdefault(int(a["seq"]), []).append(a)
    strays = sorted(seq - 1 for seq, got in by_seq.items() if seq != GOODBYE_SEQ
                    and seq - 1 not in ledger.entries and any(a.get("ok") for a in got))
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
    return strays

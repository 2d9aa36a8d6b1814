"""The client worker's ledger: flat arrays, handed back in pages of columns.

A Recorder keeps the same record as a Ledger (harness.workload.ledger) with the same
outcome rules (harness.workload.outcomes), in arrays so that the I/O path allocates
nothing per request; `page(start, limit)` hands it back as columns and
entries_from_page() reads them (Ledger.from_pages).
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Any

from harness.workload.entries import Attempt
from harness.workload.outcomes import OUTCOME_RULES, LedgerEvent, completion_outcome, held_across
from harness.workload.pages import OUTCOME_INDEX, OUTCOMES, columns
from harness.workload.spec import AppRequest

_REJECTED = OUTCOME_INDEX[OUTCOME_RULES[LedgerEvent.REJECTED][0]]
_REFUSED = OUTCOME_INDEX[OUTCOME_RULES[LedgerEvent.REFUSED][0]]
_ABANDONED = OUTCOME_INDEX[OUTCOME_RULES[LedgerEvent.DEVICE_GONE][0]]


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
        self.outcome = bytearray(n)  # index into OUTCOMES
        self.reason: dict[int, str] = {}
        self.natt = array("I", bytes(4 * n))  # attempts so far
        self.gen = array("q", bytes(8 * n))  # the current attempt's fields...
        self.post = array("q", bytes(8 * n))
        self.done = array("q", [-1]) * n  # -1: not completed
        self.arrive = array("q", [-1]) * n  # -1: not arrived (closed loop: set at first post)
        self.held = bytearray(n)  # 1: its first attempt waited across a reopen
        self.status = bytearray(n)  # 0: none, else index + 1 into status_names
        self.vendor: dict[int, int] = {}  # non-zero vendor_err only
        self.errno: dict[int, int] = {}  # set when rejected at post
        self.history: dict[int, list[Attempt]] = {}
        self.status_names: list[str] = []
        self._status_code: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.outcome)

    def truncate(self, n: int) -> None:
        """Keep requests [0, n) only: the workload stopped after n were issued (those after
        never existed for the application: no attempt, no outcome)."""
        if any(self.natt[i] or self.outcome[i] for i in range(n, len(self))):
            raise ValueError(f"requests from {n} on were already issued: cannot cut there")
        self.requests = self.requests[:n]
        for arr in (self.outcome, self.natt, self.gen, self.post, self.done, self.arrive,
                    self.held, self.status):
            del arr[n:]

    def _attempt(self, i: int) -> Attempt:
        st = self.status[i]
        done = self.done[i]
        return Attempt(self.gen[i], self.post[i], self.status_names[st - 1] if st else None,
                       self.vendor.get(i, 0), None if done < 0 else done, self.errno.get(i))

    def attempts(self, i: int) -> list[Attempt]:
        return [*self.history.get(i, ()), self._attempt(i)] if self.natt[i] else []

    def arrived(self, req_id: int, t_ns: int) -> None:
        self.arrive[req_id] = t_ns

    def posted(self, req_id: int, generation: int, t_ns: int, held_below: int = 0) -> None:
        if held_below and held_across(req_id, self.natt[req_id], held_below):
            self.held[req_id] = 1
        if self.arrive[req_id] < 0:
            self.arrive[req_id] = t_ns
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
        self.outcome[req_id] = _REJECTED
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
        outcome, reason = completion_outcome(status, self.natt[req_id], vendor_err,
                                             bool(self.held[req_id]))
        self.outcome[req_id] = OUTCOME_INDEX[outcome]
        if reason:
            self.reason[req_id] = reason

    def retry(self, req_id: int) -> None:
        self.outcome[req_id] = 0

    def failed_to_app(self, req_id: int, reason: str) -> None:
        self.outcome[req_id] = _REFUSED
        self.reason[req_id] = reason

    def abandoned(self, req_id: int, reason: str) -> None:
        self.outcome[req_id] = _ABANDONED
        self.reason[req_id] = reason

    def in_flight(self) -> list[int]:
        done, errno, out = self.done, self.errno, self.outcome
        return [i for i, k in enumerate(self.natt) if k and done[i] < 0 and i not in errno
                and out[i] != _ABANDONED]

    def finalize(self) -> None:
        lost, reason = OUTCOME_RULES[LedgerEvent.DEADLINE]
        for i in self.in_flight():
            self.outcome[i] = OUTCOME_INDEX[lost]
            self.reason[i] = reason

    def unaccounted(self) -> list[int]:
        out, i = [], self.outcome.find(0)
        while i >= 0:
            out.append(i)
            i = self.outcome.find(0, i + 1)
        return out

    def counts(self) -> dict[str, int]:
        c = Counter(self.outcome)
        return dict(sorted((str(OUTCOMES[k] or "unaccounted"), v) for k, v in c.items()))

    def latencies_ns(self) -> list[int]:
        """post -> completion of every completed current attempt (for figures)."""
        return [d - p for d, p in zip(self.done, self.post, strict=True) if d >= 0]

    def page(self, start: int, limit: int) -> dict[str, Any]:
        """Requests [start, start + limit) as columns (see Ledger.from_pages)."""
        start = min(max(start, 0), len(self))
        stop = min(len(self), start + max(limit, 0))
        reqs = self.requests
        rows = range(start, stop)
        return columns(start, stop, [reqs[i] for i in rows],
                        [OUTCOMES[self.outcome[i]] for i in rows],
                        {i: self.reason[i] for i in rows if i in self.reason},
                        [self.attempts(i) for i in rows],
                        [None if self.arrive[i] < 0 else self.arrive[i] for i in rows],
                        [bool(self.held[i]) for i in rows])

"""Figures read off a ledger at given moments: how many requests were in flight, and
how long the requests held across a sleep waited (pure logic, on ledger entries)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from harness.workload.coverage import Span
from harness.workload.entries import LedgerEntry
from harness.workload.outcomes import Outcome


def in_flight_at(entries: Iterable[LedgerEntry], t_ns: int) -> int:
    """Requests posted at or before `t_ns` and not completed by then (an attempt without a
    completion ends where the next attempt of the same request is posted; the last one
    without a completion, never: lost, abandoned or killed in flight)."""
    n = 0
    for e in entries:
        atts = e.attempts
        for k, a in enumerate(atts):
            if a.posted_ns > t_ns or a.errno is not None:
                continue
            end = a.completed_ns
            if end is None and k + 1 < len(atts):
                end = atts[k + 1].posted_ns
            if end is None or end > t_ns:
                n += 1
                break
    return n


@dataclass(frozen=True)
class Waits:
    """The waits of the requests that completed late (COMPLETED_LATE): arrival to first
    post, in ms."""

    count: int
    median_ms: float | None
    max_ms: float | None


def late_waits(entries: Iterable[LedgerEntry]) -> Waits:
    ws = [w / 1e6 for e in entries if e.outcome is Outcome.COMPLETED_LATE
          and (w := e.wait_ns) is not None]
    if not ws:
        return Waits(0, None, None)
    return Waits(len(ws), round(statistics.median(ws), 1), round(max(ws), 1))


def spans(entries: Iterable[LedgerEntry], closed_loop_go_ns: int | None = None) -> list[Span]:
    """Each request's life as the application saw it (harness.workload.coverage), from
    when it was handed over to its final outcome: the completion of its last attempt,
    the post that was rejected, its refusal (at its arrival, or at its last attempt's
    completion); None when it never got one (lost, abandoned, killed, or never taken).

    Handed over: open loop, at its arrival; closed loop (`closed_loop_go_ns`: the
    workload's go), the application has the next request ready from the moment the
    client took the one before it (request 0: from go), and it waits there while the
    client cannot take it, which is how a held client makes its application wait."""
    out = []
    prev_taken = closed_loop_go_ns
    for e in sorted(entries, key=lambda x: x.req_id):
        atts = e.attempts
        taken = e.arrived_ns if e.arrived_ns is not None else \
            atts[0].posted_ns if atts else None
        start = prev_taken if closed_loop_go_ns is not None else taken
        if closed_loop_go_ns is not None and taken is not None:
            prev_taken = max(prev_taken or taken, taken)
        if start is None or (not atts and e.outcome is None):
            continue  # never handed over: not part of the workload
        end: int | None = None
        if e.outcome in _NEVER_ENDED or e.outcome is None:
            end = None
        elif atts and atts[-1].errno is not None:
            end = atts[-1].posted_ns
        elif atts and atts[-1].completed_ns is not None:
            end = atts[-1].completed_ns
        elif e.outcome is Outcome.FAILED_TO_APP and e.arrived_ns is not None:
            end = e.arrived_ns
        out.append(Span(start, end))
    return out


_NEVER_ENDED = frozenset({Outcome.LOST, Outcome.ABANDONED, Outcome.KILLED_IN_FLIGHT})

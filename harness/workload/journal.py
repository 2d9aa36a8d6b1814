"""A client worker's journal: what a worker killed while running leaves behind, and the
ledger read back from it.

One JSON line per note, and one per run of postings or completions:

    {"t_ns": T, "event": "posted", "detail": {"reqs": [...], "gen": G}}
    {"t_ns": T, "event": "completed", "detail": {"reqs": [...], "errors": {"R": "STATUS"}}}

("errors": the requests of the run whose completion was not SUCCESS, with its status).
Notes that settle outcomes: "go" {t0_ns} (open-loop arrivals count from it), "opened"
{generation, held_below}, "arrived" {upto}, "flushed" {reqs, requeued}, "rejected"
{req | reqs, errno}, "refused" {reqs, reason}, "abandoned" {reqs, reason}, "stopped"
{upto} (a RESUMED workload: nothing arrives after). "round" {round} starts a new
workload round on the same worker (rxe-power stress): the books before it are another
round's. T is when the line was written: a posting is journaled just before its post, a
completion right after its batch was taken off the CQ (clients.userspace.io_path).

ledger_from_journal() rebuilds the ledger of a killed client's current round up to the
kill: every request its workload issued (posted, arrived or refused) gets its outcome,
and what was posted or waiting in its queue at the kill gets KILLED_IN_FLIGHT.
"""

from __future__ import annotations

import json
from typing import Any

from harness.workload.ledger import Ledger
from harness.workload.outcomes import FLUSHED_STATUS, OUTCOME_RULES, SUCCESS, LedgerEvent
from harness.workload.spec import Arrivals, WorkloadSpec


def journal_lines(pending: list[int], t_ns: int, generation: int,
                  errors: dict[int, str] | None = None) -> str:
    """The lines for `pending` (seq posted (+) or completed (-), in order): one line per
    run of the same kind. `errors`: request -> WC status of the completions among them
    that were not SUCCESS."""
    lines: list[str] = []
    run: list[int] = []
    posted = pending[0] > 0
    for v in pending:
        if (v > 0) != posted:
            lines.append(journal_run(t_ns, posted, run, generation, errors))
            run, posted = [], v > 0
        run.append(v - 1 if v > 0 else -v - 1)
    lines.append(journal_run(t_ns, posted, run, generation, errors))
    return "".join(lines)


def note_line(t_ns: int, what: str, detail: dict[str, Any]) -> str:
    return f'{{"t_ns": {t_ns}, "event": "{what}", "detail": {_json(detail)}}}\n'


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def journal_run(t_ns: int, posted: bool, reqs: list[int], generation: int,
                errors: dict[int, str] | None = None) -> str:
    if posted:
        return (f'{{"t_ns": {t_ns}, "event": "posted", "detail": {{"reqs": {_json(reqs)}, '
                f'"gen": {generation}}}}}\n')
    bad = {str(r): errors[r] for r in reqs if r in errors} if errors else {}
    more = f', "errors": {_json(bad)}' if bad else ""
    return f'{{"t_ns": {t_ns}, "event": "completed", "detail": {{"reqs": {_json(reqs)}{more}}}}}\n'


def journal_records(text: str) -> list[dict[str, Any]]:
    """The journal's records in order; a line cut by the kill (or otherwise unreadable)
    is skipped."""
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("detail", {}), dict):
            out.append(rec)
    return out


def _reqs(detail: dict[str, Any], count: int) -> list[int]:
    """One request ("req") or a batch ("reqs"); ids outside the workload are dropped."""
    got = list(detail.get("reqs", [])) + ([detail["req"]] if "req" in detail else [])
    return [r for r in got if isinstance(r, int) and 0 <= r < count]


def ledger_from_journal(text: str, spec: WorkloadSpec) -> Ledger:
    """The ledger of a client killed while running, from its journal (see the module
    docstring): only the requests its workload issued, each with an outcome."""
    n = spec.count
    led = Ledger(spec.requests())
    issued: set[int] = set()
    t0: int | None = None
    held_below = 0
    arrived = 0
    last_t = 0

    def arrive_upto(upto: int) -> None:
        nonlocal arrived
        for i in range(arrived, min(upto, n)):
            issued.add(i)
            if t0 is not None:
                led.arrived(i, t0 + spec.arrival_offset_ns(i))
        arrived = max(arrived, min(upto, n))

    records = journal_records(text)
    starts = [i for i, rec in enumerate(records) if rec.get("event") == "round"]
    for rec in records[starts[-1] + 1:] if starts else records:  # the current round's
        ev, d = rec.get("event"), rec.get("detail", {})
        t = int(rec.get("t_ns", last_t))
        last_t = t
        if ev == "go":
            t0 = int(d.get("t0_ns", t))
        elif ev == "arrived" and spec.arrivals is Arrivals.OPEN:
            arrive_upto(int(d.get("upto", 0)))
        elif ev == "opened":
            held_below = int(d.get("held_below", 0))
        elif ev == "posted":
            for r in _reqs(d, n):
                if spec.arrivals is Arrivals.OPEN:
                    arrive_upto(r + 1)
                issued.add(r)
                led.posted(r, int(d.get("gen", 1)), t, held_below)
        elif ev == "completed":
            errors = d.get("errors", {})
            for r in _reqs(d, n):
                if led.entries[r].attempts:
                    led.completed(r, str(errors.get(str(r), SUCCESS)), 0, t)
        elif ev == "flushed":
            for r in _reqs(d, n):
                e = led.entries[r]
                if e.attempts and e.attempts[-1].completed_ns is None:
                    led.completed(r, FLUSHED_STATUS, 0, t)
                if d.get("requeued"):
                    led.retry(r)
        elif ev == "rejected":
            for r in _reqs(d, n):
                if led.entries[r].attempts:
                    led.rejected(r, int(d.get("errno", 0)), "rejected at post")
        elif ev == "refused":
            for r in _reqs(d, n):
                issued.add(r)
                led.failed_to_app(r, str(d.get("reason", "refused")))
        elif ev == "abandoned":
            for r in _reqs(d, n):
                issued.add(r)
                led.abandoned(r, str(d.get("reason", "the device went")))
    killed, why = OUTCOME_RULES[LedgerEvent.KILLED]
    in_flight = set(led.in_flight())
    for r in sorted(issued):
        e = led.entries[r]
        if e.outcome is None or r in in_flight:
            e.outcome, e.reason = killed, why
    led.entries = {r: e for r, e in led.entries.items() if r in issued}
    return led


def restore_dropped(ledger: Ledger, text: str, spec: WorkloadSpec) -> list[int]:
    """The requests the journal shows issued in the current round (posted, arrived or
    refused) that `ledger` (what the worker handed back) does not have: put back without
    an outcome, so they count as unaccounted and the row is broken. Returns their ids."""
    issued = ledger_from_journal(text, spec).entries
    dropped = sorted(set(issued) - set(ledger.entries))
    requests = spec.requests()
    for r in dropped:
        ledger.restore(requests[r], "issued (the journal shows it) but missing from the "
                                    "ledger the worker handed back")
    return dropped

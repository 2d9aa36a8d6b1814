"""A ledger as pages of columns: how a client worker hands its ledger back.

columns() makes a page (a few dozen bytes a request: every request and every attempt);
entries_from_page() reads one back (a ProtocolError names what is malformed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harness.core.errors import ProtocolError
from harness.workload.entries import Attempt, LedgerEntry
from harness.workload.outcomes import Outcome
from harness.workload.spec import AppRequest, Op

OUTCOME_CODE = {None: "-", Outcome.COMPLETED_OK: "o", Outcome.REPLAYED_OK: "r",
                Outcome.REJECTED_AT_POST: "j", Outcome.COMPLETED_ERROR: "e",
                Outcome.FLUSHED: "f", Outcome.FAILED_TO_APP: "a", Outcome.LOST: "l",
                Outcome.COMPLETED_LATE: "d", Outcome.ABANDONED: "b",
                Outcome.KILLED_IN_FLIGHT: "k"}
CODE_OUTCOME = {v: k for k, v in OUTCOME_CODE.items()}
OP_CODE = {Op.SEND: "S", Op.WRITE: "W", Op.READ: "R", Op.FETCH_ADD: "F"}
CODE_OP = {v: k for k, v in OP_CODE.items()}
OUTCOMES = list(OUTCOME_CODE)  # index 0 is None: a bytearray of zeros is "no outcome"
OUTCOME_INDEX = {o: i for i, o in enumerate(OUTCOMES)}
PAGE_FORMAT = 2  # 2: arrivals and held requests


def columns(start: int, stop: int, reqs: list[AppRequest], outcomes: list[Outcome | None],
             reasons: dict[int, str], attempts: list[list[Attempt]],
             arrived: list[int | None], held: list[bool]) -> dict[str, Any]:
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
            "vendor_err": vendor, "errno": errno,
            "arrived": [None if a is None else a - t0 for a in arrived],
            "held": [j for j, h in enumerate(held) if h]}


def entries_from_page(page: dict[str, Any]) -> Iterable[LedgerEntry]:
    """The LedgerEntry rows of one page of columns (the inverse of Recorder.page)."""
    try:
        if page.get("format") != PAGE_FORMAT:
            raise ValueError(f"format {page.get('format')!r}, expected {PAGE_FORMAT}")
        start, stop = int(page["start"]), int(page["stop"])
        n = stop - start
        cols = (page["ops"], page["sizes"], page["qps"], page["outcomes"], page["attempts"],
                page["arrived"])
        if any(len(c) != n for c in cols):
            raise ValueError(f"columns of {[len(c) for c in cols]} rows for {n} requests")
        reasons = {int(i): str(t) for i, t in page["reasons"]}
        vendor = {int(k): int(v) for k, v in page["vendor_err"]}
        errno = {int(k): int(v) for k, v in page["errno"]}
        names = page["status_names"]
        gens, posted, lat, stat = (page["generations"], page["posted"], page["latency"],
                                   page["statuses"])
        t = t0 = int(page["t0"])
        held = {int(j) for j in page["held"]}
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
            arr = page["arrived"][j]
            out.append(LedgerEntry(i, CODE_OP[page["ops"][j]], int(page["sizes"][j]),
                                   int(page["qps"][j]), atts,
                                   CODE_OUTCOME[page["outcomes"][j]], reasons.get(i, ""),
                                   None, None if arr is None else t0 + int(arr), j in held))
        if k != len(gens):
            raise ValueError(f"{len(gens)} attempts listed, {k} counted")
        return out
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProtocolError(f"a ledger page is malformed: {type(exc).__name__}: {exc}",
                            "send pages made by Recorder.page") from None

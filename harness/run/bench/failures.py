"""Why a bench run is not a figure: the cause of a failed run, from the harness client's
ledger and the peer's events, or from perftest's own output. A run with any error is
reported as failed with its cause and no ratio (harness.run.bench.client_vs_perftest)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from harness.rdma.names import wc_status_name
from harness.workload.ledger import Ledger, Outcome, PeerView

FLUSH = "WR_FLUSH_ERR"  # the peer's receives flushed when its QP goes to ERR (every goodbye)
# perftest's NOTIFY_COMP_ERROR_* lines: " Completion with error at client" then
# " Failed status 11: wr_id 0 syndrom 0x0" (status: enum ibv_wc_status)
_PT_SIDE = re.compile(r"Completion with error at (client|server)")
_PT_STATUS = re.compile(r"Failed status (\d+): wr_id (\d+) syndrom (0x[0-9a-fA-F]+)")


@dataclass(frozen=True)
class FirstError:
    """The request whose attempt failed first (by completion time; a rejected post by its
    post time): its completion status, or the errno of the post."""

    req_id: int
    status: str  # WC status name, or "rejected-at-post"
    vendor_err: int = 0
    errno: int | None = None

    def text(self) -> str:
        if self.errno is not None:
            return f"request {self.req_id} rejected at post (errno {self.errno})"
        vendor = f" (vendor_err {self.vendor_err})" if self.vendor_err else ""
        return f"request {self.req_id} completed {self.status}{vendor}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def first_error(ledger: Ledger) -> FirstError | None:
    """The earliest failed attempt of the ledger, flushes aside (a flush follows an error;
    it is never the first cause)."""
    best: tuple[int, FirstError] | None = None
    for e in ledger.entries.values():
        for a in e.attempts:
            if a.errno is not None:
                cand = (a.posted_ns, FirstError(e.req_id, "rejected-at-post", 0, a.errno))
            elif a.status not in (None, "SUCCESS", FLUSH) and a.completed_ns is not None:
                cand = (a.completed_ns, FirstError(e.req_id, a.status, a.vendor_err))
            else:
                continue
            if best is None or cand[0] < best[0]:
                best = cand
    return best[1] if best else None


def peer_errors(events: list[dict[str, Any]]) -> dict[str, int]:
    """The peer's error completions by status, its flushed receives aside: the agent moves
    its QP to ERR at every client's goodbye, which flushes the receives it still had."""
    return dict(sorted(Counter(str(ev.get("status")) for ev in events
                               if ev.get("kind") == "wc_error"
                               and ev.get("status") != FLUSH).items()))


def harness_failure(count: int, counts: dict[str, int], peer_counts: dict[str, int],
                    unaccounted: int, first: FirstError | None, peer_errs: dict[str, int],
                    bound: str | None) -> str | None:
    """None when every request completed once and, for SEND/WRITE, reached the peer once
    with nothing going wrong at the peer; else what went wrong, the first error first."""
    ok = Outcome.COMPLETED_OK.value
    held = (unaccounted == 0 and counts == {ok: count}
            and peer_counts == {PeerView.DELIVERED_ONCE.value: count}
            and not peer_errs and bound is None and first is None)
    if held:
        return None
    parts: list[str] = []
    if bound:
        parts.append(bound)
    if first is not None:
        parts.append(first.text())
    others = {k: v for k, v in counts.items() if k != ok}
    if others:
        parts.append(", ".join(f"{v} {k}" for k, v in others.items())
                     + f" (of {count}; {counts.get(ok, 0)} {ok})")
    if unaccounted:
        parts.append(f"{unaccounted} unaccounted")
    peer_bad = {k: v for k, v in peer_counts.items() if k != PeerView.DELIVERED_ONCE.value}
    if peer_bad:
        parts.append("the peer: " + ", ".join(f"{v} {k}" for k, v in peer_bad.items()))
    if peer_errs:
        parts.append("the peer's error completions: "
                     + ", ".join(f"{v} {k}" for k, v in peer_errs.items()))
    if not parts:  # counts that do not add up, with no error named
        parts.append(f"counts {counts}, peer {peer_counts} for {count} requests")
    return "; ".join(parts)


def perftest_failure(output: str, returncode: int) -> str | None:
    """What perftest said went wrong: an error completion (its side, status name, wr_id,
    syndrome) or, failing that, a non-zero exit with its last lines. None when it exited 0
    and printed no error completion."""
    side = _PT_SIDE.search(output)
    status = _PT_STATUS.search(output)
    if side or status:
        where = f" at the {side.group(1)}" if side else ""
        if status:
            code = int(status.group(1))
            return (f"perftest: an error completion{where}: {wc_status_name(code)} "
                    f"(status {code}, wr_id {status.group(2)}, syndrome {status.group(3)}); "
                    f"exit {returncode}")
        return f"perftest: an error completion{where}; exit {returncode}"
    if returncode != 0:
        tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
        return f"perftest exited {returncode}: {tail[:300]}"
    return None

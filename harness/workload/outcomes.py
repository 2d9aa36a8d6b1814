"""Outcomes and the one table of outcome rules.

Every application request gets exactly one outcome on our side, and, where the peer
can see it (SEND and WRITE_WITH_IMM land in the peer's receive queue), one view from
the peer's side. The invariant a run must hold: no request without an outcome. A
request that was posted and never completed by the deadline is LOST, which is an
outcome (and a bad one), so "unaccounted" only happens if the client itself forgot a
request: a harness bug or a crashed worker.

What each event makes of a request's outcome is decided here once (OUTCOME_RULES and
completion_outcome); both ledgers (harness.workload.ledger.Ledger, the controller's,
and harness.workload.recorder.Recorder, the client worker's flat one) apply it.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    COMPLETED_OK = "completed-ok"  # completed successfully on its first QP generation
    # completed successfully on its first attempt, posted only after a reopen: it arrived
    # before the client got its device back and waited in the client's queue across the
    # sleep (its wait: the first post minus its arrival)
    COMPLETED_LATE = "completed-late"
    REPLAYED_OK = "replayed-ok"  # completed successfully after a replay on a later generation
    REJECTED_AT_POST = "rejected-at-post"  # post_send failed (errno)
    COMPLETED_ERROR = "completed-error"  # a completion with an error status (not a flush)
    FLUSHED = "flushed"  # WR_FLUSH_ERR: the QP went to ERR with it queued
    FAILED_TO_APP = "failed-to-app"  # never posted: the client refused it to its caller
    LOST = "lost"  # posted, never completed by the deadline
    # posted; the device was taken away (DEVICE_FATAL) before it completed, and the client
    # failed it to its caller without a completion (rxe never completes it, not even flushed)
    ABANDONED = "abandoned"
    # posted or waiting in the client's queue when the client was killed: its journal shows
    # no outcome and nobody will ever report one
    KILLED_IN_FLIGHT = "killed-in-flight"


class PeerView(StrEnum):
    DELIVERED_ONCE = "delivered-once"
    DUPLICATED = "duplicated"
    CORRUPTED = "corrupted"
    MISSING = "missing"
    NOT_VISIBLE = "not-visible"  # READ and atomics: the peer's HCA answers without its CPU


class LedgerEvent(StrEnum):
    """What happens to a request that settles its outcome (completions: completion_outcome)."""

    REJECTED = "rejected"  # post_send refused it
    REFUSED = "refused"  # the client refused it to its caller, never posted
    DEADLINE = "deadline"  # posted, still not completed at the deadline
    DEVICE_GONE = "device-gone"  # posted, the device went (DEVICE_FATAL), the client gave up
    KILLED = "killed"  # the client was killed with it posted or queued


# event -> the outcome it gives, and the reason recorded with it ("" : the caller's reason)
OUTCOME_RULES: dict[LedgerEvent, tuple[Outcome, str]] = {
    LedgerEvent.REJECTED: (Outcome.REJECTED_AT_POST, ""),
    LedgerEvent.REFUSED: (Outcome.FAILED_TO_APP, ""),
    LedgerEvent.DEADLINE: (Outcome.LOST, "posted, no completion by the deadline"),
    LedgerEvent.DEVICE_GONE: (Outcome.ABANDONED, ""),
    LedgerEvent.KILLED: (Outcome.KILLED_IN_FLIGHT, "the client was killed with it in flight"),
}
SUCCESS = "SUCCESS"
FLUSHED_STATUS = "WR_FLUSH_ERR"


def completion_outcome(status: str, attempts: int, vendor_err: int,
                       held: bool = False) -> tuple[Outcome, str]:
    """The outcome of a completion with WC status `status` on a request's `attempts`-th
    attempt, and the reason to record ("": none, keep what is there). `held`: its first
    attempt was posted only after a reopen, though it had arrived before (held_across)."""
    if status == SUCCESS:
        if attempts > 1:
            return Outcome.REPLAYED_OK, ""
        return (Outcome.COMPLETED_LATE if held else Outcome.COMPLETED_OK), ""
    if status == FLUSHED_STATUS:
        return Outcome.FLUSHED, ""
    return Outcome.COMPLETED_ERROR, f"{status} vendor_err {vendor_err}"


def held_across(req_id: int, attempts_before: int, held_below: int) -> bool:
    """Whether a request posted now for the first time (`attempts_before` 0) waited in the
    client's queue across a sleep: open-loop requests arrive in order, and `held_below` is
    how many had arrived when the client last reopened its device (0 before any reopen)."""
    return attempts_before == 0 and req_id < held_below

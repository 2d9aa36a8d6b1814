"""An outside program's requests as a client lane of the timeline picture: its traced
ledger in the shape of a policy client's result (harness/run/scenario_result.py), so the
report draws it like one.

    lane = program_lane("cmd:ib_send_bw", led, ClientEnd.COMPLETED, peer_counts)

A program may post hundreds of thousands of requests: every request that did not end
completed-ok is kept, and of the completed-ok ones an even sample, so that a lane has at
most MAX_LANE_POINTS marks (the sampling is one of the lane's notes).
"""

from __future__ import annotations

from typing import Any

from harness.run.scenario_result import ClientEnd, ClientResult
from harness.workload.ledger import Outcome
from harness.workload.traced_types import FindingKind, ProcessLedger, TracedRequest
from harness.workload.tracelog import WrOpcode

MAX_LANE_POINTS = 1500  # request marks drawn per program lane

_OP_CLASS = {WrOpcode.RDMA_WRITE: "WRITE", WrOpcode.RDMA_WRITE_WITH_IMM: "WRITE",
             WrOpcode.RDMA_READ: "READ", WrOpcode.ATOMIC_CMP_AND_SWP: "FETCH_ADD",
             WrOpcode.ATOMIC_FETCH_AND_ADD: "FETCH_ADD"}  # else SEND (the pictures' marks)
_EVENT_FINDINGS = (FindingKind.ASYNC_EVENT,)


def sampled(requests: list[TracedRequest], limit: int = MAX_LANE_POINTS,
            ) -> tuple[list[TracedRequest], int]:
    """(the requests to draw, 1 in how many completed-ok ones is drawn)."""
    others = [r for r in requests if r.outcome is not Outcome.COMPLETED_OK]
    ok = [r for r in requests if r.outcome is Outcome.COMPLETED_OK]
    room = max(1, limit - len(others))
    step = max(1, -(-len(ok) // room))
    keep = {id(r) for r in ok[::step]} | {id(r) for r in others}
    return [r for r in requests if id(r) in keep], step


def ledger_entry(r: TracedRequest) -> dict[str, Any]:
    attempt: dict[str, Any] = {"posted_ns": r.posted_ns, "completed_ns": r.completed_ns,
                               "status": r.status or None}
    if r.outcome is Outcome.REJECTED_AT_POST:
        attempt["errno"] = r.errno
    return {"seq": r.seq, "op": _OP_CLASS.get(r.opcode, "SEND"),
            "outcome": r.outcome.value if r.outcome else None, "attempts": [attempt],
            "peer": r.peer.value if r.peer else None}


def program_lane(label: str, led: ProcessLedger | None, ended: ClientEnd,
                 peer_counts: dict[str, int], exit_ns: int | None = None) -> ClientResult:
    """The program's lane; without a log (the tracer was not loaded) an empty one."""
    if led is None:
        return ClientResult(label, label, ended, crash="no trace log")
    shown, step = sampled(led.sends())
    events: list[dict[str, Any]] = []
    if step > 1:
        first = min((r.posted_ns for r in shown), default=None)
        events.append({"t_ns": first, "event": f"1 in {step} completed-ok drawn"})
    events += [{"t_ns": f.t_ns, "event": "async", "name": f.detail} for f in led.findings
               if f.what in _EVENT_FINDINGS and f.t_ns]
    if exit_ns is not None:
        events.append({"t_ns": exit_ns, "event": "exited" if led.closed else "ended"})
    return ClientResult(label, label, ended, counts=dict(led.counts(False)),
                        peer_counts=dict(peer_counts),
                        unaccounted=[r.seq for r in led.unaccounted()],
                        ledger=[ledger_entry(r) for r in shown], events=events)

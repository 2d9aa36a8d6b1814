"""A kernel client's I/O and state as a client lane of the timeline picture: its per-I/O
records in the shape of a policy client's result (harness/run/scenario_result.py), so
the report draws it like one.

    lane = kernel_lane("nvme-rdma:fast-fail", result)    # result: the kernel scenario's JSON

Each I/O is one request mark (op WRITE or READ; its outcome from the block ledger,
decided against the transition's window as the row's counts are). The lane's notes are
what the ULP did: each change of the controller's state (nvme) or of the transport
(NFS), the client's own actions (clients-first: paused, disconnected, reconnected), the
device each connection used before, during and after the transition, and a held delete.
"""

from __future__ import annotations

from typing import Any

from clients.kernel.ulp_scenario import window_of
from harness.run.scenario_result import ClientEnd, ClientResult
from harness.workload.block_ledger import IoOp, IoOutcome, IoRecord, Window, errno_name, outcome

# the lane's outcome names are the verbs ledger's where they mean the same; a stuck I/O
# (no completion within the bound) is drawn as lost (posted, never completed)
_OUTCOME = {IoOutcome.COMPLETED_OK: "completed-ok", IoOutcome.COMPLETED_LATE: "completed-late",
            IoOutcome.FAILED_TO_APP: "failed-to-app", IoOutcome.STUCK: "lost"}
_OP = {IoOp.WRITE: "WRITE", IoOp.READ: "READ"}


def ledger_entry(rec: IoRecord, win: Window | None, size: int) -> dict[str, Any]:
    o = outcome(rec, win, size=size)
    attempt: dict[str, Any] = {"posted_ns": rec.submit_ns, "completed_ns": rec.done_ns,
                               "status": "SUCCESS" if o in (IoOutcome.COMPLETED_OK,
                                                            IoOutcome.COMPLETED_LATE)
                               else None}
    if rec.errno is not None:
        attempt["errno"] = errno_name(rec.errno)
    elif o is IoOutcome.FAILED_TO_APP:  # the call returned a short count
        attempt["short"] = f"{rec.nbytes} of {size} bytes"
    return {"seq": rec.seq, "op": _OP[rec.op], "outcome": _OUTCOME[o], "attempts": [attempt]}


def state_events(samples: list[dict[str, Any]], key: str, what: str) -> list[dict[str, Any]]:
    """One note per change of (object, state) in the sampled states."""
    out: list[dict[str, Any]] = []
    last: dict[Any, Any] = {}
    for s in samples:
        obj, state = s.get(key), s.get("state")
        if last.get(obj) != state:
            last[obj] = state
            out.append({"t_ns": s.get("t_ns"), "event": what, "obj": obj, "state": state})
    return out


def connection_events(conns: list[dict[str, Any]], off_wire: list[dict[str, Any]],
                      ) -> list[dict[str, Any]]:
    off = {(c.get("phase"), c.get("dev"), c.get("src"), c.get("dst")) for c in off_wire}
    return [{"t_ns": c.get("first_ns"), "event": "connection", "dev": c.get("dev"),
             "phase": c.get("phase"),
             "off_wire": (c.get("phase"), c.get("dev"), c.get("src"), c.get("dst")) in off}
            for c in conns]


def _events(result: dict[str, Any]) -> list[dict[str, Any]]:
    ev = state_events(result.get("ctrl_states") or [], "ctrl", "controller")
    ev += state_events([{"t_ns": x.get("t_ns"), "xprt": "nfs",
                         "state": f"connected #{x.get('connect_count')}" if x.get("mounted")
                         else "absent"} for x in result.get("xprt_states") or []],
                       "xprt", "transport")
    ev += [dict(e) for e in result.get("client_events") or []]
    ev += connection_events(result.get("connections") or [], result.get("off_wire") or [])
    hang = result.get("hang")
    if isinstance(hang, dict) and hang.get("held_ms") is not None:
        ev.append({"t_ns": hang.get("began_ns"), "event": "held the delete",
                   "ms": hang.get("held_ms")})
    return sorted((e for e in ev if isinstance(e.get("t_ns"), int)), key=lambda e: e["t_ns"])


def kernel_lane(policy: str, result: dict[str, Any]) -> ClientResult:
    """The kernel client's lane: its I/Os as requests, what the ULP did as its notes."""
    size = int((result.get("scenario") or {}).get("driver", {}).get("block_size", 4096))
    win = window_of(result.get("transition") or {})
    recs = [IoRecord.from_json(d) for d in result.get("records") or []]
    ledger = [ledger_entry(r, win, size) for r in recs]
    counts: dict[str, int] = {}
    for e in ledger:
        counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
    lg = result.get("ledger") or {}
    return ClientResult(policy, policy, ClientEnd.COMPLETED, counts=counts,
                        peer_counts=dict(lg.get("target") or {}),
                        unaccounted=list(lg.get("unaccounted") or []), ledger=ledger,
                        events=_events(result),
                        clean_shutdown={"resume_to_first_ok_ms": result.get("recover_ms")})

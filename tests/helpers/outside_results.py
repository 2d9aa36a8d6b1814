"""Typed outside-program results for tests (harness.run.outside_result): a program's record
with every field at a clean run's value unless given, and a scenario result around it."""

from __future__ import annotations

from typing import Any

from harness.run.outside_result import OutsideResult, ProgramResult
from harness.run.records import ScenarioKey
from harness.run.scenario_result import ClientResult
from power.plan import Ordering
from power.result import TransitionRequest, TransitionResult, Verdict
from power.timeline import Timeline

PROGRAM = "cmd:ib_send_bw"
KEY = ScenarioKey("standby", "clients-first", (PROGRAM,), "mixed",
                  f"standby/clients-first/{PROGRAM}/mixed")
CLEAN: dict[str, Any] = {
    "program": PROGRAM, "argv": ["ib_send_bw", "198.18.0.2"], "server_argv": ["ib_send_bw"],
    "pid": 4242, "exit": 0, "output_tail": "", "server_exit": 0, "held_at_delete": False,
    "terminated_by_shim": False, "stopped_by_harness": False, "traced": True,
    "log_closed": True, "counts": {"completed-ok": 300}, "receive_counts": {},
    "peer_counts": {"delivered-once": 300, "missing": 0, "duplicated": 0},
    "unaccounted": 0, "unmatched_completions": 0, "posted_after_error": 0,
    "devices_opened": ["rxe0"], "recovery_ms": None, "findings": []}


def program_result(**over: Any) -> ProgramResult:
    return ProgramResult.from_json(CLEAN | over)


def outside_result(verdict: Verdict = Verdict.COMPLETED, **over: Any) -> OutsideResult:
    t = TransitionResult(TransitionRequest("standby", Ordering.CLIENTS_FIRST), verdict, [], [],
                         Timeline())
    return OutsideResult(t, ClientResult(PROGRAM, PROGRAM), program_result(**over))

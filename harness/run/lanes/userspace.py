"""The userspace lane: policy client workers (clients.userspace.naive, fail_fast, queue_replay,
graceful, or a `module:Class` of your own), one worker process per policy, several side
by side in one transition (`together`) or one per transition; every request accounted
(harness.run.scenario). The rows: one per client, judged from how it ended (ClientEnd),
its outcome counts, the peer's view and the transition's verdict.
"""

from __future__ import annotations

from typing import Any

from clients.userspace import policy_class
from harness.run.lanes.base import LaneContext, LaneKind, PolicyRef, RunSpec, Scenario
from harness.run.records import ScenarioKey
from harness.run.rows import Row, add_ledger_figures, veto_text
from harness.run.scenario import run_scenario
from harness.run.scenario_result import ClientEnd, ClientResult, ScenarioResult
from harness.workload.findings import Finding, Severity, of_severity
from harness.workload.ledger import Outcome, PeerView
from power.result import TransitionResult, Verdict

BROKEN, BAD = Severity.BROKEN, Severity.BAD
OK_OUTCOMES = (Outcome.COMPLETED_OK.value, Outcome.REPLAYED_OK.value)


class UserspaceLane:
    kind = LaneKind.USERSPACE

    def claims(self, text: str) -> bool:
        return True  # what no other lane claims is a policy (its validate says if not)

    def parse(self, text: str) -> PolicyRef:
        return PolicyRef(LaneKind.USERSPACE, text, "", text)

    def validate(self, ref: PolicyRef, spec: RunSpec) -> None:
        policy_class(ref.name)  # SettingError: unknown, or a module:Class that does not load

    def groups(self, refs: tuple[PolicyRef, ...], spec: RunSpec,
               transition: str) -> list[tuple[PolicyRef, ...]]:
        return [refs] if spec.together else [(r,) for r in refs]

    def run(self, ctx: LaneContext, sc: Scenario) -> UserspaceResult:
        return UserspaceResult(run_scenario(
            ctx.shim, ctx.agent, ctx.topo.local, ctx.request, [p.name for p in sc.policies],
            ctx.spec.workload(sc.mix), ctx.clients_dir, ctx.log_dir))

    def result_from_json(self, d: dict[str, Any], schema: int) -> UserspaceResult:
        return UserspaceResult(ScenarioResult.from_json(d, schema))


class UserspaceResult:
    def __init__(self, result: ScenarioResult) -> None:
        self.result = result

    def rows(self, sc: ScenarioKey) -> list[Row]:
        return rows_of(sc, self.result)

    def to_json(self) -> dict[str, Any]:
        return self.result.to_json()


def rows_of(scenario: ScenarioKey, result: ScenarioResult) -> list[Row]:
    """The rows of one scenario's result; the status from how each client ended
    (ClientEnd), its outcome counts and the transition's verdict."""
    t = result.transition
    verdict = t.verdict.value
    rows = []
    for c in result.clients:
        row = Row(scenario.id, scenario.transition, scenario.ordering, c.policy, scenario.mix,
                  verdict, dict(c.counts), dict(c.peer_counts), c.peer_saw, c.recovery_ms,
                  veto_text(t.veto))
        add_ledger_figures(row, c.ledger, t)
        row.coverage = c.coverage
        row.judge(client_findings(c, t, row))
        rows.append(row)
    return rows


def client_findings(c: ClientResult, t: TransitionResult, row: Row) -> list[Finding]:
    """What one policy client did wrong, or what could not be accounted, from fields."""
    fs: list[Finding] = []
    inflight = len(c.in_flight_at_crash)
    if c.ended is ClientEnd.TERMINATED_BY_SHIM:
        fs.append(Finding(BAD, f"held the device: terminated by the shim ({inflight} in flight)"))
    elif c.crashed:
        fs.append(Finding(BROKEN, f"crashed ({inflight} in flight): {c.crash}"))
    if c.crashed and c.from_journal is False:
        fs.append(Finding(BROKEN, "its journal could not be read: its requests are not "
                                  "accounted"))
    if c.unaccounted:
        fs.append(Finding(BROKEN, f"{len(c.unaccounted)} requests unaccounted"))
    extra = int(c.metrics.get("extra_completions") or 0)
    if extra:
        fs.append(Finding(BROKEN, f"{extra} completions matched no request in flight"))
    if t.verdict is Verdict.FAILED:
        fs.append(Finding(BROKEN, f"transition failed: {'; '.join(t.reasons)}"))
    fs += of_severity(Severity.MISSED, c.missed)
    n = row.counts
    if n.get("lost"):
        fs.append(Finding(BAD, f"{n['lost']} lost (posted, never completed)"))
    for view in (PeerView.DUPLICATED, PeerView.CORRUPTED):
        if row.peer.get(view.value):
            fs.append(Finding(BAD, f"{row.peer[view.value]} {view.value} at the peer"))
    silent = sum(1 for e in c.ledger if e["outcome"] in OK_OUTCOMES
                 and e.get("peer") == PeerView.MISSING.value)
    if silent:
        fs.append(Finding(BAD, f"{silent} reported ok but never reached the peer"))
    if c.atomics and not c.atomics.get("match", True):
        fs.append(Finding(BAD, f"atomics mismatch {c.atomics}"))
    if t.verdict is Verdict.VETOED:
        fs.append(Finding(BAD, "the sleep was vetoed"))
    return fs

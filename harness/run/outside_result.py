"""An outside program's scenario result, typed (`--client-cmd`: harness.run.outside), and its
row, judged like a policy's.

    res = run_outside(shim, topo, req, spec, log_dir)   # OutsideResult
    res.to_json()                  # the record's `result`: transition, clients, outside
    OutsideResult.from_json(d)     # a stored one read back (RESULT_PARSE_ERRORS if malformed)
    res.rows(scenario_key)         # its one row: the same columns as a policy's

`transition` is the shim's result, `lane` the program's requests as a client lane of the
timeline picture (the record's `clients`, harness.run.outside_lane), `program` what the
program did (the record's `outside`: ProgramResult). The JSON is the one results files have
always had; fields added later are read back from older files as their empty value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.run.records import ScenarioKey
from harness.run.rows import Row, veto_text
from harness.run.scenario_result import ClientResult
from harness.workload.coverage import Coverage
from harness.workload.findings import Finding, Severity, of_severity
from harness.workload.ledger import Outcome
from power.result import TransitionResult, Verdict

BROKEN, BAD = Severity.BROKEN, Severity.BAD
CLIENT_EXIT_TIMEOUT_S = 60.0  # after the transition: the client ends by itself


@dataclass
class ProgramResult:
    """What the program did in one scenario: the record's `outside`."""

    program: str
    argv: list[str]
    server_argv: list[str]
    pid: int
    exit: int | None  # None: stopped by the harness or the shim (see below)
    output_tail: str  # the end of its stderr (its stdout is in client.log)
    server_exit: int | None
    held_at_delete: bool
    terminated_by_shim: bool
    stopped_by_harness: bool
    traced: bool  # the client's log was found
    log_closed: bool
    counts: dict[str, int]  # its send-queue requests by outcome
    receive_counts: dict[str, int]
    peer_counts: dict[str, int]
    unaccounted: int
    unmatched_completions: int
    posted_after_error: int
    devices_opened: list[str]
    recovery_ms: float | None  # resume -> its first successful completion, if it went on
    findings: list[str]
    exit_timeout_s: float = CLIENT_EXIT_TIMEOUT_S  # the spec's bound on ending by itself
    # how its requests met the transition (harness.workload.coverage); None: no trace
    coverage: Coverage | None = None
    # how long ARP across the wire took before the programs started (None: not recorded)
    wire_ready_ms: float | None = None
    server_ready: str = ""  # how its server was seen ready ("": no server)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProgramResult:
        """KeyError, TypeError or ValueError on a malformed record."""
        return cls(
            str(d["program"]), [str(a) for a in d["argv"]],
            [str(a) for a in d["server_argv"]], int(d["pid"]), d["exit"],
            str(d["output_tail"]), d["server_exit"], bool(d["held_at_delete"]),
            bool(d["terminated_by_shim"]), bool(d["stopped_by_harness"]), bool(d["traced"]),
            bool(d["log_closed"]), dict(d["counts"]), dict(d["receive_counts"]),
            dict(d["peer_counts"]), int(d["unaccounted"]), int(d["unmatched_completions"]),
            int(d["posted_after_error"]), [str(x) for x in d["devices_opened"]],
            d["recovery_ms"], [str(f) for f in d["findings"]],
            d.get("exit_timeout_s", CLIENT_EXIT_TIMEOUT_S),
            Coverage.from_json(d["coverage"]) if d.get("coverage") else None,
            d.get("wire_ready_ms"), str(d.get("server_ready") or ""))

    def findings_of(self, t: TransitionResult) -> list[Finding]:
        """What the program did wrong, or what could not be accounted, from fields."""
        fs: list[Finding] = []
        if not self.traced:
            fs.append(Finding(BROKEN, "; ".join(self.findings) or "no trace log"))
        if self.unaccounted:
            fs.append(Finding(BROKEN, f"{self.unaccounted} requests unaccounted"))
        if self.unmatched_completions:
            fs.append(Finding(BROKEN, f"{self.unmatched_completions} completions matched no "
                                      "request"))
        if t.verdict is Verdict.FAILED:
            fs.append(Finding(BROKEN, f"transition failed: {'; '.join(t.reasons)}"))
        if self.terminated_by_shim:
            fs.append(Finding(BAD, "held the device: terminated by the shim"))
        elif self.held_at_delete:
            fs.append(Finding(BAD, "held the device at the delete"))
        if self.stopped_by_harness:
            fs.append(Finding(BAD, f"still running {self.exit_timeout_s:g} s after the "
                                   "transition: stopped"))
        if self.exit not in (0, None):
            fs.append(Finding(BAD, f"exit status {self.exit}, stderr ends "
                                   f"{self.output_tail.strip()[-120:]!r}"))
        if self.counts.get(Outcome.LOST.value):
            fs.append(Finding(BAD, f"{self.counts[Outcome.LOST.value]} lost (posted, never "
                                   "completed)"))
        if self.posted_after_error:
            fs.append(Finding(BAD, f"{self.posted_after_error} posted after an error "
                                   "completion (error ignored)"))
        if self.peer_counts.get("duplicated"):
            fs.append(Finding(BAD, f"{self.peer_counts['duplicated']} duplicated at the peer"))
        if t.verdict is Verdict.VETOED:
            fs.append(Finding(BAD, "the sleep was vetoed"))
        if self.coverage is not None:
            fs += of_severity(Severity.MISSED, self.coverage.missed(require_after=False))
        return fs


@dataclass
class OutsideResult:
    """One scenario of the outside program (see the module docstring)."""

    transition: TransitionResult
    lane: ClientResult
    program: ProgramResult

    def to_json(self) -> dict[str, Any]:
        return {"transition": self.transition.to_json(), "clients": [self.lane.to_json()],
                "outside": self.program.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any], schema: int = 2) -> OutsideResult:
        """Raises KeyError, TypeError, ValueError or RxePowerError on a malformed result."""
        (lane,) = d["clients"]
        return cls(TransitionResult.from_json(d["transition"]),
                   ClientResult.from_json(lane, schema), ProgramResult.from_json(d["outside"]))

    def rows(self, sc: ScenarioKey) -> list[Row]:
        """The program's row: the same columns as a policy's."""
        t, o = self.transition, self.program
        row = Row(sc.id, sc.transition, sc.ordering, o.program, sc.mix, t.verdict.value,
                  o.counts, o.peer_counts, "", o.recovery_ms, veto_text(t.veto),
                  coverage=o.coverage)
        row.judge(o.findings_of(t))
        return [row]

"""What one scenario produced, typed: the transition's result and one result per client.

    res = ScenarioResult(transition_result, [ClientResult(...), ...])
    res.to_json()                                   # the `result` of a scenario record
    ScenarioResult.from_json(d, schema)             # schema 1 (before ClientEnd) or 2

How a client's workload ended is a `ClientEnd`, set where it is known (the controller
knows whether the shim terminated the worker, whether it died on its own, or whether
its channel failed while it lived); row status and stress failures are decided from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from harness.workload.coverage import Coverage
from power.result import TransitionResult

# What a v1 results file wrote into a client's crash text when the shim had terminated
# the worker (harness/run/scenario.py at 405a4e6). Read ONLY to give v1 records their
# ClientEnd, which v1 did not store; v2 records carry `ended` and are never read this way.
V1_TERMINATED_WORDS = "terminated by the shim"


class ClientEnd(StrEnum):
    """How a client worker's workload ended."""

    COMPLETED = "completed"  # it finished and reported its ledger
    TERMINATED_BY_SHIM = "terminated-by-shim"  # it held the device under --on-veto force
    DIED = "died"  # the process ended on its own (signal, exit, exception)
    NO_REPLY = "no-reply"  # it lived, but its channel failed or a bound ran out

    @property
    def crashed(self) -> bool:
        return self is not ClientEnd.COMPLETED


def client_end_of_v1(crashed: bool, crash: str) -> ClientEnd:
    """The ClientEnd of a schema-1 record, which stored only `crashed` and a message. The
    message is the only record v1 kept of a termination by the shim (V1_TERMINATED_WORDS);
    a v1 crash is otherwise a death (v1 did not tell NO_REPLY from DIED: both were broken)."""
    if not crashed:
        return ClientEnd.COMPLETED
    return ClientEnd.TERMINATED_BY_SHIM if V1_TERMINATED_WORDS in crash else ClientEnd.DIED


def client_end_of(d: dict[str, Any], schema: int) -> ClientEnd:
    """A client record's ClientEnd: its `ended` field (schema 2), or migrated from v1."""
    if schema >= 2:
        return ClientEnd(d["ended"])
    return client_end_of_v1(bool(d.get("crashed")), str(d.get("crash") or ""))


@dataclass
class ClientResult:
    """One client worker's round: outcome counts, the peer's view, clean-shutdown figures.
    The sub-records (metrics, clean_shutdown, atomics, ledger, events) are the JSON forms
    the worker and the accounting produce."""

    client: str
    policy: str
    ended: ClientEnd = ClientEnd.COMPLETED
    crash: str = ""  # for a crashed client: what happened, for people (never decided on)
    in_flight_at_crash: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    peer_counts: dict[str, int] = field(default_factory=dict)
    unaccounted: list[int] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    clean_shutdown: dict[str, Any] = field(default_factory=dict)
    atomics: dict[str, Any] = field(default_factory=dict)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # the client's notes: {t_ns, ..}
    peer_events: list[dict[str, Any]] = field(default_factory=list)  # the peer's: {t_ns, what}
    # a crashed client's ledger rebuilt from its journal: True, or False when the journal
    # could not be read; None in records written before journals were read back
    from_journal: bool | None = None
    # how the workload met the transition (harness.workload.coverage), measured from the
    # ledger; None in records written before it was
    coverage: Coverage | None = None
    # why this client's round is no measurement of the transition ([]: it is one)
    missed: list[str] = field(default_factory=list)
    ran_dry: bool = False  # a RESUMED workload reached its cap before it was stopped

    @property
    def crashed(self) -> bool:
        return self.ended.crashed

    @property
    def invariant_ok(self) -> bool:
        """Every request the client's workload issued has an outcome: from its own report,
        or (a killed client) from its journal."""
        return (not self.crashed or self.from_journal is True) and not self.unaccounted

    @property
    def recovery_ms(self) -> float | None:
        v = self.clean_shutdown.get("resume_to_first_ok_ms")
        return float(v) if isinstance(v, int | float) else None

    @property
    def peer_saw(self) -> str:
        return str(self.clean_shutdown.get("peer_saw", ""))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ended": self.ended.value, "crashed": self.crashed,
                "invariant_ok": self.invariant_ok,
                "coverage": self.coverage.to_json() if self.coverage else None}

    @classmethod
    def from_json(cls, d: dict[str, Any], schema: int) -> ClientResult:
        return cls(str(d["client"]), str(d["policy"]), client_end_of(d, schema),
                   str(d.get("crash") or ""), list(d.get("in_flight_at_crash") or []),
                   dict(d.get("counts") or {}), dict(d.get("peer_counts") or {}),
                   list(d.get("unaccounted") or []), dict(d.get("metrics") or {}),
                   dict(d.get("clean_shutdown") or {}), dict(d.get("atomics") or {}),
                   list(d.get("ledger") or []), list(d.get("events") or []),
                   list(d.get("peer_events") or []), d.get("from_journal"),
                   Coverage.from_json(d["coverage"]) if d.get("coverage") else None,
                   [str(m) for m in d.get("missed") or []], bool(d.get("ran_dry", False)))


@dataclass
class ScenarioResult:
    transition: TransitionResult
    clients: list[ClientResult]

    @property
    def ok(self) -> bool:
        return all(c.invariant_ok for c in self.clients)

    def client(self, policy: str) -> ClientResult:
        return next(c for c in self.clients if c.policy == policy)

    def to_json(self) -> dict[str, Any]:
        return {"transition": self.transition.to_json(),
                "clients": [c.to_json() for c in self.clients], "ok": self.ok}

    @classmethod
    def from_json(cls, d: dict[str, Any], schema: int) -> ScenarioResult:
        """Raises KeyError, TypeError, ValueError or RxePowerError on a malformed result."""
        return cls(TransitionResult.from_json(d["transition"]),
                   [ClientResult.from_json(c, schema) for c in d["clients"]])

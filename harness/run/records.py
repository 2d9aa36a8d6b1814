"""The records of a results file, typed: a matrix `scenario` and a stress `cycle`.

    rec = ScenarioRecord.from_json(d)       # d: one line of results.jsonl, schema 1 or 2
    rec.result                              # a ScenarioResult, or None (rec.result_problem)
    cyc = CycleRecord.from_json(d)

Readers are tolerant of what a crash or an older rxe-power leaves: a field that is missing
takes its empty value; a result that does not parse is None, with the reason kept in
`result_problem` (the record's stored rows then stand for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.core.errors import RxePowerError
from harness.run.scenario_result import ClientEnd, ScenarioResult, client_end_of

RESULT_PARSE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, RxePowerError)


def _float_or_none(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int_or_none(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _mapping(v: object) -> dict[str, object]:
    return {str(k): x for k, x in v.items()} if isinstance(v, dict) else {}


def _figures(v: object) -> dict[str, float]:
    """The numbers of a {name: number} record (anything else in it is left out)."""
    return {k: x for k, x in _mapping(v).items()
            if isinstance(x, int | float) and not isinstance(x, bool)}


def _list(v: object) -> list[Any]:
    return v if isinstance(v, list) else []


def _strs(v: object) -> list[str]:
    return [str(x) for x in v] if isinstance(v, list) else []


# the keys that mark a result whose row was judged when it ran (an outside program's:
# harness.run.outside; a kernel client's: harness.run.lanes.kernel)
STORED_ROW_KEYS = ("outside", "kernel_client")


def has_stored_row(result: dict[str, Any]) -> bool:
    return any(k in result for k in STORED_ROW_KEYS)


@dataclass(frozen=True)
class ScenarioKey:
    """Which scenario a record is: a matrix Scenario as it was written ('?' where missing)."""

    transition: str = "?"
    ordering: str = "?"
    policies: tuple[str, ...] = ()
    mix: str = "?"
    id: str = ""

    @classmethod
    def from_json(cls, d: object) -> ScenarioKey:
        sc = d if isinstance(d, dict) else {}
        key = cls(str(sc.get("transition", "?")), str(sc.get("ordering", "?")),
                  tuple(_strs(sc.get("policies"))), str(sc.get("mix", "?")))
        ident = sc.get("id") or (f"{key.transition}/{key.ordering}/"
                                 f"{'+'.join(key.policies)}/{key.mix}")
        return cls(key.transition, key.ordering, key.policies, key.mix, str(ident))


@dataclass
class ScenarioRecord:
    """One `scenario` line: the scenario, its result or the harness error, the rows stored
    when it ran (their JSON form: see harness.run.matrix.Row), and what was not restored."""

    schema: int
    index: int | None
    scenario: ScenarioKey
    result: ScenarioResult | None = None
    result_problem: str = ""  # why a result that is present could not be read
    error: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    not_restored: list[str] = field(default_factory=list)
    seconds: float | None = None
    # an outside program's or a kernel client's scenario (harness.run.outside,
    # harness.run.lanes.kernel): its result holds the transition and the client's lane for
    # the pictures; its row was judged when it ran and is the stored one
    row_stored: bool = False

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScenarioRecord:
        schema = int(d.get("schema") or 1)
        rec = cls(schema, _int_or_none(d.get("index")), ScenarioKey.from_json(d.get("scenario")),
                  error=str(d.get("error") or ""),
                  rows=[r for r in d.get("rows") or [] if isinstance(r, dict)]
                  if isinstance(d.get("rows"), list) else [],
                  not_restored=_strs(d.get("not_restored")),
                  seconds=_float_or_none(d.get("seconds")))
        if isinstance(d.get("result"), dict):
            rec.row_stored = has_stored_row(d["result"])
            try:
                rec.result = ScenarioResult.from_json(d["result"], schema)
            except RESULT_PARSE_ERRORS as exc:
                rec.result_problem = f"its result is unreadable ({exc!r})"
        return rec


@dataclass
class CycleClient:
    """One client in a stress cycle, as the cycle record summarises it."""

    client: str
    policy: str
    counts: dict[str, int] = field(default_factory=dict)
    unaccounted: int = 0
    ended: ClientEnd = ClientEnd.COMPLETED
    crash: str = ""
    recovery_ms: float | None = None
    pid: int | None = None  # the worker's process in this cycle (None: a kernel client)
    # the async events it read in the cycle (PORT_ERR, DEVICE_FATAL...); None when unknown
    # (it crashed or was killed: its report never came)
    async_events: list[str] | None = None
    held_at_delete: bool = False  # it had the device open when the delete started

    @property
    def crashed(self) -> bool:
        return self.ended.crashed

    @property
    def device_fatal(self) -> bool | None:
        return None if self.async_events is None else "DEVICE_FATAL" in self.async_events

    def to_json(self) -> dict[str, Any]:
        return {"client": self.client, "policy": self.policy, "counts": self.counts,
                "unaccounted": self.unaccounted, "ended": self.ended.value,
                "crash": self.crash, "recovery_ms": self.recovery_ms, "pid": self.pid,
                "async_events": self.async_events, "device_fatal": self.device_fatal,
                "held_at_delete": self.held_at_delete}

    @classmethod
    def from_json(cls, d: dict[str, Any], schema: int) -> CycleClient:
        return cls(str(d.get("client", "?")), str(d.get("policy", "?")),
                   {k: int(v) for k, v in _figures(d.get("counts")).items()},
                   _int_or_none(d.get("unaccounted")) or 0,
                   client_end_of(d, schema), str(d.get("crash") or ""),
                   _float_or_none(d.get("recovery_ms")), _int_or_none(d.get("pid")),
                   _strs(d["async_events"]) if isinstance(d.get("async_events"), list)
                   else None, bool(d.get("held_at_delete")))


@dataclass
class CycleRecord:
    """One `cycle` line of rxe-power stress."""

    schema: int
    cycle: int | None
    ok: bool
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float | None = None
    verdict: str = ""
    transition_ms: float | None = None
    clients: list[CycleClient] = field(default_factory=list)
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # process -> figures
    rdma_res: dict[str, dict[str, int]] = field(default_factory=dict)  # device -> counts
    kernel_hits: list[dict[str, Any]] = field(default_factory=list)
    result: ScenarioResult | None = None  # kept for failed cycles (or --keep-ledgers)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CycleRecord:
        schema = int(d.get("schema") or 1)
        rec = cls(schema, _int_or_none(d.get("cycle")), bool(d.get("ok")),
                  _strs(d.get("failures")), _strs(d.get("notes")),
                  _float_or_none(d.get("seconds")), str(d.get("verdict") or ""),
                  _float_or_none(d.get("transition_ms")),
                  [CycleClient.from_json(c, schema) for c in _list(d.get("clients"))
                   if isinstance(c, dict)],
                  {k: _figures(u) for k, u in _mapping(d.get("usage")).items()},
                  {k: {f: int(v) for f, v in _figures(c).items()}
                   for k, c in _mapping(d.get("rdma_res")).items()},
                  [h for h in _list(d.get("kernel_hits")) if isinstance(h, dict)])
        # an outside program's or a kernel client's result has no policy clients: its row
        # was judged when it ran and is the stored one
        if isinstance(d.get("result"), dict) and not has_stored_row(d["result"]):
            try:
                rec.result = ScenarioResult.from_json(d["result"], schema)
            except RESULT_PARSE_ERRORS:
                rec.result = None
        return rec

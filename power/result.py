"""Requests and results of a transition, as dataclasses with a JSON form on disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.core.bounds import MAX_HOLD_MS, MAX_WAIT_S, check_number
from harness.core.errors import RxePowerError, SettingError
from harness.core.files import atomic_write
from harness.system.provenance import Provenance
from harness.workload.coverage import FaultWindow
from power.kmsg import KmsgScan
from power.plan import (
    DEVICE_AWAY_STEPS,
    DEVICE_BACK_STEPS,
    OnVeto,
    Ordering,
    StepKind,
    get_transition,
)
from power.pmtest import DEFAULT_PM_LEVEL, PM_LEVELS
from power.timeline import Timeline
from power.veto import VETO_WAIT_TIMEOUT_S, VetoReport

RESULT_SCHEMA = 1
QUIESCE_TIMEOUT_S = 5.0  # clients-first: how long clients get to release the device


@dataclass(frozen=True)
class TransitionRequest:
    name: str
    ordering: Ordering | None = None  # None: the transition's first ordering
    hold_ms: int | None = None  # None: the transition's default
    on_veto: OnVeto = OnVeto.WAIT
    veto_wait_s: float = VETO_WAIT_TIMEOUT_S
    quiesce_timeout_s: float = QUIESCE_TIMEOUT_S
    pm_level: str = DEFAULT_PM_LEVEL

    def resolved(self) -> TransitionRequest:
        """Fill the defaults and check every value; raises SettingError naming the bad one."""
        tr = get_transition(self.name)
        ordering = self.ordering or next(iter(tr.steps))
        tr.plan(ordering)
        hold = tr.default_hold_ms if self.hold_ms is None else self.hold_ms
        check_number("--hold-ms", hold, 0, MAX_HOLD_MS, "ms", "MAX_HOLD_MS")
        for name, val in (("--veto-wait-s", self.veto_wait_s),
                          ("--quiesce-timeout-s", self.quiesce_timeout_s)):
            check_number(name, val, 0, MAX_WAIT_S, "s", "MAX_WAIT_S", lo_open=True)
        if self.pm_level not in PM_LEVELS:
            raise SettingError(f"unknown --pm-level {self.pm_level!r}",
                               f"use one of: {', '.join(PM_LEVELS)}")
        return TransitionRequest(self.name, ordering, hold, self.on_veto, self.veto_wait_s,
                                 self.quiesce_timeout_s, self.pm_level)

    @property
    def steps(self) -> tuple[StepKind, ...]:
        return get_transition(self.name).plan(self.ordering or next(
            iter(get_transition(self.name).steps)))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ordering"] = self.ordering.value if self.ordering else None
        d["on_veto"] = self.on_veto.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TransitionRequest:
        return cls(d["name"], Ordering(d["ordering"]) if d.get("ordering") else None,
                   d.get("hold_ms"), OnVeto(d.get("on_veto", "wait")),
                   d.get("veto_wait_s", VETO_WAIT_TIMEOUT_S),
                   d.get("quiesce_timeout_s", QUIESCE_TIMEOUT_S),
                   d.get("pm_level", DEFAULT_PM_LEVEL))


class Verdict(StrEnum):
    COMPLETED = "completed"  # slept and resumed; the topology is whole
    FORCED = "forced"  # completed after terminating holders (--on-veto force)
    VETOED = "vetoed"  # the sleep did not happen: a client vetoed or a holder blocked it
    FAILED = "failed"  # a step failed, the kernel log has a hit, the peer went down, or
    #                    the topology could not be restored
    UNSUPPORTED = "unsupported"  # the kernel does not offer this transition (pm-test)


VERDICT_EXIT = {Verdict.COMPLETED: 0, Verdict.FORCED: 0, Verdict.FAILED: 1,
                Verdict.VETOED: 3, Verdict.UNSUPPORTED: 4}


@dataclass
class StepRecord:
    step: StepKind
    outcome: str  # "ok", "failed", "skipped"
    begin_ns: int = 0
    end_ns: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ms(self) -> float:
        return (self.end_ns - self.begin_ns) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "step": self.step.value, "ms": round(self.ms, 3)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StepRecord:
        return cls(StepKind(d["step"]), d["outcome"], d["begin_ns"], d["end_ns"],
                   d.get("detail", {}), d.get("error", ""))


def fault_window(steps: list[StepRecord]) -> FaultWindow | None:
    """The transition's window on CLOCK_MONOTONIC, from the steps that ran (None: none
    ran): the whole span, and the device away from the first away step's begin to the
    last back step's end (harness.workload.coverage)."""
    ran = [s for s in steps if s.outcome != "skipped" and s.begin_ns]
    if not ran:
        return None
    away = [s.begin_ns for s in ran if s.step in DEVICE_AWAY_STEPS]
    back = [s.end_ns for s in ran if s.step in DEVICE_BACK_STEPS and s.end_ns]
    begin, end = min(s.begin_ns for s in ran), max(max(s.end_ns, s.begin_ns) for s in ran)
    if away and back and max(back) >= min(away):
        return FaultWindow(begin, end, min(away), max(back))
    return FaultWindow(begin, end)


@dataclass
class TransitionResult:
    request: TransitionRequest
    verdict: Verdict
    reasons: list[str]
    steps: list[StepRecord]
    timeline: Timeline
    answers: list[dict[str, Any]] = field(default_factory=list)
    veto: VetoReport | None = None
    kernel: KmsgScan | None = None
    peer_active_throughout: bool = True
    device_before: dict[str, Any] | None = None
    device_after: dict[str, Any] | None = None
    not_restored: list[str] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        ran = [s for s in self.steps if s.outcome != "skipped"]
        return (ran[-1].end_ns - ran[0].begin_ns) / 1e6 if ran else 0.0

    def step(self, kind: StepKind) -> StepRecord | None:
        return next((s for s in self.steps if s.step is kind), None)

    def fault_window(self) -> FaultWindow | None:
        return fault_window(self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA, "request": self.request.to_json(),
            "fault_model": get_transition(self.request.name).fault_model.value,
            "verdict": self.verdict.value, "reasons": self.reasons,
            "steps": [s.to_json() for s in self.steps], "total_ms": round(self.total_ms, 3),
            "timeline": self.timeline.to_json(), "answers": self.answers,
            "veto": self.veto.to_json() if self.veto else None,
            "kernel": self.kernel.to_json() if self.kernel else None,
            "peer_active_throughout": self.peer_active_throughout,
            "device_before": self.device_before, "device_after": self.device_after,
            "not_restored": self.not_restored,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TransitionResult:
        if d.get("schema") != RESULT_SCHEMA:
            raise RxePowerError(f"transition result schema {d.get('schema')!r}, expected "
                                f"{RESULT_SCHEMA}", "read it with the rxe-power that wrote it")
        return cls(TransitionRequest.from_json(d["request"]), Verdict(d["verdict"]),
                   d["reasons"], [StepRecord.from_json(s) for s in d["steps"]],
                   Timeline.from_json(d["timeline"]), d.get("answers", []),
                   VetoReport.from_json(d["veto"]) if d.get("veto") else None,
                   KmsgScan.from_json(d["kernel"]) if d.get("kernel") else None,
                   d.get("peer_active_throughout", True), d.get("device_before"),
                   d.get("device_after"), d.get("not_restored", []))

    def write(self, path: Path, provenance: Provenance | None = None) -> None:
        """Atomically, fsynced: a crash never leaves half a result. `provenance`: what made
        it (`rxe-power transition` gives it; a transition inside a matrix or stress run has
        its results file's)."""
        d = self.to_json()
        if provenance is not None:
            d["provenance"] = provenance.to_json()
        atomic_write(path, json.dumps(d, indent=1))

    @classmethod
    def read(cls, path: Path) -> TransitionResult:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RxePowerError(f"transition result {path} is unreadable or corrupt: {exc}",
                                "re-run the transition to write it again") from None

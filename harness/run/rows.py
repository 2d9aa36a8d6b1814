"""The table's unit: one client (policy or outside program) in one scenario, with its
status. Shared by the lanes (harness.run.lanes); its status from its findings
(harness.workload.findings: RowStatus.of)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.system.provenance import FaultModel
from harness.workload.coverage import Coverage
from harness.workload.entries import LedgerEntry
from harness.workload.findings import Finding, RowStatus, by_severity, texts
from harness.workload.inflight import in_flight_at, late_waits
from power.plan import TRANSITIONS, StepKind
from power.result import TransitionResult
from power.veto import VetoReport


@dataclass
class Row:
    """One policy in one scenario: what the table shows."""

    scenario: str
    transition: str
    ordering: str
    policy: str
    mix: str
    verdict: str  # the transition's
    counts: dict[str, int] = field(default_factory=dict)
    peer: dict[str, int] = field(default_factory=dict)
    peer_saw: str = ""
    recovery_ms: float | None = None
    veto: str = ""
    findings: list[str] = field(default_factory=list)
    status: RowStatus = RowStatus.CLEAN
    # requests posted and not completed when the port went down / the device was deleted
    # (None: the transition has no such step, or no ledger)
    in_flight_port: int | None = None
    in_flight_device: int | None = None
    # completed-late requests: arrival to first post (median, max), ms
    wait_median_ms: float | None = None
    wait_max_ms: float | None = None
    # how the workload met the transition (None: not measured, e.g. a row read from an
    # old results file)
    coverage: Coverage | None = None
    # what the transition did to the device (power.plan: each transition's fault model);
    # filled from `transition` when not given; None only for a row read from an older file
    fault_model: FaultModel | None = None

    def __post_init__(self) -> None:
        if self.fault_model is None and self.transition in TRANSITIONS:
            self.fault_model = TRANSITIONS[self.transition].fault_model

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value,
                "coverage": self.coverage.to_json() if self.coverage else None,
                "fault_model": self.fault_model.value if self.fault_model else None}

    def judge(self, findings: list[Finding]) -> None:
        """The row's findings (most severe first) and its status, from what its lane found
        (harness.workload.findings: the one rule)."""
        self.findings = texts(by_severity(findings))
        self.status = RowStatus.of(findings)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Row:
        """A stored row; TypeError/ValueError/KeyError naming the field of a wrong type."""
        if not isinstance(d, dict):
            raise TypeError(f"a row is not a JSON object: {str(d)[:60]!r}")
        for name, ok in _ROW_FIELDS.items():
            if name in d and not ok(d[name]):
                raise TypeError(f"row field {name!r} has the wrong type: {str(d[name])[:60]!r}")
        fault = d.get("fault_model")
        if fault is not None and fault not in set(FaultModel):
            raise ValueError(f"row field 'fault_model' is {str(fault)[:40]!r}, not one of "
                             f"{', '.join(FaultModel)}")
        return cls(**{k: d[k] for k in _ROW_FIELDS if k in d},
                   status=RowStatus(d["status"]),
                   fault_model=FaultModel(fault) if fault is not None else None,
                   coverage=Coverage.from_json(d["coverage"]) if d.get("coverage") else None)



def veto_text(veto: VetoReport | None) -> str:
    if veto is not None and veto.slow:  # disassociate: the delete waited for a call, no veto
        calls = ", ".join(f"pid {c['pid']} {c['syscall']}" for c in veto.waited_for)
        return f"delete waited {veto.blocked_s:.1f} s for {calls or 'the kernel'}"
    if veto is None or not veto.detected:
        return ""
    held = ", ".join(f"pid {h['pid']} ({short_cmdline(h.get('cmdline', ''))})"
                     for h in veto.holders)
    killed = " terminated" if veto.terminated else ""
    return f"held by {held or 'a client'}{killed}"


def short_cmdline(cmdline: str) -> str:
    words = cmdline.split()
    return " ".join([os.path.basename(words[0]), *words[1:3]]) if words else "?"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_counts(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_int(x) for k, x in v.items())


_ROW_FIELDS: dict[str, Callable[[Any], bool]] = {
    **{k: lambda v: isinstance(v, str) for k in ("scenario", "transition", "ordering", "policy",
                                                 "mix", "verdict", "peer_saw", "veto")},
    "counts": _is_counts, "peer": _is_counts,
    **{k: lambda v: v is None or _is_int(v) or isinstance(v, float)
       for k in ("recovery_ms", "wait_median_ms", "wait_max_ms")},
    **{k: lambda v: v is None or _is_int(v) for k in ("in_flight_port", "in_flight_device")},
    "findings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


# the step in which the device goes: the userspace model's delete; in the mlx5 order the
# kernel's suspend, which freezes the clients in its first milliseconds and unregisters
# the device after that (counted at the step's begin: what completes in those
# milliseconds is counted in flight, the client's view, as everywhere, by its poll times)
DEVICE_GOES_IN = (StepKind.DELETE_DEVICE, StepKind.KERNEL_SUSPEND)


def add_ledger_figures(row: Row, ledger: list[dict[str, Any]],
                       transition: TransitionResult) -> None:
    """The row's in-flight counts at the port going down and at the device's going
    (DEVICE_GOES_IN), from the ledger's attempts and the steps' start times (one clock:
    CLOCK_MONOTONIC), and the waits of its late requests."""
    if not ledger:
        return
    entries = [LedgerEntry.from_json(e) for e in ledger]
    for kinds, name in (((StepKind.PORT_DOWN,), "in_flight_port"),
                        (DEVICE_GOES_IN, "in_flight_device")):
        step = next((st for st in map(transition.step, kinds) if st is not None
                     and st.outcome != "skipped" and st.begin_ns), None)
        if step is not None:
            setattr(row, name, in_flight_at(entries, step.begin_ns))
    w = late_waits(entries)
    row.wait_median_ms, row.wait_max_ms = w.median_ms, w.max_ms

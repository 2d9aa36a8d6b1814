"""What a lane found about one client in one scenario, and the one rule from findings to
the row's status.

    fs = [Finding(Severity.BAD, "3 lost (posted, never completed)"), ...]
    RowStatus.of(fs)          # BROKEN > MISSED > BAD > CLEAN, from the severities alone
    texts(by_severity(fs))    # the row's findings column: broken first, then missed, bad

A finding's severity is decided where it is found (from fields: a count, a ClientEnd, a
Verdict), never later from its words. NOTE findings are told but change no status.
Every lane (userspace policies, kernel clients, outside programs) judges through this.
It sits below the clients (the kernel clients judge their own rows as they run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How much a finding weighs, most severe first."""

    BROKEN = "broken"  # the harness could not account for something: a bug to report
    MISSED = "missed"  # the transition missed the workload: the row is no measurement
    BAD = "bad"  # a measurement, and the client misbehaved
    NOTE = "note"  # told, but no judgement of the client


@dataclass(frozen=True)
class Finding:
    severity: Severity
    text: str


class RowStatus(StrEnum):
    """A row's status, least severe first (the order is the severity: a scenario's worst
    row is the max by this order)."""

    CLEAN = "clean"  # a measurement, and the client did everything right
    BAD = "bad"  # a measurement, and the client misbehaved (the findings say how)
    # no measurement: the transition missed the workload (nothing was in flight or arrived
    # while it ran), so the row says nothing about the client; never green
    MISSED = "missed"
    BROKEN = "broken"  # the harness could not account for something: a bug to report

    @property
    def measured(self) -> bool:
        """The row is a measurement of the client under the transition."""
        return self in (RowStatus.CLEAN, RowStatus.BAD)

    @property
    def fails_run(self) -> bool:
        """The run's exit status is 1 when a row has this status."""
        return self in (RowStatus.MISSED, RowStatus.BROKEN)

    @classmethod
    def of(cls, findings: Iterable[Finding]) -> RowStatus:
        """The one rule from a row's findings to its status: the most severe one decides."""
        found = {f.severity for f in findings}
        return (cls.BROKEN if Severity.BROKEN in found else cls.MISSED
                if Severity.MISSED in found else cls.BAD if Severity.BAD in found
                else cls.CLEAN)


_ORDER = {s: i for i, s in enumerate(Severity)}


def by_severity(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first; found order within a severity."""
    return sorted(findings, key=lambda f: _ORDER[f.severity])


def texts(findings: Iterable[Finding]) -> list[str]:
    return [f.text for f in findings]


def of_severity(severity: Severity, found: Iterable[str]) -> list[Finding]:
    """Texts that all have one severity (a coverage's `missed` reasons, say)."""
    return [Finding(severity, t) for t in found]

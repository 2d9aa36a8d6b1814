"""The table's unit: one client (policy or outside program) in one scenario, with its
status. Shared by the matrix (policies) and outside programs (harness.run.outside)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from power.veto import VetoReport


class RowStatus(StrEnum):
    CLEAN = "clean"
    BAD = "bad"
    BROKEN = "broken"


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

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Row:
        return cls(**{**d, "status": RowStatus(d["status"])})


def veto_text(veto: VetoReport | None) -> str:
    if veto is None or not veto.detected:
        return ""
    held = ", ".join(f"pid {h['pid']} ({short_cmdline(h.get('cmdline', ''))})"
                     for h in veto.holders)
    killed = " terminated" if veto.terminated else ""
    return f"held by {held or 'a client'}{killed}"


def short_cmdline(cmdline: str) -> str:
    words = cmdline.split()
    return " ".join([os.path.basename(words[0]), *words[1:3]]) if words else "?"

"""What a stress cycle checks besides the ledger, for userspace and kernel clients alike:
a process's fds, RSS and threads against its figures after cycle 1 (psutil), the
kernel's RDMA resources per device against those after cycle 1 (`rdma -j res`), each
figure's series summarized (first, last, max, trend), and the run's findings: a change
of a device's objects reported once, where it began, with who holds it
(harness.run.stress_findings, harness.run.stress_holders), and each process's RSS growth
per cycle against its bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from harness.run.stress_findings import StepTracker, rss_growth
from harness.system import rdma_res as res
from harness.system.rdma_res import RES_KINDS, Counts

FD_SLACK = 2  # open fds a worker may have above its first-cycle figure
THREAD_SLACK = 1
RSS_SLACK_KB = 16 * 1024  # Python's allocator settles over the first cycles
RSS_SLACK_SHARE = 0.25
# A device's counts differ from cycle 1's: (all of it passing, who holds what)
Explain = Callable[[str, Counts], tuple[bool, str]]


@dataclass
class Usage:
    fds: int
    rss_kb: int
    threads: int
    pid: int = 0

    @classmethod
    def of(cls, pid: int) -> Usage:
        p = psutil.Process(pid)
        with p.oneshot():
            return cls(p.num_fds(), p.memory_info().rss // 1024, p.num_threads(), pid)


USAGE_FIGURES = ("fds", "rss_kb", "threads")


def usage_limits(base: Usage) -> dict[str, int]:
    return {"fds": base.fds + FD_SLACK, "threads": base.threads + THREAD_SLACK,
            "rss_kb": base.rss_kb + max(RSS_SLACK_KB, int(base.rss_kb * RSS_SLACK_SHARE))}


def usage_problems(name: str, base: Usage, now: Usage,
                   reported: dict[str, int] | None = None) -> list[str]:
    """A figure past its slack over cycle 1's. With `reported` (figure -> the highest value
    already reported), only a new high is a problem: a figure that stays up is one event."""
    out = []
    for fig, limit in usage_limits(base).items():
        v = getattr(now, fig)
        if v <= limit or (reported is not None and v <= reported.get(fig, limit)):
            continue
        if reported is not None:
            reported[fig] = v
        if fig == "fds":
            out.append(f"{name}: {v} open fds, {base.fds} after cycle 1 (slack {FD_SLACK})")
        elif fig == "threads":
            out.append(f"{name}: {v} threads, {base.threads} after cycle 1")
        else:
            out.append(f"{name}: RSS {v} KiB, {base.rss_kb} KiB after cycle 1 "
                       f"(limit {limit} KiB)")
    return out


@dataclass
class CycleOutcome:
    cycle: int
    ok: bool
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def trend(values: list[float]) -> float:
    """Least-squares slope per cycle (0 for fewer than two points)."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    den = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / den


def summarize(series: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"first": v[0], "last": v[-1], "max": max(v), "min": min(v),
                "slope_per_cycle": round(trend(v), 4)} for k, v in series.items() if v}


@dataclass
class CheckResult:
    failures: list[str]
    notes: list[str]
    rdma_res: dict[str, Counts]


class CycleChecks:
    """The baselines after cycle 1 and every figure's series; `check` compares a cycle's
    processes and the kernel's RDMA resources with them (shared by userspace and kernel
    stress runs). A change is reported once, at the cycle it began."""

    def __init__(self, devs: tuple[str, ...]) -> None:
        self.devs = devs
        self.usage_base: dict[str, Usage] = {}
        self.usage_reported: dict[str, dict[str, int]] = {}
        self.series: dict[str, list[float]] = {}
        self.steps = StepTracker()
        self.rss: dict[str, list[tuple[int, float]]] = {}  # "name (pid P)" -> (cycle, KiB)

    def add(self, name: str, value: float) -> None:
        self.series.setdefault(name, []).append(value)

    def forget(self, name: str) -> None:
        """A new process under an old name (a respawned worker): a new baseline."""
        self.usage_base.pop(name, None)
        self.usage_reported.pop(name, None)

    def check(self, cycle: int, usage: dict[str, Usage],
              explain: Explain | None = None) -> CheckResult:
        """This cycle's problems and notes, and `rdma res` now; the series grow by one.
        `explain(dev, counts)` says who holds a device's difference from cycle 1."""
        failures: list[str] = []
        notes: list[str] = []
        for name, u in usage.items():
            failures += usage_problems(name, self.usage_base.setdefault(name, u), u,
                                       self.usage_reported.setdefault(name, {}))
            for k in USAGE_FIGURES:
                self.add(f"{name}.{k}", getattr(u, k))
            self.rss.setdefault(f"{name} (pid {u.pid})", []).append((cycle, u.rss_kb))
        res_now = res.res_summary()
        for dev in self.devs:
            counts = {k: res_now.get(dev, {}).get(k, 0) for k in RES_KINDS}
            base = self.steps.base.get(f"{dev} rdma res")
            explained, why = False, ""
            if base is not None and counts != base and explain is not None:
                explained, why = explain(dev, counts)
            v = self.steps.observe(cycle, f"{dev} rdma res", counts, explained, why)
            if v.failure:
                failures.append(v.failure)
            if v.note:
                notes.append(v.note)
            for k in RES_KINDS:
                self.add(f"{dev}.{k}", counts[k])
        return CheckResult(failures, notes, res_now)

    def findings(self) -> dict[str, Any]:
        """The run's findings: every change of a device's objects (once, with its span),
        each process's RSS slope against RSS_GROWTH_BOUND_KB_PER_CYCLE."""
        growth, not_judged = rss_growth(self.rss)
        lines = [s.describe() for s in self.steps.steps if s.failed]
        lines += [g.describe() for g in growth if g.over_bound]
        return {"steps": [s.to_json() for s in self.steps.steps],
                "rss_growth": [g.to_json() for g in growth],
                "rss_not_judged": not_judged, "findings": lines}


def usage_json(usage: dict[str, Usage]) -> dict[str, dict[str, int]]:
    return {k: asdict(v) for k, v in usage.items()}

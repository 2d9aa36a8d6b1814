"""The stress run's detectors over per-cycle figures, pure logic (tested on recorded and
made-up series):

- StepTracker: a figure (a device's `rdma res` counts) that leaves its cycle-1 value is
  reported once, at the cycle the change began, with who holds the difference; the
  cycles after it at the same value are notes ("since cycle N"), a further change is a
  new step, a return to cycle 1's value closes it. One event is one failure, not one
  per later cycle.
- rss_growth: each process's RSS slope per cycle (least squares, after its warm-up)
  against RSS_GROWTH_BOUND_KB_PER_CYCLE: memory that grows with the cycles is a finding
  of the run even when no single cycle passed its slack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

# The bound on a process's RSS growth per cycle. The clean 1000-cycle run (README,
# "Endurance") grew 1.5-1.8 KiB per cycle in the workers and 1.6 KiB in the controller
# (Python's allocator settling and the controller's own per-cycle series, a few hundred
# floats); 8 KiB per cycle is four times that, and still only 8 MiB over 1000 cycles.
# What the issue saw (controller 32 KB per cycle, queue-replay 28 KB per cycle after its
# respawn) is four times the bound.
RSS_GROWTH_BOUND_KB_PER_CYCLE = 8.0
# A process's first cycles are its allocator settling (the first rounds import and cache),
# not growth: its slope is fitted from its RSS_WARMUP_CYCLES + 1st cycle on. Measured (40
# standby cycles, 4 workers, TCG guest): each worker's RSS rose in steps of 140-1040 KiB
# up to its 15th cycle, then by 0-8 KiB a cycle; fitted from cycle 11, three of the four
# came out at 9-18 KiB per cycle, from cycle 21 at 0-2.5 (the peer agent and the
# controller too)...
RSS_WARMUP_CYCLES = 20
# ...and only over at least this many cycles: fewer points give a slope of noise (a
# 4 KiB page more or less in one cycle of ten is 0.4 KiB per cycle of nothing)
RSS_FIT_MIN_CYCLES = 20
# a rise from one cycle to the next larger than this is named in a growth finding (the
# cycle it happened in): 1 MiB is more than any cycle of the clean runs added
RSS_STEP_NOTED_KB = 1024


@dataclass
class Step:
    """One figure away from its cycle-1 value: from `began` to `last` at `value`."""

    figure: str  # e.g. "rxe1 rdma res"
    base: dict[str, int]  # cycle 1's values
    value: dict[str, int]  # the values since `began`
    began: int
    last: int
    why: str  # who holds the difference, as found when it began (or when it failed)
    failed: bool  # counted as a failure (nothing explained it as passing)
    ended: bool = False  # back to cycle 1's values after `last`

    def change(self) -> str:
        return ", ".join(f"{k} {self.base.get(k, 0)} -> {v}" for k, v in self.value.items()
                         if self.base.get(k, 0) != v)

    def describe(self) -> str:
        span = (f"cycles {self.began}-{self.last}" if self.ended
                else f"from cycle {self.began} to the last ({self.last})")
        return f"{self.figure}: {self.change()} {span}" + (f": {self.why}" if self.why else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """What a cycle's value of a figure means (see StepTracker.observe)."""

    failure: str = ""  # a new failure of this cycle ("" when none)
    note: str = ""


class StepTracker:
    """Per figure: its cycle-1 value and the step it is in (if any)."""

    def __init__(self) -> None:
        self.base: dict[str, dict[str, int]] = {}
        self.open: dict[str, Step] = {}
        self.steps: list[Step] = []

    def observe(self, cycle: int, figure: str, value: dict[str, int],
                explained: bool = False, why: str = "") -> Verdict:
        """Take the figure's value in `cycle`. `explained`: the difference from cycle 1 is
        accounted for as passing (e.g. a killed client's objects, gone with it; a gone
        client's QPs at the peer within its keep-alive), `why` says who holds it."""
        base = self.base.setdefault(figure, dict(value))
        step = self.open.get(figure)
        if value == base:
            if step is None:
                return Verdict()
            step.ended = True
            del self.open[figure]
            return Verdict(note=f"{figure}: back to cycle 1's values (the change of cycle "
                                f"{step.began} lasted {step.last - step.began + 1} cycle(s))")
        if step is not None and step.value == value:
            step.last = cycle
            if not explained and not step.failed:  # what explained it no longer does
                step.failed, step.why = True, why
                return Verdict(failure=f"{figure}: {step.change()} since cycle {step.began}, "
                                       f"not explained any more: {why}")
            return Verdict(note=f"{figure}: {step.change()} since cycle {step.began}"
                                + (f" ({why})" if why else ""))
        if step is not None:
            step.ended = True
        new = Step(figure, base, dict(value), cycle, cycle, why, not explained)
        self.open[figure] = new
        self.steps.append(new)
        text = f"{figure} differs from cycle 1: {new.change()}" + (f": {why}" if why else "")
        return Verdict(note=text) if explained else Verdict(failure=text)


def fit_slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (cycle, value) points (0 for fewer than two)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(c for c, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((c - mx) ** 2 for c, _ in points)
    return sum((c - mx) * (v - my) for c, v in points) / den if den else 0.0


@dataclass(frozen=True)
class RssGrowth:
    process: str  # name, and pid (a respawned worker is a new process)
    first_cycle: int  # the first cycle fitted
    last_cycle: int
    first_kb: float
    last_kb: float
    slope_kb_per_cycle: float
    over_bound: bool
    # the largest rise from one cycle to the next among those fitted, and where: growth
    # that is one step (an event) reads differently from growth in every cycle (a leak)
    largest_step_kb: float = 0.0
    largest_step_cycle: int | None = None

    def describe(self) -> str:
        step = (f", of which {self.largest_step_kb / 1024:+.1f} MiB in one step at cycle "
                f"{self.largest_step_cycle}" if self.largest_step_cycle is not None
                and self.largest_step_kb > RSS_STEP_NOTED_KB else "")
        return (f"{self.process}: RSS {self.slope_kb_per_cycle:+.1f} KiB per cycle over "
                f"cycles {self.first_cycle}-{self.last_cycle} ({self.first_kb / 1024:.1f} -> "
                f"{self.last_kb / 1024:.1f} MiB{step}); bound "
                f"{RSS_GROWTH_BOUND_KB_PER_CYCLE:g} KiB per cycle "
                "(RSS_GROWTH_BOUND_KB_PER_CYCLE)")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rss_growth(by_process: dict[str, list[tuple[int, float]]],
               bound_kb: float = RSS_GROWTH_BOUND_KB_PER_CYCLE,
               warmup: int = RSS_WARMUP_CYCLES) -> tuple[list[RssGrowth], list[str]]:
    """(each judged process's slope, the processes not judged and why). `by_process`:
    process -> [(cycle, rss_kb)] in cycle order, one process per pid."""
    judged, not_judged = [], []
    for proc, pts in by_process.items():
        fit = pts[warmup:]
        if len(fit) < RSS_FIT_MIN_CYCLES:
            not_judged.append(f"{proc}: {len(pts)} cycles, fewer than the "
                              f"{warmup} of warm-up + {RSS_FIT_MIN_CYCLES} fitted")
            continue
        slope = fit_slope(fit)
        rise, at = max(((b[1] - a[1], b[0]) for a, b in pairwise(fit)),
                       default=(0.0, None))
        judged.append(RssGrowth(proc, fit[0][0], fit[-1][0], fit[0][1], fit[-1][1],
                                round(slope, 2), slope > bound_kb, rise, at))
    return judged, not_judged

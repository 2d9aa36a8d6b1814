"""The kernel log's clock against ours (CLOCK_MONOTONIC), measured, not assumed.

A /dev/kmsg record's timestamp is the printk clock (local_clock(), sched_clock based), not
CLOCK_MONOTONIC: the two start near boot but are different clocks (a guest's sched_clock
may be the TSC or jiffies, CLOCK_MONOTONIC follows the clocksource with NTP's slewing),
and a real suspend stops one and not always the other. A transition's timeline is on
CLOCK_MONOTONIC, so a kernel record is placed on it through an anchor: we read
CLOCK_MONOTONIC, log a line, read it again; the kernel stamped the line somewhere in
between. offset_ns = its stamp minus the middle of that span, uncertainty_ns = half the
span (plus the stamp's µs). Two anchors around a sleep say how far the clocks moved apart
inside it (`drift_ns`): a figure for the docs, and the reason a phase drawn from the first
anchor is only as good as that drift.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from power.kmsg.marker import log_marker_line
from power.kmsg.records import KMSG_PATH, Tail

ANCHOR_LABEL = "clock anchor"


@dataclass(frozen=True)
class ClockAnchor:
    """Kernel log time = CLOCK_MONOTONIC + offset_ns (± uncertainty_ns)."""

    offset_ns: int
    uncertainty_ns: int
    monotonic_ns: int  # when it was taken (the middle of the span)

    def to_monotonic_ns(self, ts_us: int) -> int:
        """A kernel record's timestamp on CLOCK_MONOTONIC."""
        return ts_us * 1000 - self.offset_ns

    def to_json(self) -> dict[str, Any]:
        return {"offset_ns": self.offset_ns, "uncertainty_ns": self.uncertainty_ns,
                "monotonic_ns": self.monotonic_ns}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClockAnchor:
        return cls(int(d["offset_ns"]), int(d["uncertainty_ns"]), int(d["monotonic_ns"]))


def anchor_from(ts_us: int, before_ns: int, after_ns: int) -> ClockAnchor:
    """The anchor of a line the kernel stamped `ts_us` while we were between `before_ns`
    and `after_ns` on CLOCK_MONOTONIC."""
    if after_ns < before_ns:
        raise ValueError(f"the span ends ({after_ns}) before it begins ({before_ns})")
    middle = (before_ns + after_ns) // 2
    return ClockAnchor(ts_us * 1000 - middle, (after_ns - before_ns + 1) // 2 + 1000, middle)


def take_anchor(tail: Tail, path: str = KMSG_PATH) -> ClockAnchor | None:
    """Log a line and find it in `tail`; None when the kernel dropped it (a rate-limited
    /dev/kmsg: printk_devkmsg=ratelimit) or the write failed: the caller says so."""
    before = time.monotonic_ns()
    token, _text, accepted = log_marker_line(ANCHOR_LABEL, path)
    after = time.monotonic_ns()
    if not accepted:
        return None
    for rec in reversed(tail.read()):
        if token in rec.message:
            return anchor_from(rec.ts_us, before, after)
    return None


@dataclass(frozen=True)
class ClockAnchors:
    """The anchors taken before and after a sleep (either may be missing)."""

    before: ClockAnchor | None
    after: ClockAnchor | None

    @property
    def drift_ns(self) -> int | None:
        if self.before is None or self.after is None:
            return None
        return self.after.offset_ns - self.before.offset_ns

    def to_monotonic_ns(self, ts_us: int) -> int | None:
        """On CLOCK_MONOTONIC through the first anchor there is (None: no anchor)."""
        a = self.before or self.after
        return None if a is None else a.to_monotonic_ns(ts_us)

    def to_json(self) -> dict[str, Any]:
        return {"before": None if self.before is None else self.before.to_json(),
                "after": None if self.after is None else self.after.to_json(),
                "drift_ns": self.drift_ns}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> ClockAnchors:
        d = d or {}
        return cls(*(None if d.get(k) is None else ClockAnchor.from_json(d[k])
                     for k in ("before", "after")))

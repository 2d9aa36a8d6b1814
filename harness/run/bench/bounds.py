"""Every bench section is bounded in time: SectionBound, its named bound (the
`..._SECTION_TIMEOUT_S` of harness.run.bench.spec) and what the section was doing.

A step that takes a timeout gets min(its own bound, the section's time left) (`clip`),
and is told which of the two it was; a step that cannot be cut short (a standby round,
a stress run) is held to its own bounds, and the section's bound is checked before each
step (`check`). When a bound fires it says what the section was waiting for."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.core.errors import BoundExceeded


@dataclass(frozen=True)
class Clipped:
    """A step's timeout: the smaller of its own bound and the section's time left."""

    seconds: float
    bound_name: str  # the bound that set it
    bound_s: float  # that bound's whole value (the section's, not what was left of it)


@dataclass
class SectionBound:
    section: str
    bound_name: str
    seconds: float
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed())

    def clip(self, own_name: str, own_s: float) -> Clipped:
        left = self.remaining()
        if left < own_s:
            return Clipped(left, self.bound_name, self.seconds)
        return Clipped(own_s, own_name, own_s)

    def check(self, waiting_for: str) -> None:
        """Raise BoundExceeded if the section's time is up, naming what comes next."""
        if self.elapsed() >= self.seconds:
            raise BoundExceeded(f"bench section {self.section}", self.bound_name,
                                self.seconds, waiting_for)

    def exceeded(self, waiting_for: str) -> BoundExceeded:
        return BoundExceeded(f"bench section {self.section}", self.bound_name, self.seconds,
                             waiting_for)


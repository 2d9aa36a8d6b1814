"""Did the transition meet the workload? Measured from the requests' own times, for every
lane (userspace ledgers, kernel block I/O, traced outside programs).

    win = FaultWindow(begin_ns, end_ns, away_begin_ns, away_end_ns)   # from the steps
    cov = Coverage.of([Span(start_ns, end_ns), ...], win)
    cov.crossed, cov.arrived_away, cov.after
    cov.missed(require_after=True)        # why the row is no measurement ([]: it is one)

A request's span runs from when the application handed it over (open loop: its arrival;
closed loop: the start of the workload, when every request was there; else its first
post) to its final outcome (None: it never got one: lost, abandoned, killed, stuck). It
*crossed* the transition when its span overlaps the transition's window (from the first
step's begin, a notice or the device going, to the last step's end, the device back and
the clients told). A row none of whose requests crossed is not a measurement of the
client under the transition: the sleep missed the workload (RowStatus.MISSED). A workload
that was meant to run on past the transition (WorkloadEnd.RESUMED) and had nothing arrive
after it did not show recovery either, unless the client itself stopped taking work:
a crossed request that never got an outcome (lost, stuck) holds a closed-loop
application back, and a client that never recovered from the transition is the
measurement (its row is bad for those requests), not a miss (`unfinished`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FaultWindow:
    """The transition on CLOCK_MONOTONIC: its whole span, and when the device was away."""

    begin_ns: int  # the first step began (a notice to the clients, or the device going)
    end_ns: int  # the last step ended (the device back, the clients told)
    away_begin_ns: int | None = None  # the device went (port down, delete, suspend)
    away_end_ns: int | None = None  # the device was back (port up, re-created, resumed)

    def __post_init__(self) -> None:
        if self.end_ns < self.begin_ns:
            raise ValueError(f"window ends ({self.end_ns}) before it begins ({self.begin_ns})")


@dataclass(frozen=True)
class Span:
    """One request's life as the application saw it (ns, CLOCK_MONOTONIC)."""

    start_ns: int  # handed over
    end_ns: int | None  # its final outcome; None: never


@dataclass(frozen=True)
class Coverage:
    """How the workload met one transition (see the module docstring)."""

    requests: int
    before: int  # finished before the transition began
    crossed: int  # alive at some moment of the transition
    arrived_away: int | None  # handed over while the device was away (None: no away step)
    after: int  # handed over after the transition's end
    in_flight_at_begin: int  # handed over, not finished when the transition began
    unfinished: int = 0  # crossed and never got an outcome (lost, abandoned, stuck)

    @classmethod
    def of(cls, spans: Iterable[Span], win: FaultWindow) -> Coverage:
        n = before = crossed = away = after = at_begin = unfinished = 0
        has_away = win.away_begin_ns is not None and win.away_end_ns is not None
        for s in spans:
            n += 1
            finished_before = s.end_ns is not None and s.end_ns < win.begin_ns
            if finished_before:
                before += 1
            if s.start_ns > win.end_ns:
                after += 1
            elif not finished_before:
                crossed += 1
                if s.end_ns is None:
                    unfinished += 1
                if s.start_ns <= win.begin_ns:
                    at_begin += 1
            if has_away and win.away_begin_ns <= s.start_ns <= win.away_end_ns:  # type: ignore[operator]
                away += 1
        return cls(n, before, crossed, away if has_away else None, after, at_begin, unfinished)

    def missed(self, require_after: bool) -> list[str]:
        """Why this is not a measurement of the transition ([]: it is one).
        `require_after`: the workload was meant to run on past the transition."""
        out = []
        if self.crossed == 0:
            out.append(f"the transition missed the workload: none of its {self.requests} "
                       f"requests was in flight or arrived during it ({self.before} had "
                       f"finished before it began, {self.after} arrived after it ended)")
        if require_after and self.after == 0 and self.requests and not self.unfinished:
            out.append("no request arrived after the transition ended: recovery was not "
                       "measured (the workload ran dry before it was stopped)")
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Coverage:
        def num(name: str, optional: bool = False) -> Any:
            v = d.get(name)
            if (v is None and optional) or (isinstance(v, int) and not isinstance(v, bool)
                                            and v >= 0):
                return v
            raise TypeError(f"coverage field {name!r} is {str(v)[:40]!r}, not a count")

        if not isinstance(d, dict):
            raise TypeError(f"coverage is not a JSON object: {str(d)[:60]!r}")
        return cls(num("requests"), num("before"), num("crossed"),
                   num("arrived_away", optional=True), num("after"),
                   num("in_flight_at_begin"), num("unfinished", optional=True) or 0)

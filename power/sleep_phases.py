"""The phases of one kernel suspend, read from the kernel's own log (as sleepgraph does).

With /sys/power/pm_debug_messages on (power.pmtest turns it on for the sleep), Linux 6.1
logs each phase boundary of `echo freeze > /sys/power/state`; each record carries the
kernel's timestamp (CLOCK_MONOTONIC, µs). PHASE_LINES lists the lines (one place), and
`read_sleep` turns the records after a point into a SleepRecord: when each boundary was
logged, the device suspend and resume times the PM core measured itself, the devices
that failed, and the lines of our rdma_rxe's sleep callbacks (RXE_PM_LINE: "rxe_power_pm
rxe_power_pm: suspend: unregistering rxe0 (netdev rxpw0)") with the phase each fell in. That phase
is the independent evidence of the mlx5 order: an unregister must fall between "tasks
frozen" and "devices suspended", a register between the test wait and "devices resumed".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from power.kmsg import KmsgRecord


class Boundary(StrEnum):
    ENTRY = "entry"  # PM: suspend entry (s2idle)
    FREEZE_USER = "freeze-user"  # Freezing user space processes
    USER_FROZEN = "user-frozen"  # ... completed (elapsed ...)
    TASKS_FROZEN = "tasks-frozen"  # Freezing remaining freezable tasks completed
    DEVICES_SUSPENDED = "devices-suspended"  # PM: suspend of devices complete after X msecs
    TEST_WAIT = "test-wait"  # PM: suspend debug: Waiting for N second(s).
    DEVICES_RESUMED = "devices-resumed"  # PM: resume of devices complete after X msecs
    EXIT = "exit"  # PM: suspend exit


PHASE_LINES: tuple[tuple[Boundary, re.Pattern[str]], ...] = (
    (Boundary.ENTRY, re.compile(r"^PM: suspend entry \((\w+)\)")),
    (Boundary.FREEZE_USER, re.compile(r"^Freezing user space processes$")),
    (Boundary.USER_FROZEN, re.compile(r"^Freezing user space processes completed")),
    (Boundary.TASKS_FROZEN, re.compile(r"^Freezing remaining freezable tasks completed")),
    (Boundary.DEVICES_SUSPENDED, re.compile(r"^PM: suspend of devices complete after "
                                            r"([0-9]+\.[0-9]+) msecs")),
    (Boundary.TEST_WAIT, re.compile(r"^PM: suspend debug: Waiting for ([0-9]+) second")),
    (Boundary.DEVICES_RESUMED, re.compile(r"^PM: resume of devices complete after "
                                          r"([0-9]+\.[0-9]+) msecs")),
    (Boundary.EXIT, re.compile(r"^PM: suspend exit")),
)
ABORTED_LINE = re.compile(r"^PM: suspend of devices aborted after ([0-9]+\.[0-9]+) msecs")
DEVICE_FAILED_LINE = re.compile(r"^(\S+ \S+): PM: failed to (\w+)(.*): error (-?[0-9]+)")
RXE_PM_LINE = re.compile(r"^rxe_power_pm rxe_power_pm: (suspend|resume): "
                         r"(unregistering|unregistered|registered|cannot add) (\S+)")


class Phase(StrEnum):
    """The spans of a sleep drawn on a timeline (SleepRecord.spans_us)."""

    FREEZE = "freeze"
    DEVICE_SUSPEND = "device suspend"
    HELD = "held"
    DEVICE_RESUME = "device resume"
    THAW = "thaw"


class RxePmStep(StrEnum):
    UNREGISTERING = "unregistering"
    UNREGISTERED = "unregistered"
    REGISTERED = "registered"
    FAILED = "cannot add"


@dataclass(frozen=True)
class RxePmLine:
    step: RxePmStep
    device: str
    ts_us: int
    phase: str  # the boundary it follows ("before-entry" if none)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step.value, "device": self.device, "ts_us": self.ts_us,
                "phase": self.phase}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RxePmLine:
        return cls(RxePmStep(d["step"]), str(d["device"]), int(d["ts_us"]), str(d["phase"]))


@dataclass(frozen=True)
class SleepRecord:
    """One suspend as the kernel logged it; ts_us are kernel timestamps."""

    boundaries: dict[Boundary, int]  # the first record of each boundary
    suspend_ms: float | None  # the PM core's own measure of the device suspend
    resume_ms: float | None
    aborted: bool  # the device suspend was aborted (a device failed)
    failed_devices: tuple[str, ...]  # "driver device: suspend error -95"
    rxe: tuple[RxePmLine, ...]

    def span_ms(self, a: Boundary, b: Boundary) -> float | None:
        if a in self.boundaries and b in self.boundaries:
            return (self.boundaries[b] - self.boundaries[a]) / 1000
        return None

    def phases_ms(self) -> dict[str, float | None]:
        """Freeze (user space and kernel threads), device suspend, the hold at the test
        level, device resume, thaw. From the boundaries' timestamps, except that the
        test-wait line comes before the wait: the hold is its span to "resume of devices
        complete" less the PM core's own resume time, which is the device resume."""
        b = Boundary
        waited = self.span_ms(b.TEST_WAIT, b.DEVICES_RESUMED)
        return {"freeze": self.span_ms(b.FREEZE_USER, b.TASKS_FROZEN),
                "device_suspend": self.span_ms(b.TASKS_FROZEN, b.DEVICES_SUSPENDED),
                "held": (None if waited is None or self.resume_ms is None
                         else round(waited - self.resume_ms, 3)),
                "device_resume": self.resume_ms,
                "thaw": self.span_ms(b.DEVICES_RESUMED, b.EXIT),
                "total": self.span_ms(b.ENTRY, b.EXIT)}

    def spans_us(self) -> list[tuple[Phase, int, int]]:
        """(phase, begin, end) in kernel log µs, for the phases whose both ends were
        logged. The device resume is the PM core's own measure, ending at its line."""
        b = self.boundaries.get
        resumed = b(Boundary.DEVICES_RESUMED)
        resume_from = (None if resumed is None or self.resume_ms is None
                       else resumed - round(self.resume_ms * 1000))
        edges = ((Phase.FREEZE, b(Boundary.FREEZE_USER), b(Boundary.TASKS_FROZEN)),
                 (Phase.DEVICE_SUSPEND, b(Boundary.TASKS_FROZEN), b(Boundary.DEVICES_SUSPENDED)),
                 (Phase.HELD, b(Boundary.TEST_WAIT), resume_from),
                 (Phase.DEVICE_RESUME, resume_from, resumed),
                 (Phase.THAW, resumed, b(Boundary.EXIT)))
        return [(p, a, z) for p, a, z in edges if a is not None and z is not None and z >= a]

    def order_problems(self, devices: Iterable[str]) -> list[str]:
        """Where the mlx5 order was not kept for `devices`: each must be unregistered
        after every task was frozen and before the device suspend ended, and registered
        again after the test wait and before the device resume ended. Empty: kept."""
        problems = []
        for dev in devices:
            for step, inside in ((RxePmStep.UNREGISTERED, Boundary.TASKS_FROZEN),
                                 (RxePmStep.REGISTERED, Boundary.TEST_WAIT)):
                lines = [x for x in self.rxe if x.device == dev and x.step is step]
                if not lines:
                    problems.append(f"no kernel line says {dev} was {step.value}")
                elif lines[0].phase != inside.value:
                    problems.append(f"{dev} {step.value} after '{lines[0].phase}', not "
                                    f"inside the phase after '{inside.value}'")
        return problems

    def to_json(self) -> dict[str, Any]:
        return {"boundaries_us": {k.value: v for k, v in self.boundaries.items()},
                "suspend_ms": self.suspend_ms, "resume_ms": self.resume_ms,
                "aborted": self.aborted, "failed_devices": list(self.failed_devices),
                "phases_ms": self.phases_ms(), "rxe": [x.to_json() for x in self.rxe]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SleepRecord:
        """Back from to_json (a results file's step detail or timeline entry)."""
        def ms(key: str) -> float | None:
            return None if d.get(key) is None else float(d[key])
        return cls({Boundary(k): int(v) for k, v in (d.get("boundaries_us") or {}).items()},
                   ms("suspend_ms"), ms("resume_ms"), bool(d.get("aborted")),
                   tuple(str(x) for x in d.get("failed_devices") or ()),
                   tuple(RxePmLine.from_json(x) for x in d.get("rxe") or ()))


def read_sleep(records: Iterable[KmsgRecord]) -> SleepRecord:
    """The first suspend in `records` (the ones logged after a point, in order)."""
    boundaries: dict[Boundary, int] = {}
    suspend_ms = resume_ms = None
    aborted = False
    failed: list[str] = []
    rxe: list[RxePmLine] = []
    phase = "before-entry"
    for rec in sorted(records, key=lambda r: r.seq):
        msg = rec.message
        if Boundary.EXIT in boundaries:
            break
        for boundary, pattern in PHASE_LINES:
            m = pattern.search(msg)
            if m is None or boundary in boundaries:
                continue
            boundaries[boundary] = rec.ts_us
            phase = boundary.value
            if boundary is Boundary.DEVICES_SUSPENDED:
                suspend_ms = float(m.group(1))
            elif boundary is Boundary.DEVICES_RESUMED:
                resume_ms = float(m.group(1))
            break
        if ABORTED_LINE.search(msg):
            aborted = True
        if (m := DEVICE_FAILED_LINE.search(msg)) is not None:
            failed.append(f"{m.group(1)}: {m.group(2)}{m.group(3)} error {m.group(4)}")
        if (m := RXE_PM_LINE.search(msg)) is not None:
            rxe.append(RxePmLine(RxePmStep(m.group(2)), m.group(3), rec.ts_us, phase))
    return SleepRecord(boundaries, suspend_ms, resume_ms, aborted, tuple(failed), tuple(rxe))

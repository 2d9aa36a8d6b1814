"""The kernel's own suspend on a scenario's timeline (transition standby-devices, fault
model mlx5-order): the PM core's phases (freeze, device suspend, held, device resume, thaw)
as bands and our rdma_rxe's sleep callbacks (the local device unregistered, registered
again) as ticks, all read from the kernel log and placed on CLOCK_MONOTONIC through the
clock anchors the shim took around the sleep (power.kmsg.clock). A file without anchors
(written before them) gets a note in the lane instead of bands on a guessed clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.report.drawing import NOTE_BOX
from harness.report.timeline_canvas import Canvas, Label
from power.kernel_suspend import SLEEP_PHASES_ENTRY
from power.kmsg.clock import ClockAnchors
from power.sleep_phases import Phase, RxePmStep, SleepRecord
from power.timeline import Entry, EntryKind

PHASE_COLOURS = {Phase.FREEZE: "#9ecae1", Phase.DEVICE_SUSPEND: "#fdae6b",
                 Phase.HELD: "#bdbdbd", Phase.DEVICE_RESUME: "#a1d99b",
                 Phase.THAW: "#c6dbef"}
RXE_STEP_COLOURS = {RxePmStep.UNREGISTERING: "#d62728", RxePmStep.UNREGISTERED: "#d62728",
                    RxePmStep.REGISTERED: "#2ca02c", RxePmStep.FAILED: "#6a1b9a"}
LANE_H = 0.8


@dataclass(frozen=True)
class KernelSleep:
    """One kernel suspend of a transition, as its timeline entry recorded it."""

    sleep: SleepRecord
    clock: ClockAnchors

    @property
    def anchored(self) -> bool:
        return self.clock.before is not None or self.clock.after is not None

    def ms(self, ts_us: int, t0_ns: int) -> float | None:
        """A kernel log time in ms from t0 on the timeline's clock (None: no anchor)."""
        mono = self.clock.to_monotonic_ns(ts_us)
        return None if mono is None else (mono - t0_ns) / 1e6

    def lane_name(self) -> str:
        a = self.clock.before or self.clock.after
        tol = "" if a is None else f" ±{max(a.uncertainty_ns / 1e6, 0.01):.2f} ms"
        return f"kernel PM phases\n(kernel log{tol})"


def kernel_sleeps(entries: list[Entry]) -> list[KernelSleep]:
    """The kernel suspends a transition's timeline recorded, in order."""
    return [KernelSleep(SleepRecord.from_json(e.detail), ClockAnchors.from_json(
                e.detail.get("clock"))) for e in entries
            if e.kind is EntryKind.KMSG and e.what == SLEEP_PHASES_ENTRY]


def draw_kernel_sleep(cv: Canvas, ks: KernelSleep, t0: int, y0: float, h: float) -> None:
    ax = cv.ax
    if not ks.anchored:
        ax.text(cv.lo + 8 * cv.ms_per_px, y0 + h / 2,
                "kernel log's clock not anchored to CLOCK_MONOTONIC in this file: the "
                "phases are in the kernel-suspend step's detail only", fontsize=8,
                color="#777777", va="center", clip_on=True, bbox=NOTE_BOX)
        return
    from matplotlib.patches import Rectangle

    for phase, a, z in ks.sleep.spans_us():
        lo, hi = ks.ms(a, t0), ks.ms(z, t0)
        if lo is None or hi is None:
            continue
        ax.add_patch(Rectangle((lo, y0 + h * 0.08), max(hi - lo, cv.ms_per_px), h * 0.3,
                               color=PHASE_COLOURS[phase], lw=0, zorder=2))
        if (hi - lo) / cv.ms_per_px > len(phase.value) * 5.2 + 6:
            ax.text((lo + hi) / 2, y0 + h * 0.23, phase.value, fontsize=6.5, ha="center",
                    va="center", color="#333333", zorder=5, clip_on=True)
    items = []
    for line in ks.sleep.rxe:
        t = ks.ms(line.ts_us, t0)
        if t is not None:
            items.append(Label(t, f"{line.device} {line.step.value} ({line.phase})",
                               RXE_STEP_COLOURS[line.step]))
    cv.labels(items, (y0 + h * 0.4, y0 + h * 0.52), y0 + h * 0.55, h * 0.2, 2)

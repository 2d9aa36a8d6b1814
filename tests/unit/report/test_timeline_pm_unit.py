"""The kernel's own suspend on a scenario's timeline (harness.report.timeline_pm), on a
recorded standby-devices scenario (docs/measurements/matrix-three-fault-models-2026-12-07
.jsonl, the nvme-rdma hca-first line): its kernel-suspend entry read back, placed on the
timeline through a clock anchor, drawn as bands and ticks; a file without anchors gets a
note and no bands."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from harness.report.timeline_canvas import Canvas
from harness.report.timeline_pm import draw_kernel_sleep, kernel_sleeps
from harness.run.records import ScenarioRecord
from power.kernel_suspend import SLEEP_PHASES_ENTRY
from power.kmsg.clock import ClockAnchor
from power.sleep_phases import Boundary, Phase, RxePmStep
from power.timeline import Entry

RECORDED = "standby-devices-nvme-hca-first-2026-12-07.json"
OFFSET_NS = 2_500_000  # a made-up anchor: the kernel log 2.5 ms ahead of CLOCK_MONOTONIC


def recorded(data_dir: Path) -> dict[str, Any]:
    line: dict[str, Any] = json.loads((data_dir / RECORDED).read_text())
    return line


def anchored(line: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(line)
    for e in out["result"]["transition"]["timeline"]["entries"]:
        if e["what"] == SLEEP_PHASES_ENTRY:
            a = ClockAnchor(OFFSET_NS, 40_000, e["t_ns"]).to_json()
            e["detail"]["clock"] = {"before": a, "after": None, "drift_ns": None}
    return out


def entries(line: dict[str, Any]) -> list[Entry]:
    return [Entry.from_json(e) for e in line["result"]["transition"]["timeline"]["entries"]]


def test_the_recorded_sleep_read_back_and_placed_through_its_anchor(data_dir: Path) -> None:
    line = recorded(data_dir)
    (plain,) = kernel_sleeps(entries(line))
    assert not plain.anchored and plain.ms(1, 0) is None  # recorded before the anchors
    (ks,) = kernel_sleeps(entries(anchored(line)))
    assert ks.anchored and "±0.04 ms" in ks.lane_name()
    assert [p for p, _, _ in ks.sleep.spans_us()] == list(Phase)
    gone = next(x for x in ks.sleep.rxe if x.step is RxePmStep.UNREGISTERED)
    assert (gone.device, gone.phase) == ("rxe0", "tasks-frozen")
    t0 = 1_000_000
    assert ks.ms(gone.ts_us, t0) == (gone.ts_us * 1000 - OFFSET_NS - t0) / 1e6


def axes() -> Any:
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def test_bands_and_ticks_drawn_only_with_an_anchor(data_dir: Path) -> None:
    line = recorded(data_dir)
    (ks,) = kernel_sleeps(entries(anchored(line)))
    t0 = ks.clock.to_monotonic_ns(ks.sleep.boundaries[Boundary.ENTRY]) or 0
    ax = axes()
    cv = Canvas(ax, -200.0, 1600.0, 1200)
    y0, _ = cv.lane(ks.lane_name(), 0.8)
    draw_kernel_sleep(cv, ks, t0, y0, 0.8)
    assert len(ax.patches) == len(Phase)  # a band per phase
    texts = [t.get_text() for t in ax.texts]
    assert "rxe0 unregistered (tasks-frozen)" in texts and "rxe0 registered (test-wait)" in texts
    assert "held" in texts  # the long phase is named on its band
    (plain,) = kernel_sleeps(entries(line))
    ax = axes()
    cv = Canvas(ax, -200.0, 1600.0, 1200)
    y0, _ = cv.lane(plain.lane_name(), 0.8)
    draw_kernel_sleep(cv, plain, t0, y0, 0.8)
    assert len(ax.patches) == 0 and "not anchored" in ax.texts[0].get_text()


def test_the_timeline_picture_gets_the_lane(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from harness.report.section import scenario_rows
    from harness.report.timeline import render_timeline

    sizes: list[tuple[int, int]] = []
    for line in (recorded(data_dir), anchored(recorded(data_dir))):
        rec = ScenarioRecord.from_json(line)
        png = render_timeline(rec, scenario_rows(rec), tmp_path / f"{len(sizes)}.png")
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        sizes.append(struct.unpack(">II", head[16:24]))
    assert sizes[0] == sizes[1] and 1300 <= sizes[0][0] <= 1500

"""The timeline picture of one matrix scenario (a PNG ~1400 px wide).

X: ms from the transition's first step; the steps are shaded bands. Lanes, top down:
rxe0's and rxe1's async events with the polled port state as a coloured strip; the
shim's notices, the clients' answers, vetoes and holders; the kernel's own suspend where
the transition had one (its PM phases and our rdma_rxe's callbacks: timeline_pm); then per
client its requests
(one mark per attempt at its completion time, or at its post time if it never completed;
colour = outcome, shape = operation; an earlier attempt of a replayed request is a hollow
mark joined to its final one), its own notes (suspend_prepare, released, goodbye, async
PORT_ERR, ...) and what the peer saw (arrivals as ticks, goodbye and errors labelled).
Requests outside the window around the transition are counted at the lanes' edges.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from harness.report.drawing import (
    AX_LEFT,
    AX_RIGHT,
    FIG_DPI,
    FIG_W_IN,
    OP_MARKERS,
    OUTCOME_COLOURS,
    PORT_COLOURS,
    STATUS_COLOURS,
    STEP_COLOURS,
    UNACCOUNTED_COLOUR,
    figure,
    save_png,
    trim,
)
from harness.report.timeline_canvas import Canvas
from harness.report.timeline_lanes import (
    draw_client_events,
    draw_peer,
    draw_port_strip,
    draw_requests,
    draw_steps,
    timeline_window,
    transition_labels,
    transition_t0,
)
from harness.report.timeline_pm import LANE_H, draw_kernel_sleep, kernel_sleeps
from harness.run.records import ScenarioRecord
from harness.run.rows import Row
from harness.workload.findings import RowStatus
from power.timeline import EntryKind


def title_lines(rec: ScenarioRecord, rows: list[Row], position: int,
                ) -> tuple[str, list[tuple[str, str]], str, str]:
    """(headline, the status line as (text, colour) runs, findings, the worst status's
    colour)."""
    t = rec.result.transition if rec.result else None
    idx = rec.index if rec.index is not None else position
    verdict = t.verdict.value if t else "harness error" if rec.error else "?"
    head = (f"{idx:03d}  {rec.scenario.id}   ·   transition {verdict}"
            + (f" in {round(t.total_ms, 3):.0f} ms" if t else ""))
    worst = max((r.status for r in rows), key=list(RowStatus).index, default=RowStatus.CLEAN)
    status = [(("   " if i else "") + f"{r.policy}: {r.status.value.upper()}"
               + (f" (peer saw {r.peer_saw})" if r.peer_saw else "")
               + (f", recovery {r.recovery_ms:.0f} ms" if r.recovery_ms is not None else ""),
               STATUS_COLOURS[r.status.value]) for i, r in enumerate(rows)]
    finds = [f"{r.policy}: {f}" if len(rows) > 1 else f for r in rows for f in r.findings]
    finds += [f"veto: {v}" for v in dict.fromkeys(r.veto for r in rows if r.veto)]
    if rec.not_restored:
        finds.append(f"not restored: {', '.join(rec.not_restored)}")
    return head, status, "; ".join(finds) or "no findings", STATUS_COLOURS[worst.value]


def _text_runs(fig: Any, x: float, y: float, runs: list[tuple[str, str]], **kw: Any) -> None:
    """Texts of different colours one after the other on a line (figure coordinates)."""
    renderer = fig.canvas.get_renderer()
    for text, colour in runs:
        t = fig.text(x, y, text, color=colour, **kw)
        x += t.get_window_extent(renderer).width / fig.bbox.width


def legend_handles(unaccounted: bool = False) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    hs: list[Any] = [Line2D([], [], ls="", marker="o", ms=7, mfc=c, mec="black", mew=0.3,
                            label=k) for k, c in OUTCOME_COLOURS.items() if k != "lost"]
    hs.append(Line2D([], [], ls="", marker="x", ms=7, mew=1.6, color="black",
                     label="lost (at post time)"))
    if unaccounted:
        hs.append(Line2D([], [], ls="", marker="o", ms=7, mfc=UNACCOUNTED_COLOUR, mec="black",
                         mew=0.3, label="unaccounted (no outcome)"))
    hs.append(Line2D([], [], ls="--", marker="o", ms=7, mfc="white", mec="#ff7f0e", mew=1.5,
                     color="#666666", lw=0.8, label="earlier attempt (replayed)"))
    hs += [Line2D([], [], ls="", marker=m, ms=6, mfc="#bbbbbb", mec="#333333", label=op)
           for op, m in OP_MARKERS.items()]
    hs.append(Line2D([], [], ls="", marker="|", ms=9, mew=1.2, color="#555555",
                     label="peer arrival"))
    hs += [Patch(color=c, label=f"port {s}") for s, c in PORT_COLOURS.items()]
    hs.append(Patch(color=STEP_COLOURS[0], label="transition step"))
    return hs


def render_timeline(rec: ScenarioRecord, rows: list[Row], out: Path, position: int = 0) -> Path:
    """One scenario's timeline as a PNG (~1400 px wide); the record must hold a result."""
    res = rec.result
    if res is None:
        raise ValueError(f"scenario {rec.scenario.id} has no result to draw")
    t = res.transition
    t0 = transition_t0(t)
    clients = res.clients
    entries = t.timeline.entries
    sleeps = kernel_sleeps(entries)
    lanes_h = 0.7 + 0.7 + 1.05 + LANE_H * len(sleeps) + sum(1.1 + 1.2 + 0.75 for _ in clients)
    height = max(8.0, 2.4 + lanes_h * 0.9)
    fig = figure(FIG_W_IN, height)
    bottom = 0.95 / height
    top = 1 - 1.6 / height
    ax = fig.add_axes((AX_LEFT, bottom, AX_RIGHT - AX_LEFT, top - bottom))
    lo, hi = timeline_window(res, t0)
    cv = Canvas(ax, lo, hi, FIG_W_IN * FIG_DPI * (AX_RIGHT - AX_LEFT))
    ax.set_xlim(lo, hi)

    asyncs, notices = transition_labels(entries, t0)
    local = str((t.device_before or {}).get("dev") or "rxe0")
    others = sorted({e.source for e in entries
                     if e.kind in (EntryKind.PORT_STATE, EntryKind.ASYNC_EVENT)} - {local})
    for dev, role in ((local, "local HCA"), (others[0] if others else "rxe1", "peer HCA")):
        y0, _ = cv.lane(f"{dev} ({role})\nasync events, port", 0.7)
        draw_port_strip(cv, entries, dev, t0, y0 + 0.05, 0.12)
        cv.labels(asyncs.get(dev, []), (y0 + 0.18, y0 + 0.3), y0 + 0.33, 0.17, 2)
    y0, _ = cv.lane("shim notices,\nanswers, vetoes", 1.05)
    cv.labels(notices, (y0 + 0.05, y0 + 0.2), y0 + 0.23, 0.2, 4)
    for ks in sleeps:
        y0, _ = cv.lane(ks.lane_name(), LANE_H, "#fffbea")
        draw_kernel_sleep(cv, ks, t0, y0, LANE_H)
    for i, c in enumerate(clients):
        shade = "#f7f7fb" if i % 2 == 0 else "#fbf7f3"
        who = c.client + (f" ({c.policy})" if c.policy != c.client else "")
        y0, _ = cv.lane(f"{who}\nrequests", 1.1, shade)
        draw_requests(cv, c, t0, y0, 1.1)
        y0, _ = cv.lane(f"{who}\nown notes", 1.2, shade)
        draw_client_events(cv, c, t0, y0, 1.2)
        y0, _ = cv.lane(f"peer of {who}\n(what it saw)", 0.75, shade)
        draw_peer(cv, c, t0, y0, 0.75)
    ax.set_ylim(cv.top, 0)
    ax.set_yticks([y for y, _ in cv.ticks], [n for _, n in cv.ticks], fontsize=8)
    ax.tick_params(axis="y", length=0)
    draw_steps(cv, t, t0)
    ax.axvline(0, color="#24476b", lw=1, zorder=0.7)
    ax.grid(axis="x", color="#dddddd", lw=0.5, zorder=0.55)
    ax.set_axisbelow(True)
    ax.set_xlabel("ms from the transition's first step (CLOCK_MONOTONIC)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)

    head, status, finds, colour = title_lines(rec, rows, position)
    fig.text(AX_LEFT, 1 - 0.18 / height, head, fontsize=12.5, fontweight="bold", va="top")
    _text_runs(fig, AX_LEFT, 1 - 0.5 / height, status, fontsize=10, va="top",
               fontweight="bold")
    lines = textwrap.wrap(finds, 185)
    if len(lines) > 2:
        lines = [lines[0], trim(lines[1], 180) + " …"]
    fig.text(AX_LEFT, 1 - 0.74 / height, "\n".join(lines), fontsize=9, color=colour, va="top",
             linespacing=1.25)
    unaccounted = any(not e.get("outcome") for c in clients for e in c.ledger)
    fig.legend(handles=legend_handles(unaccounted), loc="lower center", ncol=9, fontsize=7.5,
               frameon=False, bbox_to_anchor=(0.5, 0.0), columnspacing=1.2,
               handletextpad=0.4, borderaxespad=0.2)
    return save_png(fig, out)



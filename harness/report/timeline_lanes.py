"""The lanes of a scenario's timeline picture: what each lane draws on the canvas
(harness.report.timeline_canvas): transition steps, port state, async events, notices, a
client's requests, its own notes, what its peer saw; and the window of interest.
harness.report.timeline puts them together.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from itertools import pairwise
from typing import Any

from harness.report.drawing import (
    CHAR_PX,
    NOTE_BOX,
    OP_MARKERS,
    OUTCOME_COLOURS,
    PORT_COLOURS,
    STEP_COLOURS,
    STEP_FAILED_COLOUR,
    UNACCOUNTED_COLOUR,
    ms_from,
    short_who,
    trim,
)
from harness.report.tables import outcome_short
from harness.report.timeline_canvas import Canvas, Label
from harness.run.scenario_result import ClientResult, ScenarioResult
from power.result import TransitionResult
from power.timeline import Entry, EntryKind

# The timeline entries that set the window of interest (with the steps).
WINDOW_KINDS = (EntryKind.ASYNC_EVENT, EntryKind.NOTIFY, EntryKind.ANSWER, EntryKind.VETO,
                EntryKind.HOLDER)
EVENT_COLOURS = {"notice": "#1f77b4", "error": "#d62728", "clean": "#2ca02c",
                 "flushed": "#ff7f0e", "other": "#555555"}


def client_event_label(ev: dict[str, Any]) -> tuple[str, str]:
    """(text, colour class) of one of a client's own notes."""
    name = str(ev.get("event", "?"))
    if name == "opened":
        return f"opened gen {ev.get('generation', '?')}", "other"
    if name == "flushed":
        reqs = ev.get("reqs") or []
        return (f"flushed {len(reqs)} reqs" + (" (requeued)" if ev.get("requeued") else ""),
                "flushed")
    if name == "goodbye":
        return ("goodbye sent" if ev.get("ok", True) else "goodbye FAILED",
                "clean" if ev.get("ok", True) else "error")
    if name in ("suspend_prepare", "resume_complete", "suspend ignored", "resume ignored"):
        return name, "notice"
    if name == "released":
        return name, "clean"
    if name == "device removed":
        return name, "error"
    if name == "async" or name.isupper():  # older files: the async name replaced "async"
        name = str(ev.get("name", name))
        return f"async {name}", "clean" if "ACTIVE" in name else "error"
    if name == "rejected":
        return f"rejected req {ev.get('req', '?')} errno {ev.get('errno', '?')}", "error"
    if name in ("controller", "transport"):  # a kernel client's (harness.run.kernel_lane)
        state = str(ev.get("state"))
        return f"{ev.get('obj', '?')} {state}", (
            "clean" if state == "live" or state.startswith("connected")
            else "error" if state == "absent" else "notice")
    if name == "connection":
        return (f"conn on {ev.get('dev', '?')} ({ev.get('phase', '?')})"
                + (" OFF THE WIRE" if ev.get("off_wire") else ""),
                "error" if ev.get("off_wire") else "other")
    if name == "held the delete":
        return f"held the delete {float(ev.get('ms') or 0) / 1000:.1f} s", "error"
    return name, "other"


def attempt_class(att: dict[str, Any]) -> str:
    if att.get("errno") is not None and att.get("completed_ns") is None:
        return "rejected-at-post"
    st = att.get("status")
    if st is None:
        return "lost"
    return "completed-ok" if st == "SUCCESS" else "flushed" if st == "WR_FLUSH_ERR" \
        else "completed-error"


def transition_t0(t: TransitionResult) -> int:
    for s in t.steps:
        if s.begin_ns:
            return s.begin_ns
    return t.timeline.t0_ns


def timeline_window(res: ScenarioResult, t0: int) -> tuple[float, float]:
    """The window of interest in ms: the transition and the clients' reactions to it."""
    t = res.transition
    keys: list[float] = []
    for s in t.steps:
        if s.outcome != "skipped" and s.begin_ns:
            keys += [(s.begin_ns - t0) / 1e6, ((s.end_ns or s.begin_ns) - t0) / 1e6]
    keys += [(e.t_ns - t0) / 1e6 for e in t.timeline.entries if e.kind in WINDOW_KINDS]
    start, end = (min(keys), max(keys)) if keys else (0.0, 1000.0)
    near = (start - 1000.0, end + 5000.0)
    for c in res.clients:
        ts = [ms_from(e.get("t_ns"), t0) for e in c.events]
        ts += [ms_from(e.get("t_ns"), t0) for e in c.peer_events
               if "seq" not in e or e.get("what") == "GOODBYE"]
        ts += [ms_from(c.metrics.get(k), t0) for k in ("first_ok_after_resume_ns", "quiesced_ns")]
        first_error = True
        for e in c.ledger:
            atts = e.get("attempts") or []
            if not atts or e.get("outcome") not in ("lost", "rejected-at-post",
                                                    "completed-error"):
                continue
            if e["outcome"] == "completed-error":
                if not first_error:
                    continue
                first_error = False
            a = atts[-1]
            ts.append(ms_from(a.get("completed_ns") or a.get("posted_ns"), t0))
        keys += [x for x in ts if x is not None and near[0] <= x <= near[1]]
    if not keys:
        return -500.0, 1500.0
    lo, hi = min(keys), max(keys)
    pad = max(350.0, 0.07 * (hi - lo))
    return lo - pad, hi + pad * 0.8


def draw_steps(cv: Canvas, t: TransitionResult, t0: int) -> None:
    ax = cv.ax
    steps = [s for s in t.steps if s.outcome != "skipped" and s.begin_ns]
    ends = [-math.inf, -math.inf]
    for i, s in enumerate(steps):
        b, e = (s.begin_ns - t0) / 1e6, ((s.end_ns or s.begin_ns) - t0) / 1e6
        failed = s.outcome == "failed"
        ax.axvspan(b, max(e, b + cv.ms_per_px), color=STEP_FAILED_COLOUR if failed else
                   STEP_COLOURS[i % 2], zorder=0, lw=0)
        ax.axvline(b, color="#8fa8c8", lw=0.5, zorder=0.6)
        name = s.step.value + (" FAILED" if failed else "")
        w = len(name) * CHAR_PX * 1.1 * cv.ms_per_px
        row = 0 if ends[0] <= b else 1 if ends[1] <= b else int(ends[1] < ends[0])
        ends[row] = b + w
        ax.annotate(name, (b, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3 + 13 * row),
                    textcoords="offset points", fontsize=8, ha="left", va="bottom",
                    color="#c62828" if failed else "#24476b", annotation_clip=False)


def draw_port_strip(cv: Canvas, entries: list[Entry], dev: str, t0: int, y: float,
                    h: float) -> None:
    polls = [((e.t_ns - t0) / 1e6, e.what) for e in entries
             if e.kind is EntryKind.PORT_STATE and e.source == dev]
    prev = None
    for i, (t, state) in enumerate(polls):
        t_next = polls[i + 1][0] if i + 1 < len(polls) else cv.hi
        lo, hi = max(t, cv.lo), min(t_next, cv.hi)
        if hi > lo:
            cv.ax.add_patch(_rect(lo, y, hi - lo, h, PORT_COLOURS.get(state, "#999999")))
        if state != prev and cv.lo <= t <= cv.hi:
            cv.ax.text(t + 2 * cv.ms_per_px, y + h / 2, state, fontsize=6.5, color="white",
                       ha="left", va="center", zorder=6, clip_on=True, fontweight="bold")
        prev = state


def _arc(x1: float, x2: float, y: float, bump: float) -> Any:
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath

    return PathPatch(MPath([(x1, y), ((x1 + x2) / 2, y + bump), (x2, y)],
                           [MPath.MOVETO, MPath.CURVE3, MPath.CURVE3]),
                     fc="none", ec="#555555", lw=0.7, alpha=0.55, zorder=3, ls="--")


def _rect(x: float, y: float, w: float, h: float, colour: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, color=colour, lw=0, zorder=2, alpha=0.85)


def draw_requests(cv: Canvas, c: ClientResult, t0: int, y0: float, h: float) -> None:
    ax = cv.ax
    ledger = c.ledger
    if not ledger:
        why = (f"no ledger: {c.crash or 'the worker reported nothing'}"
               + (f"; {len(c.in_flight_at_crash)} in flight at the crash"
                  if c.crashed else ""))
        ax.text(cv.lo + 8 * cv.ms_per_px, y0 + h / 2, "\n".join(textwrap.wrap(why, 150)),
                fontsize=8.5, color="#c62828" if c.crashed else "#555555", va="center",
                ha="left", zorder=6, clip_on=True, bbox=NOTE_BOX)
        return
    ops = [o for o in OP_MARKERS if any(e.get("op") == o for e in ledger)] or list(OP_MARKERS)
    ys = {op: y0 + h * (0.66 - 0.54 * i / max(len(ops) - 1, 1)) for i, op in enumerate(ops)}
    if len(ops) == 1:
        ys = {ops[0]: y0 + h * 0.4}
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    unposted: Counter[str] = Counter()
    pts: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    for e in ledger:
        atts = e.get("attempts") or []
        outcome = str(e.get("outcome") or "unaccounted")
        if not atts:
            unposted[outcome] += 1
            continue
        y = ys.get(str(e.get("op")), y0 + h * 0.4)
        marks = []
        for k, a in enumerate(atts):
            final = k == len(atts) - 1
            done = a.get("completed_ns")
            x = ms_from(done if done is not None else a.get("posted_ns"), t0)
            if x is None:
                continue
            cls = outcome if final else attempt_class(a)
            marks.append(x)
            if final and not cv.lo <= x <= cv.hi:
                (before if x < cv.lo else after)[outcome] += 1
            pts.setdefault((str(e.get("op")), cls, final), []).append((x, y))
            posted = ms_from(a.get("posted_ns"), t0)
            if posted is not None and done is not None and (x - posted) / cv.ms_per_px > 3:
                ax.plot([posted, x], [y, y], color=OUTCOME_COLOURS.get(cls, "#777"), lw=1,
                        zorder=3, alpha=0.8)
            if final and outcome == "lost" and posted is not None:
                ax.plot([posted, cv.hi], [y, y], color="black", lw=1, ls=":", zorder=3)
        for a, b in pairwise(marks):  # a replay: an arc from one try to the next
            ax.add_patch(_arc(a, b, y, h * 0.09))
    for (op, cls, final), xy in pts.items():
        xs, yv = zip(*xy, strict=True)
        colour = OUTCOME_COLOURS.get(cls, UNACCOUNTED_COLOUR)
        if cls == "lost":
            ax.scatter(xs, yv, marker="x", s=46, c="black", lw=1.6, zorder=5)
        elif final:
            ax.scatter(xs, yv, marker=OP_MARKERS.get(op, "o"), s=30, c=colour,
                       edgecolors="black", linewidths=0.3, zorder=5)
        else:
            ax.scatter(xs, yv, marker=OP_MARKERS.get(op, "o"), s=42, facecolors="white",
                       edgecolors=colour, linewidths=1.5, zorder=5)
    note_y = y0 + h * 0.93
    if before:
        ax.text(cv.lo + 4 * cv.ms_per_px, note_y, f"◀ {sum(before.values())} earlier: "
                + outcome_short(dict(before)).split(": ", 1)[1], fontsize=7, color="#444",
                ha="left", va="top", zorder=6)
    tail = []
    if after:
        tail.append(f"{sum(after.values())} later: "
                    + outcome_short(dict(after)).split(": ", 1)[1] + " ▶")
    if unposted:
        tail.insert(0, "never posted: " + outcome_short(dict(unposted)).split(": ", 1)[1])
    if tail:
        ax.text(cv.hi - 4 * cv.ms_per_px, note_y, "   ".join(tail), fontsize=7, color="#444",
                ha="right", va="top", zorder=6)


def draw_client_events(cv: Canvas, c: ClientResult, t0: int, y0: float, h: float) -> None:
    items = []
    for ev in c.events:
        t = ms_from(ev.get("t_ns"), t0)
        if t is None:
            continue
        text, cls = client_event_label(ev)
        items.append(Label(t, text, EVENT_COLOURS[cls]))
    if not items:
        cv.ax.text(cv.lo + 8 * cv.ms_per_px, y0 + h / 2, "no notes from the client",
                   fontsize=8, color="#777777", va="center", clip_on=True, bbox=NOTE_BOX)
    cv.labels(items, (y0 + h * 0.14, y0 + h * 0.28), y0 + h * 0.31, h * 0.165, 4)
    m = c.metrics
    a, b = ms_from(m.get("resume_ns"), t0), ms_from(m.get("first_ok_after_resume_ns"), t0)
    if a is not None and b is not None:
        y = y0 + h * 0.07
        cv.ax.annotate("", (b, y), (a, y), arrowprops={"arrowstyle": "<|-|>", "color": "#1f77b4",
                                                        "lw": 1, "shrinkA": 0, "shrinkB": 0},
                       zorder=4, annotation_clip=True)
        text = f"resume → first ok {b - a:.0f} ms"
        w = (len(text) * CHAR_PX * 0.95 + 12) * cv.ms_per_px
        if b - a > w:  # on the arrow
            x, ha = (max(a, cv.lo) + min(b, cv.hi)) / 2, "center"
        elif b + w < cv.hi:
            x, ha = b + 4 * cv.ms_per_px, "left"
        else:
            x, ha = a - 4 * cv.ms_per_px, "right"
        cv.ax.text(x, y, text, fontsize=7, color="#1f77b4", va="center", ha=ha, clip_on=True,
                   zorder=5, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"})


def draw_peer(cv: Canvas, c: ClientResult, t0: int, y0: float, h: float) -> None:
    gens: dict[int, list[float]] = {}
    items = []
    for e in c.peer_events:
        t = ms_from(e.get("t_ns"), t0)
        if t is None:
            continue
        what = str(e.get("what", "?"))
        if "seq" in e and " bad:" not in what and what != "GOODBYE":
            gens.setdefault(int(e.get("generation") or 0), []).append(t)
            continue
        colour = ("#2ca02c" if what == "GOODBYE" else "#ff7f0e" if what == "WR_FLUSH_ERR"
                  else "#d62728")
        text = ("GOODBYE (orderly disconnect)" if what == "GOODBYE" else
                f"{what} (gen {e.get('generation', '?')})")
        items.append(Label(t, trim(text, 60), colour))
    shades = ("#555555", "#1f77b4", "#9467bd", "#8c564b")
    for i, (_gen, ts) in enumerate(sorted(gens.items())):
        cv.ax.scatter(ts, [y0 + h * 0.16] * len(ts), marker="|", s=60, lw=1,
                      c=shades[i % len(shades)], zorder=4)
    if not items and not gens:
        cv.ax.text(cv.lo + 8 * cv.ms_per_px, y0 + h / 2, "nothing recorded at the peer",
                   fontsize=8, color="#777777", va="center", clip_on=True, bbox=NOTE_BOX)
    cv.labels(items, (y0 + h * 0.3, y0 + h * 0.42), y0 + h * 0.46, h * 0.26, 2)


def transition_labels(entries: list[Entry], t0: int) -> tuple[dict[str, list[Label]],
                                                              list[Label]]:
    asyncs: dict[str, list[Label]] = {}
    notices: list[Label] = []
    for e in entries:
        t = (e.t_ns - t0) / 1e6
        kind, src, what = e.kind, e.source, e.what
        if kind is EntryKind.ASYNC_EVENT:
            colour = "#2ca02c" if "ACTIVE" in what else "#d62728"
            asyncs.setdefault(src, []).append(Label(t, what, colour))
        elif kind is EntryKind.NOTIFY:
            notices.append(Label(t, f"notify {what}", "#1f77b4"))
        elif kind is EntryKind.ANSWER:
            colour = "#2ca02c" if what in ("released", "resumed") else "#d62728" \
                if what in ("veto", "gone", "no-answer") else "#555555"
            notices.append(Label(t, trim(f"{short_who(src)}: {what}"), colour))
        elif kind is EntryKind.VETO:
            notices.append(Label(t, trim(f"VETO {src}: {what}", 52), "#c62828"))
        elif kind is EntryKind.HOLDER:
            notices.append(Label(t, trim(what, 52), "#6a1b9a"))
        elif kind is EntryKind.KMSG and e.detail.get("ok") is False:
            hits = e.detail.get("hits")
            notices.append(Label(t, f"kernel log: {hits} hit(s)", "#c62828"))
    return asyncs, notices


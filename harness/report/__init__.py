"""rxe-power report: the table, timeline pictures and an HTML summary from results.jsonl.

    code = write_report(Path("results/matrix-X/results.jsonl"), out_dir)  # 0; 2: nothing usable
    code = write_report(Path("results"), out_dir)   # every results.jsonl beneath: one section each
    write_summary([path_a, path_b], out_dir / "summary.html")             # the HTML alone

What it writes, per results file (a *section*):

- `table.txt`: for a matrix the rows (harness.matrix.render_table), for a stress run the
  per-cycle table and the trends (first, last, max, slope of every figure);
- `timelines/NNN-<transition>-<ordering>-<policies>-<mix>.png`: one picture per matrix
  scenario. X: ms from the transition's first step; the steps are shaded bands. Lanes, top
  down: rxe0's and rxe1's async events with the polled port state as a coloured strip; the
  shim's notices, the clients' answers, vetoes and holders; then per client its requests
  (one mark per attempt at its completion time, or at its post time if it never completed;
  colour = outcome, shape = operation; an earlier attempt of a replayed request is a hollow
  mark joined to its final one), its own notes (suspend_prepare, released, goodbye, async
  PORT_ERR, ...) and what the peer saw (arrivals as ticks, goodbye and errors labelled).
  Requests outside the window around the transition are counted at the lane's edges.
- `stress.png` for a stress run: fds, RSS, threads per process, RDMA resources per device,
  transition ms and cycle seconds against the cycle number; failed cycles shaded red.

and one `summary.html` (self-contained, inline CSS) with every section. Pictures need
matplotlib (imported lazily, Agg); without it the table and HTML are still written.
Everything taken from a results file is HTML-escaped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import math
import os
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.core import settings
from harness.core.errors import RxePowerError
from harness.run.matrix import (
    COLUMNS,
    LEGEND,
    PEER_COLUMNS,
    Row,
    RowStatus,
    error_rows,
    render_table,
    rows_of,
)
from harness.run.resultsfile import RecordKind, Results, read_results
from harness.run.stress import RES_KINDS, render_summary, summarize

Log = Callable[[str], None]
NO_RECORDS_EXIT = 2
MATPLOTLIB_FIX = "pip install matplotlib (or .venv/bin/pip install matplotlib)"

# Fixed colours: the same in every picture and in the HTML.
OUTCOME_COLOURS = {
    "completed-ok": "#2ca02c",
    "replayed-ok": "#17becf",
    "rejected-at-post": "#9467bd",
    "completed-error": "#d62728",
    "flushed": "#ff7f0e",
    "failed-to-app": "#8c564b",
    "lost": "#000000",
}
UNACCOUNTED_COLOUR = "#e377c2"  # no outcome at all: a harness bug (the row is broken)
STATUS_COLOURS = {"clean": "#2e7d32", "bad": "#c62828", "broken": "#6a1b9a"}
OP_MARKERS = {"SEND": "o", "WRITE": "s", "READ": "^", "FETCH_ADD": "D"}
PORT_COLOURS = {"ACTIVE": "#2ca02c", "DOWN": "#ff7f0e", "absent": "#d62728"}
STEP_COLOURS = ("#dbe9f6", "#ececec")
STEP_FAILED_COLOUR = "#f4c7c3"

FIG_W_IN, FIG_DPI = 14.0, 100
AX_LEFT, AX_RIGHT = 0.115, 0.985
CHAR_PX = 5.6  # average width of a character at the label font size (DejaVu Sans 7.5 pt)
LABEL_FONT = 7.5
NOTE_BOX = {"boxstyle": "square,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}


# --- loading --------------------------------------------------------------------------------


@dataclass
class Section:
    """One results file, read, with where its table and pictures go."""

    path: Path
    out_dir: Path
    results: Results
    rows_by: dict[int, list[Row]] = field(default_factory=dict)  # scenario position -> rows
    pictures: dict[str, Path] = field(default_factory=dict)  # scenario position or "stress"

    @property
    def rows(self) -> list[Row]:
        return [r for pos in sorted(self.rows_by) for r in self.rows_by[pos]]

    @property
    def scenarios(self) -> list[dict]:
        return self.results.of_kind(RecordKind.SCENARIO)

    @property
    def cycles(self) -> list[dict]:
        return self.results.of_kind(RecordKind.CYCLE)

    @property
    def summary(self) -> dict | None:
        s = self.results.of_kind(RecordKind.SUMMARY)
        return s[-1] if s else None

    @property
    def is_stress(self) -> bool:
        return bool(self.cycles) or self.results.command == "stress"

    @property
    def usable(self) -> bool:
        return bool(self.scenarios or self.cycles)


def load_section(path: Path, out_dir: Path, log: Log = print) -> Section:
    """Read one results file (errors for a missing file or a foreign schema propagate); a bad
    line is logged as a warning and the good records before it are used."""
    results = read_results(path)
    if results.problem:
        log(f"warning: {results.problem}")
    sec = Section(path, out_dir, results)
    sec.rows_by = {pos: scenario_rows(rec) for pos, rec in enumerate(sec.scenarios, 1)}
    return sec


def _scenario_of(rec: dict) -> dict:
    sc = rec.get("scenario") if isinstance(rec.get("scenario"), dict) else {}
    out = {"transition": "?", "ordering": "?", "policies": [], "mix": "?", **sc}
    out.setdefault("id", f"{out['transition']}/{out['ordering']}/"
                         f"{'+'.join(map(str, out['policies']))}/{out['mix']}")
    return out


def scenario_rows(rec: dict) -> list[Row]:
    """A scenario record's rows: from its result (the current rules), else the rows it stored
    (a harness error), else one broken row per policy."""
    sc = _scenario_of(rec)
    why = ""
    if isinstance(rec.get("result"), dict):
        try:
            return rows_of(sc, rec["result"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            why = f"its result is unreadable ({exc!r})"
    if isinstance(rec.get("rows"), list) and rec["rows"]:
        try:
            return [Row.from_json(r) for r in rec["rows"]]
        except (KeyError, TypeError, ValueError) as exc:
            why = why or f"its rows are unreadable ({exc!r})"
    rows = error_rows(sc, str(rec.get("error") or why or "no result recorded"))
    return rows or [Row(sc["id"], sc["transition"], sc["ordering"], "?", sc["mix"], "error",
                        findings=[f"harness error: {rec.get('error') or why}"],
                        status=RowStatus.BROKEN)]


def section_dirs(paths: list[Path], out_dir: Path) -> list[Path]:
    """Where each results file's table and pictures go: out_dir itself for one file; for
    several, out_dir/<their folders relative to the folder above their common ancestor>."""
    if len(paths) == 1:
        return [out_dir]
    parents = [p.absolute().parent for p in paths]
    base = Path(os.path.commonpath(parents)).parent
    dirs = [out_dir / par.relative_to(base) for par in parents]
    dup = Counter(dirs)
    return [d / p.stem if dup[d] > 1 else d for d, p in zip(dirs, paths, strict=True)]


# --- tables ----------------------------------------------------------------------------------


def header_line(sec: Section) -> str:
    h = sec.results.header or {}
    host = h.get("host") or {}
    where = f"{host.get('node', '?')}, kernel {host.get('kernel', '?')}" + (
        ", in the VM" if host.get("in_vm") else "")
    return (f"{sec.path}: rxe-power {sec.results.command}, started {h.get('started', '?')} "
            f"on {where}")


def table_lines(sec: Section) -> list[str]:
    if sec.is_stress:
        return stress_lines(sec)
    out = render_table(sec.rows)
    s = sec.summary
    if s and s.get("interrupted"):
        out.append("the matrix was interrupted: rows after the last one above did not run")
    elif s is None:
        out.append("no summary record: the run is still going or stopped early (crash or "
                   "kill?); the rows above are the scenarios that finished")
    return [*out, "", LEGEND]


def outcome_short(counts: dict[str, int]) -> str:
    names = {"completed-ok": "ok", "replayed-ok": "replayed", "rejected-at-post": "rejected",
             "completed-error": "error", "failed-to-app": "failed-to-app"}
    total = sum(counts.values())
    parts = [f"{n} {names.get(k, k)}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return f"{total} requests: {', '.join(parts)}" if parts else "no requests"


def _num(v: object, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, int | float) else "-"


def cycle_clients(c: dict) -> str:
    total: Counter[str] = Counter()
    crashed = []
    for cl in c.get("clients") or []:
        total.update(cl.get("counts") or {})
        if cl.get("crashed"):
            crashed.append(str(cl.get("client", "?")))
    return outcome_short(dict(total)) + (f"; crashed: {', '.join(crashed)}" if crashed else "")


def stress_series(cycles: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Every per-cycle figure as (cycle, value) points, named as harness.stress names them."""
    series: dict[str, list[tuple[int, float]]] = {}
    for i, c in enumerate(cycles, 1):
        n = c["cycle"] if isinstance(c.get("cycle"), int) else i
        values = [(f"{name}.{k}", v) for name, u in (c.get("usage") or {}).items()
                  for k, v in (u or {}).items()]
        values += [(f"{dev}.{k}", (c["rdma_res"][dev] or {}).get(k, 0))
                   for dev in sorted(c.get("rdma_res") or {}) for k in RES_KINDS]
        values.append(("transition_ms", c.get("transition_ms")))
        for key, v in values:
            if isinstance(v, int | float) and not isinstance(v, bool):
                series.setdefault(key, []).append((n, float(v)))
    return series


def stress_trends(sec: Section) -> tuple[int, int, dict[str, dict[str, float]], bool]:
    """(cycles, failed, trends, from_summary)."""
    s = sec.summary
    if s and isinstance(s.get("trends"), dict):
        return int(s.get("cycles", len(sec.cycles))), int(s.get("failed", 0)), s["trends"], True
    series = stress_series(sec.cycles)
    failed = sum(1 for c in sec.cycles if not c.get("ok"))
    return len(sec.cycles), failed, summarize({k: [v for _, v in pts]
                                               for k, pts in series.items()}), False


def stress_lines(sec: Section) -> list[str]:
    head = (f"{'cycle':>5}  {'result':<7}{'verdict':<11}{'trans ms':>9}{'secs':>7}  "
            "requests / failures / notes")
    out = [head, "-" * len(head)]
    for c in sec.cycles:
        ms = c.get("transition_ms")
        notes = [*(c.get("failures") or []), *(c.get("notes") or [])]
        out.append(f"{c.get('cycle', '?'):>5}  {'ok' if c.get('ok') else 'FAILED':<7}"
                   f"{c.get('verdict', '-')!s:<11}"
                   f"{f'{ms:.0f}' if isinstance(ms, int | float) else '-':>9}"
                   f"{_num(c.get('seconds'), '.1f'):>7}  {cycle_clients(c)}"
                   + (f" | {'; '.join(map(str, notes))}" if notes else ""))
    done, failed, trends, from_summary = stress_trends(sec)
    out.append("")
    bad = [c for c in sec.cycles if not c.get("ok")]
    if bad:
        out.append("failed cycles:")
        out += [f"  cycle {c.get('cycle', '?')}: {'; '.join(map(str, c.get('failures') or []))}"
                for c in bad]
    summary = render_summary(done, failed, trends, sec.path.parent)
    summary[0] = f"{done} cycles, {failed} failed; results in {sec.path}" + (
        "" if from_summary else " (no summary record: the run is still going or stopped "
        "early; trends computed from the cycle records)")
    if sec.summary and sec.summary.get("interrupted"):
        summary[0] += " (interrupted)"
    return [*out, *summary]


# --- pictures: common -------------------------------------------------------------------------


def load_matplotlib() -> Any | None:
    """matplotlib, or None when it is not installed. Pictures are drawn on Figure objects with
    an Agg canvas of their own: no pyplot, no change to the process's global backend."""
    _persistent_mpl_cache()
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        return None
    return matplotlib


def _persistent_mpl_cache() -> None:
    """Where the home directory is read-only (the VM guest shares the host's root read-only),
    matplotlib builds its font cache afresh in a temporary directory in every process: 15 s
    under emulation. Keep it under the results folder instead (written back to the host)."""
    if settings.mpl_config_dir_set() or os.access(Path.home() / ".config", os.W_OK):
        return
    cache = settings.results_dir().absolute() / ".matplotlib"
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        settings.export_mpl_config_dir(cache)


def _figure(w_in: float, h_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w_in, h_in), dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    return fig


def _safe(part: object) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(part)).strip("_") or "_"


def timeline_name(rec: dict, position: int) -> str:
    sc = _scenario_of(rec)
    idx = rec.get("index") if isinstance(rec.get("index"), int) else position
    return (f"{idx:03d}-{_safe(sc['transition'])}-{_safe(sc['ordering'])}-"
            f"{_safe('+'.join(map(str, sc['policies'])) or 'none')}-{_safe(sc['mix'])}.png")


def _ms(t_ns: int | float | None, t0: int) -> float | None:
    return None if t_ns is None else (t_ns - t0) / 1e6


def _short_who(source: str) -> str:
    who = re.sub(r"^client\s+", "", source)
    return re.sub(r"\s*\(pid \d+\)", "", who)


def _trim(text: str, limit: int = 44) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- pictures: the timeline of one scenario ------------------------------------------------------


@dataclass
class Label:
    t: float  # ms
    text: str
    colour: str


class Canvas:
    """The timeline's axes with lanes stacked top down in data units, and label layout."""

    def __init__(self, ax: Any, lo: float, hi: float, px_w: float) -> None:
        self.ax, self.lo, self.hi = ax, lo, hi
        self.ms_per_px = (hi - lo) / px_w
        self.top = 0.0
        self.ticks: list[tuple[float, str]] = []

    def lane(self, name: str, height: float, shade: str | None = None) -> tuple[float, float]:
        y1 = self.top
        y0 = y1 - height
        self.top = y0
        self.ticks.append(((y0 + y1) / 2, name))
        self.ax.axhline(y0, color="#bbbbbb", lw=0.6, zorder=1)
        if shade:
            self.ax.axhspan(y0, y1, color=shade, zorder=0.5, lw=0)
        return y0, y1

    def labels(self, items: Iterable[Label], y_tick: tuple[float, float], y_rows: float,
               row_h: float, nrows: int, merge_px: float = 14) -> None:
        """A tick at each label's time, the label beside it in the first free row."""
        ax = self.ax
        merged: list[tuple[Label, int]] = []
        for it in sorted(items, key=lambda i: i.t):
            if merged and merged[-1][0].text == it.text and \
                    (it.t - merged[-1][0].t) / self.ms_per_px < merge_px:
                merged[-1] = (merged[-1][0], merged[-1][1] + 1)
            else:
                merged.append((it, 1))
        ends = [-math.inf] * nrows
        for it, n in merged:
            if not self.lo <= it.t <= self.hi:
                continue
            text = it.text + (f" ×{n}" if n > 1 else "")
            w = (len(text) * CHAR_PX + 8) * self.ms_per_px
            start = it.t
            if it.t + w > self.hi:  # no room on the right: the label goes left of its tick
                start = it.t - w
            free = [r for r in range(nrows) if ends[r] <= start]
            if free:
                row = free[0]
            else:  # every row is taken here: shift the label right, with a leader line
                row = min(range(nrows), key=lambda r: ends[r])
                start = min(ends[row], self.hi - w)
            ends[row] = max(ends[row], start + w)
            y = y_rows + row * row_h
            ax.plot([it.t, it.t], y_tick, color=it.colour, lw=1.4, zorder=4,
                    solid_capstyle="butt")
            anchor = min(max(it.t, start), start + w)  # the label's point nearest its tick
            ax.plot([it.t, anchor], [y_tick[1], y], color=it.colour, lw=0.5, alpha=0.6,
                    zorder=3)
            ax.text(start + 2 * self.ms_per_px, y, text, fontsize=LABEL_FONT, color=it.colour,
                    ha="left", va="bottom", zorder=5, clip_on=True,
                    bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none",
                          "alpha": 0.7})


EVENT_COLOURS = {"notice": "#1f77b4", "error": "#d62728", "clean": "#2ca02c",
                 "flushed": "#ff7f0e", "other": "#555555"}


def client_event_label(ev: dict) -> tuple[str, str]:
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
    return name, "other"


def attempt_class(att: dict) -> str:
    if att.get("errno") is not None and att.get("completed_ns") is None:
        return "rejected-at-post"
    st = att.get("status")
    if st is None:
        return "lost"
    return "completed-ok" if st == "SUCCESS" else "flushed" if st == "WR_FLUSH_ERR" \
        else "completed-error"


def transition_t0(t: dict) -> int:
    for s in t.get("steps") or []:
        if s.get("begin_ns"):
            return int(s["begin_ns"])
    return int((t.get("timeline") or {}).get("t0_ns") or 0)


def timeline_window(rec: dict, t0: int) -> tuple[float, float]:
    """The window of interest in ms: the transition and the clients' reactions to it."""
    res = rec["result"]
    t = res["transition"]
    keys: list[float] = []
    for s in t.get("steps") or []:
        if s.get("outcome") != "skipped" and s.get("begin_ns"):
            keys += [_ms(s["begin_ns"], t0), _ms(s.get("end_ns") or s["begin_ns"], t0)]
    for e in (t.get("timeline") or {}).get("entries") or []:
        if e.get("kind") in ("async-event", "notify", "answer", "veto", "holder"):
            keys.append(_ms(e.get("t_ns"), t0))
    keys = [k for k in keys if k is not None]
    start, end = (min(keys), max(keys)) if keys else (0.0, 1000.0)
    near = (start - 1000.0, end + 5000.0)
    for c in res.get("clients") or []:
        ts = [_ms(e.get("t_ns"), t0) for e in c.get("events") or []]
        ts += [_ms(e.get("t_ns"), t0) for e in c.get("peer_events") or []
               if "seq" not in e or e.get("what") == "GOODBYE"]
        m = c.get("metrics") or {}
        ts += [_ms(m.get(k), t0) for k in ("first_ok_after_resume_ns", "quiesced_ns")]
        first_error = True
        for e in c.get("ledger") or []:
            atts = e.get("attempts") or []
            if not atts or e.get("outcome") not in ("lost", "rejected-at-post",
                                                    "completed-error"):
                continue
            if e["outcome"] == "completed-error":
                if not first_error:
                    continue
                first_error = False
            a = atts[-1]
            ts.append(_ms(a.get("completed_ns") or a.get("posted_ns"), t0))
        keys += [x for x in ts if x is not None and near[0] <= x <= near[1]]
    if not keys:
        return -500.0, 1500.0
    lo, hi = min(keys), max(keys)
    pad = max(350.0, 0.07 * (hi - lo))
    return lo - pad, hi + pad * 0.8


def draw_steps(cv: Canvas, t: dict, t0: int) -> None:
    ax = cv.ax
    steps = [s for s in t.get("steps") or [] if s.get("outcome") != "skipped"
             and s.get("begin_ns")]
    ends = [-math.inf, -math.inf]
    for i, s in enumerate(steps):
        b, e = _ms(s["begin_ns"], t0), _ms(s.get("end_ns") or s["begin_ns"], t0)
        failed = s.get("outcome") == "failed"
        ax.axvspan(b, max(e, b + cv.ms_per_px), color=STEP_FAILED_COLOUR if failed else
                   STEP_COLOURS[i % 2], zorder=0, lw=0)
        ax.axvline(b, color="#8fa8c8", lw=0.5, zorder=0.6)
        name = str(s.get("step", "?")) + (" FAILED" if failed else "")
        w = len(name) * CHAR_PX * 1.1 * cv.ms_per_px
        row = 0 if ends[0] <= b else 1 if ends[1] <= b else int(ends[1] < ends[0])
        ends[row] = b + w
        ax.annotate(name, (b, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3 + 13 * row),
                    textcoords="offset points", fontsize=8, ha="left", va="bottom",
                    color="#c62828" if failed else "#24476b", annotation_clip=False)


def draw_port_strip(cv: Canvas, entries: list[dict], dev: str, t0: int, y: float,
                    h: float) -> None:
    polls = [(_ms(e["t_ns"], t0), str(e.get("what", "?"))) for e in entries
             if e.get("kind") == "port-state" and e.get("source") == dev and "t_ns" in e]
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


def draw_requests(cv: Canvas, c: dict, t0: int, y0: float, h: float) -> None:
    ax = cv.ax
    ledger = c.get("ledger") or []
    if not ledger:
        why = (f"no ledger: {c.get('crash') or 'the worker reported nothing'}"
               + (f"; {len(c.get('in_flight_at_crash') or [])} in flight at the crash"
                  if c.get("crashed") else ""))
        ax.text(cv.lo + 8 * cv.ms_per_px, y0 + h / 2, "\n".join(textwrap.wrap(why, 150)),
                fontsize=8.5, color="#c62828" if c.get("crashed") else "#555555", va="center",
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
            x = _ms(done if done is not None else a.get("posted_ns"), t0)
            if x is None:
                continue
            cls = outcome if final else attempt_class(a)
            marks.append(x)
            if final and not cv.lo <= x <= cv.hi:
                (before if x < cv.lo else after)[outcome] += 1
            pts.setdefault((str(e.get("op")), cls, final), []).append((x, y))
            posted = _ms(a.get("posted_ns"), t0)
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


def draw_client_events(cv: Canvas, c: dict, t0: int, y0: float, h: float) -> None:
    items = []
    for ev in c.get("events") or []:
        t = _ms(ev.get("t_ns"), t0)
        if t is None:
            continue
        text, cls = client_event_label(ev)
        items.append(Label(t, text, EVENT_COLOURS[cls]))
    if not items:
        cv.ax.text(cv.lo + 8 * cv.ms_per_px, y0 + h / 2, "no notes from the client",
                   fontsize=8, color="#777777", va="center", clip_on=True, bbox=NOTE_BOX)
    cv.labels(items, (y0 + h * 0.14, y0 + h * 0.28), y0 + h * 0.31, h * 0.165, 4)
    m = c.get("metrics") or {}
    a, b = _ms(m.get("resume_ns"), t0), _ms(m.get("first_ok_after_resume_ns"), t0)
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


def draw_peer(cv: Canvas, c: dict, t0: int, y0: float, h: float) -> None:
    gens: dict[int, list[float]] = {}
    items = []
    for e in c.get("peer_events") or []:
        t = _ms(e.get("t_ns"), t0)
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
        items.append(Label(t, _trim(text, 60), colour))
    shades = ("#555555", "#1f77b4", "#9467bd", "#8c564b")
    for i, (_gen, ts) in enumerate(sorted(gens.items())):
        cv.ax.scatter(ts, [y0 + h * 0.16] * len(ts), marker="|", s=60, lw=1,
                      c=shades[i % len(shades)], zorder=4)
    if not items and not gens:
        cv.ax.text(cv.lo + 8 * cv.ms_per_px, y0 + h / 2, "nothing recorded at the peer",
                   fontsize=8, color="#777777", va="center", clip_on=True, bbox=NOTE_BOX)
    cv.labels(items, (y0 + h * 0.3, y0 + h * 0.42), y0 + h * 0.46, h * 0.26, 2)


def transition_labels(entries: list[dict], t0: int) -> tuple[dict[str, list[Label]],
                                                             list[Label]]:
    asyncs: dict[str, list[Label]] = {}
    notices: list[Label] = []
    for e in entries:
        t = _ms(e.get("t_ns"), t0)
        kind, src, what = e.get("kind"), str(e.get("source", "?")), str(e.get("what", "?"))
        if t is None:
            continue
        if kind == "async-event":
            colour = "#2ca02c" if "ACTIVE" in what else "#d62728"
            asyncs.setdefault(src, []).append(Label(t, what, colour))
        elif kind == "notify":
            notices.append(Label(t, f"notify {what}", "#1f77b4"))
        elif kind == "answer":
            colour = "#2ca02c" if what in ("released", "resumed") else "#d62728" \
                if what in ("veto", "gone", "no-answer") else "#555555"
            notices.append(Label(t, _trim(f"{_short_who(src)}: {what}"), colour))
        elif kind == "veto":
            notices.append(Label(t, _trim(f"VETO {src}: {what}", 52), "#c62828"))
        elif kind == "holder":
            notices.append(Label(t, _trim(what, 52), "#6a1b9a"))
        elif kind == "kmsg" and (e.get("detail") or {}).get("ok") is False:
            hits = (e.get("detail") or {}).get("hits")
            notices.append(Label(t, f"kernel log: {hits} hit(s)", "#c62828"))
    return asyncs, notices


def title_lines(rec: dict, rows: list[Row], position: int,
                ) -> tuple[str, list[tuple[str, str]], str, str]:
    """(headline, the status line as (text, colour) runs, findings, the worst status's
    colour)."""
    sc = _scenario_of(rec)
    t = (rec.get("result") or {}).get("transition") or {}
    idx = rec.get("index") if isinstance(rec.get("index"), int) else position
    verdict = t.get("verdict") or ("harness error" if rec.get("error") else "?")
    head = (f"{idx:03d}  {sc['id']}   ·   transition {verdict}"
            + (f" in {t['total_ms']:.0f} ms" if isinstance(t.get("total_ms"), int | float)
               else ""))
    worst = max((r.status for r in rows), key=list(RowStatus).index, default=RowStatus.CLEAN)
    status = [(("   " if i else "") + f"{r.policy}: {r.status.value.upper()}"
               + (f" (peer saw {r.peer_saw})" if r.peer_saw else "")
               + (f", recovery {r.recovery_ms:.0f} ms" if r.recovery_ms is not None else ""),
               STATUS_COLOURS[r.status.value]) for i, r in enumerate(rows)]
    finds = [f"{r.policy}: {f}" if len(rows) > 1 else f for r in rows for f in r.findings]
    finds += [f"veto: {v}" for v in dict.fromkeys(r.veto for r in rows if r.veto)]
    if isinstance(rec.get("not_restored"), list) and rec["not_restored"]:
        finds.append(f"not restored: {', '.join(map(str, rec['not_restored']))}")
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


def render_timeline(rec: dict, rows: list[Row], out: Path, position: int = 0) -> Path:
    """One scenario's timeline as a PNG (~1400 px wide)."""

    res = rec["result"]
    t = res["transition"]
    t0 = transition_t0(t)
    clients = res.get("clients") or []
    entries = (t.get("timeline") or {}).get("entries") or []
    lanes_h = 0.7 + 0.7 + 1.05 + sum(1.1 + 1.2 + 0.75 for _ in clients)
    height = max(8.0, 2.4 + lanes_h * 0.9)
    fig = _figure(FIG_W_IN, height)
    bottom = 0.95 / height
    top = 1 - 1.6 / height
    ax = fig.add_axes((AX_LEFT, bottom, AX_RIGHT - AX_LEFT, top - bottom))
    lo, hi = timeline_window(rec, t0)
    cv = Canvas(ax, lo, hi, FIG_W_IN * FIG_DPI * (AX_RIGHT - AX_LEFT))
    ax.set_xlim(lo, hi)

    asyncs, notices = transition_labels(entries, t0)
    local = str((t.get("device_before") or {}).get("dev") or "rxe0")
    others = sorted({str(e.get("source")) for e in entries
                     if e.get("kind") in ("port-state", "async-event")} - {local})
    for dev, role in ((local, "local HCA"), (others[0] if others else "rxe1", "peer HCA")):
        y0, _ = cv.lane(f"{dev} ({role})\nasync events, port", 0.7)
        draw_port_strip(cv, entries, dev, t0, y0 + 0.05, 0.12)
        cv.labels(asyncs.get(dev, []), (y0 + 0.18, y0 + 0.3), y0 + 0.33, 0.17, 2)
    y0, _ = cv.lane("shim notices,\nanswers, vetoes", 1.05)
    cv.labels(notices, (y0 + 0.05, y0 + 0.2), y0 + 0.23, 0.2, 4)
    for i, c in enumerate(clients):
        shade = "#f7f7fb" if i % 2 == 0 else "#fbf7f3"
        who = str(c.get("client", "?"))
        who += f" ({c['policy']})" if c.get("policy") not in (None, who) else ""
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
        lines = [lines[0], _trim(lines[1], 180) + " …"]
    fig.text(AX_LEFT, 1 - 0.74 / height, "\n".join(lines), fontsize=9, color=colour, va="top",
             linespacing=1.25)
    unaccounted = any(not e.get("outcome") for c in clients for e in c.get("ledger") or [])
    fig.legend(handles=legend_handles(unaccounted), loc="lower center", ncol=9, fontsize=7.5,
               frameon=False, bbox_to_anchor=(0.5, 0.0), columnspacing=1.2,
               handletextpad=0.4, borderaxespad=0.2)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=FIG_DPI)
    return out


# --- pictures: stress trends -----------------------------------------------------------------


def render_stress(sec: Section, out: Path) -> Path:
    """Per-cycle figures against the cycle number; failed cycles shaded red."""
    from matplotlib.ticker import MaxNLocator

    series = stress_series(sec.cycles)
    failed = [int(c.get("cycle", i)) for i, c in enumerate(sec.cycles, 1) if not c.get("ok")]
    fig = _figure(FIG_W_IN, 9.5)
    axes = fig.subplots(3, 2, sharex=True)
    procs = sorted({k.rsplit(".", 1)[0] for k in series if k.endswith(".fds")},
                   key=lambda n: (n == "controller", n))
    devs = sorted({k.rsplit(".", 1)[0] for k in series if k.endswith(".qp")})

    def plot(ax: Any, key: str, label: str, scale: float = 1.0, k: int = 0, **kw: Any) -> None:
        pts = series.get(key) or []
        if pts:  # markers differ, so that series on the same values stay visible
            kw = {"marker": "os^Dv<>p"[k % 8], "ms": 7 - 1.2 * (k % 4), "lw": 1.3,
                  "mfc": "none" if k % 2 else None, **kw}
            ax.plot([x for x, _ in pts], [y * scale for _, y in pts], label=label, **kw)

    panels = [(axes[0][0], "open fds"), (axes[0][1], "RSS (MiB)"), (axes[1][0], "threads"),
              (axes[1][1], "kernel RDMA resources (rdma res)"),
              (axes[2][0], "transition ms"), (axes[2][1], "cycle seconds")]
    for k, p in enumerate(procs):
        plot(axes[0][0], f"{p}.fds", p, k=k)
        plot(axes[0][1], f"{p}.rss_kb", p, 1 / 1024, k=k)
        plot(axes[1][0], f"{p}.threads", p, k=k)
    kind_colours = dict(zip(RES_KINDS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"),
                            strict=True))
    for j, dev in enumerate(devs):
        for i, k in enumerate(RES_KINDS):
            plot(axes[1][1], f"{dev}.{k}", f"{dev} {k}", k=4 * j + i, color=kind_colours[k],
                 ls=("-", "--", ":", "-.")[j % 4])
    plot(axes[2][0], "transition_ms", "transition", color="#24476b")
    secs = [(int(c.get("cycle", i)), float(c["seconds"])) for i, c in enumerate(sec.cycles, 1)
            if isinstance(c.get("seconds"), int | float)]
    if secs:
        axes[2][1].plot(*zip(*secs, strict=True), marker="o", ms=3.5, lw=1.3, color="#555555",
                        label="cycle")
    for ax, title in panels:
        ax.set_title(title, fontsize=10, loc="left")
        for n in failed:
            ax.axvspan(n - 0.4, n + 0.4, color="#d62728", alpha=0.18, lw=0)
        ax.grid(color="#dddddd", lw=0.5)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles = ax.get_legend_handles_labels()[0]
        if handles:
            ax.legend(fontsize=7, ncol=4, loc="upper center", framealpha=0.85)
        ax.margins(y=0.18)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + (hi - lo) * (0.12 + 0.12 * math.ceil(len(handles) / 4)))
    for ax in axes[2]:
        ax.set_xlabel("cycle", fontsize=9)
    done, nfail, _, _ = stress_trends(sec)
    spec = (sec.results.header or {}).get("spec") or {}
    fig.suptitle(f"stress: {done} cycles of {spec.get('transition', '?')} "
                 f"({spec.get('ordering') or 'its first ordering'}), policies "
                 f"{', '.join(map(str, spec.get('policies') or []))}: {nfail} failed"
                 + (f" (cycle{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))}, "
                    "shaded red)" if failed else ""),
                 fontsize=12, fontweight="bold", color="#c62828" if nfail else "#2e7d32")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=FIG_DPI)
    return out


def write_pictures(sec: Section, log: Log = print, only: Iterable[int] | None = None) -> int:
    """Draw the section's pictures (or, for tests, only the scenarios at the given positions);
    returns how many were written. A picture that fails to draw is a warning."""
    wanted = set(only) if only is not None else None
    n = 0
    if sec.is_stress:
        if sec.cycles:
            out = sec.out_dir / "stress.png"
            try:
                sec.pictures["stress"] = render_stress(sec, out)
                n += 1
            except Exception as exc:  # a picture that fails must not cost the report
                log(f"warning: could not draw {out}: {exc!r}")
        return n
    for pos, rec in enumerate(sec.scenarios, 1):
        if wanted is not None and pos not in wanted:
            continue
        res = rec.get("result")
        if not (isinstance(res, dict) and isinstance(res.get("transition"), dict)):
            continue  # a harness error: nothing to draw (the HTML says so)
        out = sec.out_dir / "timelines" / timeline_name(rec, pos)
        try:
            sec.pictures[str(pos)] = render_timeline(rec, sec.rows_by.get(pos, []), out, pos)
            n += 1
        except Exception as exc:  # a picture that fails must not cost the report
            log(f"warning: could not draw {out}: {exc!r}")
    return n


# --- HTML --------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em 2em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:2px solid #24476b;
padding-bottom:.2em;margin-top:2em} h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
th{background:#eef2f7;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.clean{background:#e3f1e4;color:#1b5e20;font-weight:bold}
.bad{background:#fbe3e1;color:#b71c1c;font-weight:bold}
.broken{background:#efe1f5;color:#4a148c;font-weight:bold}
.ok{color:#1b5e20;font-weight:bold} .failed{color:#b71c1c;font-weight:bold}
.warn{background:#fff4d6;border:1px solid #e0b000;padding:.5em .8em;margin:.6em 0}
.meta td:first-child{font-weight:bold;background:#f6f6f6} .muted{color:#777}
.gallery{display:flex;flex-wrap:wrap;gap:14px}
.gallery figure{margin:0;width:460px;border:1px solid #ddd;padding:6px;background:#fafafa}
.gallery img{width:100%;height:auto;border:1px solid #eee}
.gallery figcaption{font-size:.8em;margin-top:.3em}
code{font-size:.9em} td.findings{max-width:38em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(target: Path, html_dir: Path) -> str:
    rel = os.path.relpath(target.absolute(), html_dir.absolute()).replace(os.sep, "/")
    return _e(quote(rel))


def _meta_html(sec: Section) -> list[str]:
    h = sec.results.header or {}
    host = h.get("host") or {}
    spec = h.get("spec") or {}
    spec_txt = ", ".join(f"{k}={json.dumps(v) if isinstance(v, list | dict) else v}"
                         for k, v in spec.items()) if isinstance(spec, dict) else str(spec)
    rows = [("command", f"rxe-power {sec.results.command}"), ("started", h.get("started", "?")),
            ("host", f"{host.get('node', '?')}, kernel {host.get('kernel', '?')}"
                     + (", in the VM" if host.get("in_vm") else "")),
            ("spec", spec_txt), ("results file", str(sec.path))]
    out = ['<table class="meta">']
    out += [f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in rows]
    out.append("</table>")
    if sec.results.problem:
        out.append(f'<div class="warn">warning: {_e(sec.results.problem)}</div>')
    if not sec.usable:
        out.append('<div class="warn">no usable records in this file</div>')
    return out


def _matrix_html(sec: Section, html_dir: Path) -> list[str]:
    rows = sec.rows
    by = Counter(r.status.value for r in rows)
    out = [f"<p>{len(rows)} rows: " + ", ".join(
        f'<span class="{s.value}">{by.get(s.value, 0)} {s.value}</span>' for s in RowStatus)
        + "</p>"]
    s = sec.summary
    if s is None:
        out.append('<div class="warn">no summary record: the run is still going or stopped '
                   "early; these are the scenarios that finished</div>")
    elif s.get("interrupted"):
        out.append('<div class="warn">the matrix was interrupted</div>')
    heads = (["#", "scenario", "policy", "verdict"]
             + [h for h, _ in COLUMNS] + [f"peer {h}" for h, _ in PEER_COLUMNS]
             + ["peer saw", "recov ms", "status", "findings / veto", "timeline"])
    out.append("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr>")
    for pos, rec in enumerate(sec.scenarios, 1):
        rrows = sec.rows_by.get(pos, [])
        pic = sec.pictures.get(str(pos)) or _existing_picture(sec, rec, pos)
        extra = []
        if rec.get("not_restored"):
            extra.append(f"not restored: {rec['not_restored']}")
        for r in rrows:
            notes = [*r.findings, *([f"veto: {r.veto}"] if r.veto else []), *extra]
            cells = [str(rec.get("index", pos)), r.scenario, r.policy, r.verdict]
            tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
            tds += "".join(f'<td class="n">{_e(r.counts.get(k, 0))}</td>' for _, k in COLUMNS)
            tds += "".join(f'<td class="n">{_e(r.peer.get(k, 0))}</td>' for _, k in PEER_COLUMNS)
            rec_ms = f"{r.recovery_ms:.0f}" if r.recovery_ms is not None else "-"
            tds += (f"<td>{_e(r.peer_saw or '-')}</td><td class=\"n\">{_e(rec_ms)}</td>"
                    f'<td class="{_e(r.status.value)}">{_e(r.status.value)}</td>'
                    f'<td class="findings">{"<br>".join(_e(n) for n in notes) or "-"}</td>')
            link = (f'<a href="{_href(pic, html_dir)}">picture</a>' if pic else
                    '<span class="muted">-</span>')
            out.append(f"<tr>{tds}<td>{link}</td></tr>")
    out.append("</table>")
    out.append(f'<p class="muted">{_e(LEGEND)}</p>')
    gallery = []
    for pos, rec in enumerate(sec.scenarios, 1):
        pic = sec.pictures.get(str(pos)) or _existing_picture(sec, rec, pos)
        if not pic:
            continue
        rrows = sec.rows_by.get(pos, [])
        cap = ", ".join(f'{_e(r.policy)} <span class="{_e(r.status.value)}">'
                        f"{_e(r.status.value)}</span>" for r in rrows)
        finds = "; ".join(f for r in rrows for f in r.findings)
        gallery.append(f'<figure><a href="{_href(pic, html_dir)}"><img src="{_href(pic, html_dir)}"'
                       f' alt="{_e(_scenario_of(rec)["id"])}" loading="lazy"></a><figcaption>'
                       f'<b>{_e(rec.get("index", pos))} {_e(_scenario_of(rec)["id"])}</b>: {cap}'
                       + (f"<br>{_e(finds)}" if finds else "") + "</figcaption></figure>")
    if gallery:
        out += ["<h3>Timelines</h3>", '<div class="gallery">', *gallery, "</div>"]
    return out


def _existing_picture(sec: Section, rec: dict, pos: int) -> Path | None:
    p = sec.out_dir / "timelines" / timeline_name(rec, pos)
    return p if p.is_file() else None


def _stress_html(sec: Section, html_dir: Path) -> list[str]:
    done, failed, trends, from_summary = stress_trends(sec)
    out = [f'<p><span class="{"failed" if failed else "ok"}">{_e(done)} cycles, {_e(failed)} '
           f"failed</span>" + ("" if from_summary else
                               ' <span class="muted">(no summary record: trends computed from '
                               "the cycle records)</span>") + "</p>"]
    pic = sec.pictures.get("stress") or (sec.out_dir / "stress.png"
                                         if (sec.out_dir / "stress.png").is_file() else None)
    if pic:
        out.append(f'<p><a href="{_href(pic, html_dir)}"><img src="{_href(pic, html_dir)}" '
                   'alt="per-cycle figures" style="max-width:100%;width:1100px"></a></p>')
    out.append("<h3>Trends</h3><table><tr><th>figure</th><th>first</th><th>last</th>"
               "<th>max</th><th>slope / cycle</th></tr>")
    for k, v in trends.items():
        slope = v.get("slope_per_cycle", 0)
        cls = ' class="failed"' if isinstance(slope, int | float) and slope > 0 and \
            not k.startswith(("transition_ms",)) else ""
        out.append(f"<tr><td>{_e(k)}</td>" + "".join(
            f'<td class="n">{_e(v.get(x, "-"))}</td>' for x in ("first", "last", "max"))
            + f'<td class="n"{cls}>{_e(slope)}</td></tr>')
    out.append("</table><h3>Cycles</h3><table><tr><th>cycle</th><th>result</th>"
               "<th>verdict</th><th>transition ms</th><th>seconds</th><th>requests</th>"
               "<th>recovery ms</th><th>failures / notes</th></tr>")
    for c in sec.cycles:
        ok = bool(c.get("ok"))
        ms = c.get("transition_ms")
        rec_ms = ", ".join(f"{cl.get('client', '?')} {cl['recovery_ms']:.0f}"
                           for cl in c.get("clients") or []
                           if isinstance(cl.get("recovery_ms"), int | float))
        notes = [*(c.get("failures") or []), *(c.get("notes") or [])]
        out.append(f"<tr><td class=\"n\">{_e(c.get('cycle', '?'))}</td>"
                   f'<td class="{"ok" if ok else "failed"}">{"ok" if ok else "FAILED"}</td>'
                   f"<td>{_e(c.get('verdict', '-'))}</td>"
                   f'<td class="n">{_e(f"{ms:.0f}" if isinstance(ms, int | float) else "-")}</td>'
                   f'<td class="n">{_e(c.get("seconds", "-"))}</td>'
                   f"<td>{_e(cycle_clients(c))}</td><td>{_e(rec_ms or '-')}</td>"
                   f"<td class=\"findings\">{'<br>'.join(_e(n) for n in notes) or '-'}</td></tr>")
    out.append("</table>")
    return out


def summary_html(sections: list[Section], html_path: Path) -> str:
    html_dir = html_path.parent
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>rxe-power report</title>", f"<style>{CSS}</style></head><body>",
           "<h1>rxe-power report</h1>",
           f'<p class="muted">written {_e(now)} from {len(sections)} results file(s)</p>']
    if len(sections) > 1:
        out.append("<ul>")
        for i, sec in enumerate(sections, 1):
            out.append(f'<li><a href="#s{i}">{_e(sec.path)}</a>: {_e(_section_brief(sec))}</li>')
        out.append("</ul>")
    for i, sec in enumerate(sections, 1):
        out.append(f'<h2 id="s{i}">{_e(sec.results.command)}: {_e(sec.path)}</h2>')
        out += _meta_html(sec)
        if sec.usable:
            out += _stress_html(sec, html_dir) if sec.is_stress else _matrix_html(sec, html_dir)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _section_brief(sec: Section) -> str:
    if sec.is_stress:
        done, failed, _, _ = stress_trends(sec)
        return f"{done} cycles, {failed} failed"
    by = Counter(r.status.value for r in sec.rows)
    return f"{len(sec.rows)} rows, " + ", ".join(f"{by.get(s.value, 0)} {s.value}"
                                                  for s in RowStatus)


def write_summary(paths: list[Path], out: Path, log: Log = print,
                  dirs: list[Path] | None = None) -> Path:
    """The HTML summary of several results files at `out` (a .html path, or a folder: then
    out/summary.html). Pictures already drawn in each file's section folder (section_dirs:
    out's folder for one file) are linked; nothing is drawn here."""
    out = out / "summary.html" if out.is_dir() or not out.suffix else out
    paths = [Path(p) for p in paths]
    dirs = dirs or section_dirs(paths, out.parent)
    sections = [load_section(p, d, log) for p, d in zip(paths, dirs, strict=True)]
    return _write_html(sections, out)


def _write_html(sections: list[Section], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(summary_html(sections, out), encoding="utf-8")
    os.replace(tmp, out)
    return out


# --- the command -------------------------------------------------------------------------------


def write_report(path: Path, out_dir: Path, log: Log = print, pictures: bool = True) -> int:
    """Table, pictures and HTML for one results file, or for every results.jsonl beneath a
    folder (one section each). 0 when something was reported; 2 (logged) when there were no
    usable records at all. A missing file or a foreign schema raises RxePowerError (for a
    folder, such a file is skipped with a warning)."""
    path, out_dir = Path(path), Path(out_dir)
    if path.is_dir():
        files = sorted(path.rglob("results.jsonl"))
        if not files:
            raise RxePowerError(f"no results.jsonl under {path}",
                                "give a results.jsonl, or a folder holding rxe-power results")
        dirs = [out_dir / f.absolute().parent.relative_to(path.absolute().parent)
                for f in files]
        sections = []
        for f, d in zip(files, dirs, strict=True):
            try:
                sections.append(load_section(f, d, log))
            except RxePowerError as exc:
                log(f"warning: skipped {f}: {exc.problem}")
    else:
        sections = [load_section(path, out_dir, log)]
    usable = [s for s in sections if s.usable]
    for s in sections:
        if not s.usable:
            log(f"warning: {s.path} has no scenario or cycle records"
                + (f" ({s.results.problem})" if s.results.problem else ""))
    if not usable:
        log(f"rxe-power report: error: no usable records in {path}\n  fix: give a results.jsonl "
            "written by rxe-power matrix, run or stress that got past its first scenario or "
            "cycle")
        return NO_RECORDS_EXIT
    written: list[Path] = []
    for s in usable:
        lines = table_lines(s)
        log("\n".join(["", header_line(s), *lines]))
        s.out_dir.mkdir(parents=True, exist_ok=True)
        table = s.out_dir / "table.txt"
        table.write_text("\n".join(lines) + "\n")
        written.append(table)
    npics = 0
    if pictures:
        if load_matplotlib() is None:
            log(f"warning: no pictures: matplotlib is not installed; fix: {MATPLOTLIB_FIX}")
        else:
            npics = sum(write_pictures(s, log) for s in usable)
    html_path = _write_html(usable, out_dir / "summary.html")
    log("report: " + ", ".join(str(p) for p in written) + f", {html_path}, {npics} picture(s)"
        + (f" in {', '.join(sorted({str(_pic_dir(s)) for s in usable if s.pictures}))}"
           if npics else ""))
    return 0


def _pic_dir(sec: Section) -> Path:
    return sec.out_dir if sec.is_stress else sec.out_dir / "timelines"

"""What every picture shares: fixed colours, the figure, matplotlib loaded lazily, names.

Pictures need matplotlib (imported lazily, Agg canvas, no pyplot); without it the table
and HTML are still written.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

from harness.core import settings
from harness.core.files import atomic_write
from harness.run.records import ScenarioRecord

MATPLOTLIB_FIX = "pip install matplotlib (or .venv/bin/pip install matplotlib)"

# Fixed colours: the same in every picture and in the HTML.
OUTCOME_COLOURS = {
    "completed-ok": "#2ca02c",
    "replayed-ok": "#17becf",
    "rejected-at-post": "#9467bd",
    "completed-error": "#d62728",
    "flushed": "#ff7f0e",
    "failed-to-app": "#8c564b",
    "completed-late": "#bcbd22",  # waited across the sleep, then succeeded
    "abandoned": "#7f7f7f",  # posted, failed by the client when the device went
    "killed-in-flight": "#393b79",  # in flight when the client was killed
    "lost": "#000000",  # (a kernel client's stuck I/O is drawn as lost: never completed)
}
UNACCOUNTED_COLOUR = "#e377c2"  # no outcome at all: a harness bug (the row is broken)
STATUS_COLOURS = {"clean": "#2e7d32", "bad": "#c62828", "missed": "#b26a00",
                  "broken": "#6a1b9a"}
OP_MARKERS = {"SEND": "o", "WRITE": "s", "READ": "^", "FETCH_ADD": "D"}
PORT_COLOURS = {"ACTIVE": "#2ca02c", "DOWN": "#ff7f0e", "absent": "#d62728"}
STEP_COLOURS = ("#dbe9f6", "#ececec")
STEP_FAILED_COLOUR = "#f4c7c3"

FIG_W_IN, FIG_DPI = 14.0, 100
AX_LEFT, AX_RIGHT = 0.115, 0.985
CHAR_PX = 5.6  # average width of a character at the label font size (DejaVu Sans 7.5 pt)
LABEL_FONT = 7.5
NOTE_BOX = {"boxstyle": "square,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}


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


def figure(w_in: float, h_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w_in, h_in), dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    return fig


def safe_name_part(part: object) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(part)).strip("_") or "_"


def timeline_name(rec: ScenarioRecord, position: int) -> str:
    sc = rec.scenario
    idx = rec.index if rec.index is not None else position
    return (f"{idx:03d}-{safe_name_part(sc.transition)}-{safe_name_part(sc.ordering)}-"
            f"{safe_name_part('+'.join(sc.policies) or 'none')}-{safe_name_part(sc.mix)}.png")


def ms_from(t_ns: int | float | None, t0: int) -> float | None:
    return None if t_ns is None else (t_ns - t0) / 1e6


def short_who(source: str) -> str:
    who = re.sub(r"^client\s+", "", source)
    return re.sub(r"\s*\(pid \d+\)", "", who)


def trim(text: str, limit: int = 44) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save_png(fig: Any, out: Path) -> Path:
    """The figure as a PNG at `out`, written whole (atomic_write: never through a symlink)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    return atomic_write(out, buf.getvalue())

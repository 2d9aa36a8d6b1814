"""Drawing a section's pictures: a timeline per matrix scenario, or the stress plot.

    n = write_pictures(section, out)      # how many PNGs were written (needs matplotlib)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from harness.core.printer import NULL, Printer
from harness.report.drawing import timeline_name
from harness.report.section import Section
from harness.report.stress_plot import render_stress
from harness.report.timeline import render_timeline


def write_pictures(sec: Section, out: Printer = NULL, only: Iterable[int] | None = None) -> int:
    """Draw the section's pictures (or, for tests, only the scenarios at the given positions);
    returns how many were written. A picture that fails to draw is a warning."""
    wanted = set(only) if only is not None else None
    n = 0
    if sec.is_stress:
        if sec.cycles:
            png = sec.out_dir / "stress.png"
            try:
                sec.pictures["stress"] = render_stress(sec, png)
                n += 1
            except Exception as exc:  # a picture that fails must not cost the report
                out(f"warning: could not draw {png}: {exc!r}")
        return n
    for pos, rec in enumerate(sec.scenarios, 1):
        if wanted is not None and pos not in wanted:
            continue
        if rec.result is None:
            continue  # a harness error: nothing to draw (the HTML says so)
        png = sec.out_dir / "timelines" / timeline_name(rec, pos)
        try:
            sec.pictures[str(pos)] = render_timeline(rec, sec.rows_by.get(pos, []), png, pos)
            n += 1
        except Exception as exc:  # a picture that fails must not cost the report
            out(f"warning: could not draw {png}: {exc!r}")
    return n



def picture_dir(sec: Section) -> Path:
    return sec.out_dir if sec.is_stress else sec.out_dir / "timelines"


def existing_picture(sec: Section, pos: int) -> Path | None:
    """A scenario's timeline drawn by an earlier report, if it is there."""
    p = sec.out_dir / "timelines" / timeline_name(sec.scenarios[pos - 1], pos)
    return p if p.is_file() else None

"""The canvas of a scenario's timeline picture: the axes with lanes stacked top down in data
units, and the layout of labels beside their ticks (Label). What each lane draws is in
harness.report.timeline_lanes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.report.drawing import CHAR_PX, LABEL_FONT


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

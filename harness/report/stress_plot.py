"""The stress run's picture: every per-cycle figure against the cycle number.

fds, RSS and threads per process, the kernel's RDMA resources per device, the
transition's ms and the cycle's seconds; failed cycles shaded red.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.report.drawing import FIG_W_IN, figure, save_png
from harness.report.section import Section
from harness.report.tables import cycle_number, stress_series, stress_trends
from harness.system.rdma_res import RES_KINDS


def render_stress(sec: Section, out: Path) -> Path:
    """Per-cycle figures against the cycle number; failed cycles shaded red."""
    from matplotlib.ticker import MaxNLocator

    series = stress_series(sec.cycles)
    failed = [cycle_number(c, i) for i, c in enumerate(sec.cycles, 1) if not c.ok]
    fig = figure(FIG_W_IN, 9.5)
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
        for i, kind in enumerate(RES_KINDS):
            plot(axes[1][1], f"{dev}.{kind}", f"{dev} {kind}", k=4 * j + i,
                 color=kind_colours[kind], ls=("-", "--", ":", "-.")[j % 4])
    plot(axes[2][0], "transition_ms", "transition", color="#24476b")
    secs = [(cycle_number(c, i), c.seconds) for i, c in enumerate(sec.cycles, 1)
            if c.seconds is not None]
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
    return save_png(fig, out)


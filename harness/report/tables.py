"""The report's text tables: a matrix's rows, a stress run's cycles and trends.

    lines = table_lines(section)       # what table.txt holds and the report prints
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from harness.report.section import Section
from harness.run.matrix import LEGEND, render_table
from harness.run.records import CycleClient, CycleRecord
from harness.run.stress_checks import summarize
from harness.run.stress_findings import StepTracker, rss_growth
from harness.run.stress_text import render_summary
from harness.system.rdma_res import RES_KINDS


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


def _num(v: float | None, fmt: str) -> str:
    return format(v, fmt) if v is not None else "-"


def cycle_clients(clients: list[CycleClient]) -> str:
    total: Counter[str] = Counter()
    crashed = []
    for cl in clients:
        total.update(cl.counts)
        if cl.crashed:
            crashed.append(cl.client)
    return outcome_short(dict(total)) + (f"; crashed: {', '.join(crashed)}" if crashed else "")


def cycle_number(c: CycleRecord, position: int) -> int:
    return c.cycle if c.cycle is not None else position


def stress_series(cycles: list[CycleRecord]) -> dict[str, list[tuple[int, float]]]:
    """Every per-cycle figure as (cycle, value) points, named as harness.run.stress names
    them."""
    series: dict[str, list[tuple[int, float]]] = {}
    for i, c in enumerate(cycles, 1):
        n = cycle_number(c, i)
        values: list[tuple[str, float | None]] = [
            (f"{name}.{k}", v) for name, u in c.usage.items() for k, v in u.items()]
        values += [(f"{dev}.{k}", c.rdma_res[dev].get(k, 0))
                   for dev in sorted(c.rdma_res) for k in RES_KINDS]
        values.append(("transition_ms", c.transition_ms))
        for key, v in values:
            if v is not None:
                series.setdefault(key, []).append((n, float(v)))
    return series


def stress_findings(sec: Section) -> dict[str, Any] | None:
    """The run's findings: the summary's, or (no summary, but cycles that record their
    processes' pids: the run is still going or was stopped) made again from the cycles,
    without the holders' names only the run itself knew. None for files from before."""
    s = sec.summary
    if s and isinstance(s.get("findings"), list):
        return s
    if not sec.cycles or not all(u.get("pid") for c in sec.cycles for u in c.usage.values()):
        return None
    steps = StepTracker()
    rss: dict[str, list[tuple[int, float]]] = {}
    for i, c in enumerate(sec.cycles, 1):
        n = cycle_number(c, i)
        for dev in sorted(c.rdma_res):
            steps.observe(n, f"{dev} rdma res", {k: c.rdma_res[dev].get(k, 0)
                                                 for k in RES_KINDS})
        for name, u in c.usage.items():
            rss.setdefault(f"{name} (pid {int(u['pid'])})", []).append((n, u["rss_kb"]))
    growth, not_judged = rss_growth(rss)
    return {"findings": [x.describe() for x in steps.steps]
            + [g.describe() for g in growth if g.over_bound], "rss_not_judged": not_judged}


def stress_trends(sec: Section) -> tuple[int, int, dict[str, dict[str, float]], bool]:
    """(cycles, failed, trends, from_summary)."""
    s = sec.summary
    if s and isinstance(s.get("trends"), dict):
        return int(s.get("cycles", len(sec.cycles))), int(s.get("failed", 0)), s["trends"], True
    series = stress_series(sec.cycles)
    failed = sum(1 for c in sec.cycles if not c.ok)
    return len(sec.cycles), failed, summarize({k: [v for _, v in pts]
                                               for k, pts in series.items()}), False


def stress_lines(sec: Section) -> list[str]:
    head = (f"{'cycle':>5}  {'result':<7}{'verdict':<11}{'trans ms':>9}{'secs':>7}  "
            "requests / failures / notes")
    out = [head, "-" * len(head)]
    for c in sec.cycles:
        notes = [*c.failures, *c.notes]
        ms = c.transition_ms
        out.append(f"{c.cycle if c.cycle is not None else '?':>5}  "
                   f"{'ok' if c.ok else 'FAILED':<7}{c.verdict or '-'!s:<11}"
                   f"{f'{ms:.0f}' if ms is not None else '-':>9}"
                   f"{_num(c.seconds, '.1f'):>7}  {cycle_clients(c.clients)}"
                   + (f" | {'; '.join(notes)}" if notes else ""))
    done, failed, trends, from_summary = stress_trends(sec)
    out.append("")
    bad = [c for c in sec.cycles if not c.ok]
    if bad:
        out.append("failed cycles:")
        out += [f"  cycle {c.cycle if c.cycle is not None else '?'}: {'; '.join(c.failures)}"
                for c in bad]
    summary = render_summary(done, failed, trends, sec.path.parent, stress_findings(sec))
    summary[0] = f"{done} cycles, {failed} failed; results in {sec.path}" + (
        "" if from_summary else " (no summary record: the run is still going or stopped "
        "early; trends computed from the cycle records)")
    if sec.summary and sec.summary.get("interrupted"):
        summary[0] += " (interrupted)"
    return [*out, *summary]

"""One table of several matrix results files: the shards of one run, or runs of other days.

    merged = merge_matrix(sections)        # every row once, each with the file that ran it
    merged_lines(merged)                   # the files and their shards' times, the table
    merged_junit(merged)                   # one JUnit XML: a testsuite per file

A case (scenario id and policy) found in several files keeps its worst outcome (RowStatus
order: clean < bad < missed < broken; the first file's on a tie) and says so in its
findings and in the line under the table. Rows of one run (the same command and spec,
whether whole or in shards) come in the whole run's order; a run given in shards says
which shards and which of the whole run's scenarios are not in the files (a shard not
given, or one that stopped early).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass, field, replace

from junitparser import Error, Failure, JUnitXml, TestCase, TestSuite

from harness.core.shards import ShardPlan
from harness.core.xmltext import xml_safe
from harness.report.section import Section
from harness.run.matrix import render_table
from harness.run.rows import Row
from harness.workload.findings import RowStatus

SEVERITY = {s: n for n, s in enumerate(RowStatus)}  # the declared order is the severity


@dataclass
class Source:
    """One results file of the merge: its number (1-based, in the order given), what it is
    a shard of, and how long it ran."""

    number: int
    section: Section
    shard: ShardPlan | None = None
    shard_problem: str = ""  # the header's shard record, unreadable

    @property
    def shard_label(self) -> str:
        return str(self.shard.shard) if self.shard else "-"

    @property
    def run_key(self) -> str:
        """What makes files one run: the command and its spec (a shard's command line
        differs only in --shard, which is not in the spec)."""
        h = self.section.results.header or {}
        return json.dumps([h.get("command"), h.get("spec")], sort_keys=True, default=str)

    @property
    def command_line(self) -> str:
        """The command that wrote the file, as its provenance recorded it ("" if not)."""
        prov = self.section.results.provenance.provenance
        return prov.command_line if prov is not None else ""

    @property
    def scenario_seconds(self) -> float:
        return sum(r.seconds or 0.0 for r in self.section.scenarios)

    @property
    def wall_s(self) -> float | None:
        """From the header's start to the summary's end (None: either not recorded)."""
        start = (self.section.results.header or {}).get("started")
        end = (self.section.summary or {}).get("finished")
        try:
            return (dt.datetime.fromisoformat(str(end))
                    - dt.datetime.fromisoformat(str(start))).total_seconds()
        except (TypeError, ValueError):
            return None


@dataclass
class MergedRow:
    row: Row
    source: Source
    index: int  # the scenario's place in its run (its record's index)
    record: int  # the scenario's place in its file (1-based): its picture
    others: list[tuple[Source, RowStatus]] = field(default_factory=list)  # not kept

    @property
    def key(self) -> tuple[str, str]:
        return (self.row.scenario, self.row.policy)


@dataclass
class Merged:
    sources: list[Source]
    rows: list[MergedRow]
    gaps: list[str]  # shards not given, scenarios of a sharded run with no record

    @property
    def duplicates(self) -> list[MergedRow]:
        return [m for m in self.rows if m.others]


def sources_of(sections: list[Section]) -> list[Source]:
    out = []
    for n, sec in enumerate(sections, 1):
        src = Source(n, sec)
        try:
            src.shard = sec.results.shard
        except ValueError as exc:
            src.shard_problem = str(exc)
        out.append(src)
    return out


def merge_matrix(sections: list[Section]) -> Merged:
    """The rows of every matrix section, each case once (its worst outcome kept)."""
    sources = [s for s in sources_of(sections) if not s.section.is_stress]
    runs = list(dict.fromkeys(s.run_key for s in sources))
    kept: dict[tuple[str, str], MergedRow] = {}
    for src in sources:
        for pos, rec in enumerate(src.section.scenarios, 1):
            for row in src.section.rows_by.get(pos, []):
                new = MergedRow(row, src, rec.index if rec.index is not None else pos, pos)
                old = kept.get(new.key)
                if old is None:
                    kept[new.key] = new
                elif SEVERITY[row.status] > SEVERITY[old.row.status]:
                    new.others = [*old.others, (old.source, old.row.status)]
                    kept[new.key] = new
                else:
                    old.others.append((src, row.status))
    rows = sorted(kept.values(), key=lambda m: (runs.index(m.source.run_key), m.index,
                                                m.source.number, m.record))
    return Merged(sources, rows, [g for run in runs for g in _gaps(
        [s for s in sources if s.run_key == run])])


def _gaps(sources: list[Source]) -> list[str]:
    """What a run given in shards lacks: shards not given, planned scenarios without a
    record (the shard stopped early)."""
    plans = [s.shard for s in sources if s.shard is not None]
    if not plans:
        return []
    out = []
    totals = sorted({p.shard.total for p in plans})
    if len(totals) > 1:
        out.append(f"the shards of one run were split differently (into {totals} shards)")
    given = {p.shard.index for p in plans}
    total = totals[-1]
    missing = [i for i in range(1, total + 1) if i not in given]
    if missing and not any(s.shard is None for s in sources):
        planned = {pos for p in plans for pos in p.positions}
        out.append(f"shard(s) {', '.join(f'{i}/{total}' for i in missing)} not given: "
                   f"{plans[0].whole - len(planned)} of the run's {plans[0].whole} "
                   "scenarios are not in this report")
    ran = {rec.index for s in sources for rec in s.section.scenarios}
    for src in sources:
        if src.shard is None:
            continue
        lost = [f"#{pos} {item}" for pos, item in zip(src.shard.positions, src.shard.items,
                                                      strict=True) if pos not in ran]
        if lost:
            out.append(f"shard {src.shard_label} (file {src.number}) planned {len(lost)} "
                       f"scenario(s) it has no record of (it stopped early): "
                       + ", ".join(lost))
    return out


def kept_row(m: MergedRow) -> Row:
    """The row as the merged table shows it: its duplicates named in its findings."""
    if not m.others:
        return m.row
    also = "; ".join(f"file {s.number} (shard {s.shard_label}): {st.value}"
                     for s, st in m.others)
    return replace(m.row, findings=[*m.row.findings,
                                    f"duplicate: also in {also}; the worst kept"])


def files_lines(merged: Merged) -> list[str]:
    """One line per file: its shard, rows, and how long it took (its scenarios' seconds,
    and from start to finish), then the balance of the shards."""
    out = [f"merged from {len(merged.sources)} results files:"]
    for s in merged.sources:
        wall = f", {s.wall_s:.0f} s start to finish" if s.wall_s is not None else ""
        exp = s.shard.expected_s if s.shard else None
        out.append(f"  file {s.number}: shard {s.shard_label}, {len(s.section.scenarios)} "
                   f"scenarios, {len(s.section.rows)} rows, {s.scenario_seconds:.1f} s of "
                   f"scenarios{f' (expected {exp:.0f} s)' if exp is not None else ''}{wall}: "
                   f"{s.section.path}" + (f" (its shard record is unreadable: "
                                          f"{s.shard_problem})" if s.shard_problem else ""))
        if s.command_line:
            out.append(f"          {s.command_line}")
    times = [s.scenario_seconds for s in merged.sources if s.shard is not None]
    if len(times) > 1 and sum(times, 0.0) > 0:
        out.append(f"  balance of the shards: {' / '.join(f'{t:.1f}' for t in times)} s of "
                   f"scenarios, the longest {max(times) / (sum(times) / len(times)):.2f} x "
                   "the mean")
    return out


def merged_lines(merged: Merged) -> list[str]:
    """The merged table: the files, what is missing, the rows (with the file and shard that
    ran each), the duplicates."""
    table = render_table([kept_row(m) for m in merged.rows])
    width = 12
    head = [f"{'file':<5}{'shard':<7}{table[0]}", "-" * (width + len(table[0]))]
    body = [f"{m.source.number:<5}{m.source.shard_label:<7}{line}"
            for m, line in zip(merged.rows, table[2:-1], strict=True)]
    dup = merged.duplicates
    notes = ([f"{len(dup)} case(s) in several files (the same scenario and policy): the "
              "worst outcome kept, the others named in its findings"] if dup else [])
    return [*files_lines(merged), *[f"warning: {g}" for g in merged.gaps], "", *head, *body,
            table[-1], *notes]


def merged_head(lines: list[str]) -> list[str]:
    """The provenance lines at the top of a merged table: the first file's without its
    command line (each file's is under its own line, files_lines)."""
    return [x for x in lines if not x.startswith("  command: ")]


def merged_junit(merged: Merged) -> bytes:
    """One JUnit XML: a testsuite per results file holding the cases it ran (a duplicate in
    the file whose outcome was kept); bad is a failure, missed and broken are errors."""
    seconds = {(s.number, r.scenario.id): r.seconds or 0.0
               for s in merged.sources for r in s.section.scenarios}
    xml = JUnitXml("rxe-power report (merged)")
    x = xml_safe
    for src in merged.sources:
        suite = TestSuite(x(f"rxe-power {src.section.results.command} file {src.number} "
                            f"shard {src.shard_label}"))
        suite.add_property("results", x(str(src.section.path)))
        suite.add_property("shard", src.shard_label)
        for m in (m for m in merged.rows if m.source is src):
            r = kept_row(m)
            case = TestCase(x(f"{r.policy}[{r.mix}]"), x(f"rxe_power.{r.transition}."
                                                          f"{r.ordering}"),
                            seconds.get((src.number, r.scenario), 0.0))
            if r.status is not RowStatus.CLEAN:
                kind = Failure if r.status is RowStatus.BAD else Error
                res = kind(x("; ".join(r.findings)), r.status.value)
                res.text = x(f"{r.scenario}: verdict {r.verdict}; outcomes {r.counts}; "
                             f"peer {r.peer}")
                case.result = [res]
            case.system_out = x(f"file {src.number} shard {src.shard_label}: "
                                f"{src.section.path}")
            suite.add_testcase(case)
        suite.update_statistics()  # type: ignore[no-untyped-call]
        xml.add_testsuite(suite)
    xml.update_statistics()  # type: ignore[no-untyped-call]
    buf = io.BytesIO()
    xml.write(buf, pretty=True)
    return buf.getvalue()


def shard_note(sec: Section) -> list[str]:
    """For one file reported alone that is a shard: what the rest of its run is."""
    try:
        plan = sec.results.shard
    except ValueError as exc:
        return [f"its shard record is unreadable: {exc}"]
    if plan is None:
        return []
    what = "cycles" if sec.is_stress else "scenarios"
    return [f"shard {plan.shard} of a run of {plan.whole} {what}: {len(plan.items)} of "
            "them here; report it with the other shards (rxe-power report DIR1 DIR2 ...) "
            "for the whole run"]

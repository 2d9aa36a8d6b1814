"""Reading results files for the report: one *section* per file, its records typed.

    sec = load_section(Path("results/matrix-X/results.jsonl"), out_dir)
    sec.scenarios, sec.rows, sec.cycles, sec.summary
    provenance_lines(sec)                 # what made it (or that it is not recorded)
    check_provenance(sections, allow_mixed)   # several files of different provenance
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import RxePowerError
from harness.core.printer import NULL, Printer
from harness.run.lanes.userspace import rows_of
from harness.run.matrix import error_rows
from harness.run.records import RESULT_PARSE_ERRORS, CycleRecord, ScenarioRecord
from harness.run.resultsfile import RecordKind, Results, read_results
from harness.run.rows import Row
from harness.system.provenance_text import header_differences, mixed_lines
from harness.workload.findings import RowStatus

NO_RECORDS_EXIT = 2


@dataclass
class Section:
    """One results file, read, with where its table and pictures go."""

    path: Path
    out_dir: Path
    results: Results
    scenarios: list[ScenarioRecord] = field(default_factory=list)
    cycles: list[CycleRecord] = field(default_factory=list)
    rows_by: dict[int, list[Row]] = field(default_factory=dict)  # scenario position -> rows
    pictures: dict[str, Path] = field(default_factory=dict)  # scenario position or "stress"

    @property
    def rows(self) -> list[Row]:
        return [r for pos in sorted(self.rows_by) for r in self.rows_by[pos]]

    @property
    def summary(self) -> dict[str, Any] | None:
        return self.results.summary

    @property
    def is_stress(self) -> bool:
        return bool(self.cycles) or self.results.command == "stress"

    @property
    def usable(self) -> bool:
        return bool(self.scenarios or self.cycles)


def load_section(path: Path, out_dir: Path, out: Printer = NULL) -> Section:
    """Read one results file (errors for a missing file or a foreign schema propagate); a bad
    line is logged as a warning and the good records before it are used."""
    return section_of(read_results(path), out_dir, out)


def section_of(results: Results, out_dir: Path, out: Printer = NULL) -> Section:
    """The section of results already read. A record whose fields have the wrong types is
    logged as a warning and skipped; a result of the wrong shape falls back to the rows
    stored with it (scenario_rows)."""
    if results.problem:
        out(f"warning: {results.problem}")
    sec = Section(results.path, out_dir, results)
    for n, rec in enumerate(results.records, 1):
        try:
            if rec["kind"] == RecordKind.SCENARIO:
                sec.scenarios.append(ScenarioRecord.from_json(rec))
            elif rec["kind"] == RecordKind.CYCLE:
                sec.cycles.append(CycleRecord.from_json(rec))
        except RESULT_PARSE_ERRORS as exc:
            out(f"warning: {results.path}: {rec['kind']} record {n} is unreadable ({exc!r}); "
                "skipped")
    sec.rows_by = {pos: scenario_rows(rec) for pos, rec in enumerate(sec.scenarios, 1)}
    return sec


def scenario_rows(rec: ScenarioRecord) -> list[Row]:
    """A scenario record's rows: from its result (the current rules), else the rows it stored
    (a harness error), else one broken row per policy."""
    sc = rec.scenario
    why = rec.result_problem
    if rec.result is not None and not rec.row_stored:  # outside program, kernel client
        try:
            return rows_of(sc, rec.result)
        except RESULT_PARSE_ERRORS as exc:  # a result of the wrong shape: its stored rows
            why = f"its result is unreadable ({exc!r})"
    if rec.rows:
        try:
            return [Row.from_json(r) for r in rec.rows]
        except (KeyError, TypeError, ValueError) as exc:
            why = why or f"its rows are unreadable ({exc!r})"
    rows = error_rows(sc, rec.error or why or "no result recorded")
    return rows or [Row(sc.id, sc.transition, sc.ordering, "?", sc.mix, "error",
                        findings=[f"harness error: {rec.error or why}"],
                        status=RowStatus.BROKEN)]


def section_dirs(paths: list[Path], out_dir: Path) -> list[Path]:
    """Where each results file's table and pictures go: out_dir itself for one file; for
    several, out_dir/<their folders relative to the folder above their common ancestor>,
    or, when out_dir is that common folder and holds none of them itself (the shards of a
    `--jobs` run, reported into the folder that holds them), each file's own folder."""
    if len(paths) == 1:
        return [out_dir]
    parents = [p.absolute().parent for p in paths]
    common = Path(os.path.commonpath(parents))
    if common == out_dir.absolute() and common not in parents \
            and len(set(parents)) == len(parents):
        return parents
    base = common.parent
    dirs = [out_dir / par.relative_to(base) for par in parents]
    dup = Counter(dirs)
    return [d / p.stem if dup[d] > 1 else d for d, p in zip(dirs, paths, strict=True)]


def provenance_lines(sec: Section) -> list[str]:
    """What made this results file (harness.system.provenance.describe), or the line that
    says it was not recorded or is unreadable."""
    return sec.results.provenance.lines()


def provenance_mix(sections: list[Section]) -> list[str]:
    """The lines saying how the provenances of `sections` differ (empty: they agree, or
    there is one section)."""
    diff = header_differences([s.results.provenance for s in sections])
    return mixed_lines([str(s.path) for s in sections], diff) if diff else []


def check_provenance(sections: list[Section], allow_mixed: bool) -> list[str]:
    """Refuse to put results of different provenance in one report unless `allow_mixed`;
    returns the lines saying how they differ (empty: they agree)."""
    mix = provenance_mix(sections)
    if mix and not allow_mixed:
        raise RxePowerError(
            "these results files were made by different setups, and one report would "
            "mix them: " + " ".join(x.strip() for x in mix),
            "report them one at a time, or pass --allow-mixed-provenance (the table and "
            "the HTML then say what differs)")
    return mix

"""Shards of a matrix or a stress run: which scenarios or cycles `--shard I/N` runs.

    plan = matrix_plan(spec, shard)       # None without --shard; SettingError for a shard
                                          # with nothing to run (before any VM boots)
    plan = stress_plan(spec, shard)       # its contiguous share of the cycles
    seconds = scenario_seconds(files)     # what real runs took, per scenario id
    record_durations(paths, SCENARIO_DURATIONS, command)   # into the committed file

The split itself is harness.core.shards (time-balanced, from SCENARIO_DURATIONS: the
seconds real runs took per scenario id, committed next to this module). The plan heads the
shard's results file (its header's `shard`), so a report of the shards can tell which
shard ran which row and whether any scenario of the whole run is missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from harness.core.printer import NULL, Printer
from harness.core.shards import (
    PlanUnit,
    Shard,
    ShardPlan,
    cycle_plan,
    plan_shard,
    read_durations,
    write_durations,
)
from harness.run.matrix import MatrixSpec
from harness.run.resultsfile import read_results
from harness.run.session import RESULTS_FILE
from harness.run.stress import StressSpec

# the seconds each scenario of a real run took (results.jsonl scenario records' `seconds`),
# by scenario id; `rxe-power report RESULTS --record-durations` adds to it
SCENARIO_DURATIONS = Path(__file__).with_name("scenario_durations.json")
SCENARIO_DURATIONS_ABOUT = ("seconds per matrix scenario (id) from real runs: the scenario "
                            "records' `seconds` of results.jsonl; `rxe-power run/matrix "
                            "--shard I/N` balances its shards by them (harness.core.shards)")


def matrix_plan(spec: MatrixSpec, shard: Shard | None,
                durations: Path = SCENARIO_DURATIONS) -> ShardPlan | None:
    """Shard `shard` of the matrix `spec` (None: no shard, the whole matrix)."""
    if shard is None:
        return None
    ids = [sc.id for sc in spec.scenarios()]
    return plan_shard(ids, read_durations(durations), shard, "scenarios",
                      durations_from=durations.name)


def stress_plan(spec: StressSpec, shard: Shard | None) -> ShardPlan | None:
    """Shard `shard` of the stress run `spec`: its contiguous share of the cycles."""
    return None if shard is None else cycle_plan(spec.cycles, shard)


def describe_plan(plan: ShardPlan, what: str) -> str:
    """One line: this shard's share and the balance of the split."""
    head = f"shard {plan.shard}: {len(plan.items)} of the run's {plan.whole} {what}"
    loads = ", ".join(f"{x:.0f}" for x in plan.loads)
    if plan.unit is PlanUnit.CYCLES:
        return f"{head} (cycles {plan.positions[0]}-{plan.positions[-1]}; the shards run {loads})"
    if plan.expected_s is None:
        return (f"{head} (none of them has a recorded time in {plan.durations_from}: split "
                "by count)")
    return (f"{head} (expected {plan.expected_s:.0f} s; the {plan.shard.total} shards expect "
            f"{loads} s; {plan.timed} of the {plan.whole} timed in {plan.durations_from}, "
            "the others count the median)")


def scenario_seconds(paths: Iterable[Path]) -> dict[str, float]:
    """Each scenario id's seconds in the results files `paths` (the last file's value for an
    id recorded twice); scenarios without a recorded time are left out."""
    out: dict[str, float] = {}
    for p in paths:
        for rec in read_results(p).scenarios():
            if rec.seconds is not None and rec.scenario.id and not rec.error:
                out[rec.scenario.id] = rec.seconds
    return out


def results_files(paths: Iterable[Path]) -> list[Path]:
    """The results files among `paths` and under the folders among them."""
    return [f for p in paths for f in (sorted(p.rglob(RESULTS_FILE)) if p.is_dir() else [p])]


def record_durations(paths: list[Path], dest: Path, command: str,
                     out: Printer = NULL) -> dict[str, float]:
    """Add the scenario seconds of the results files in `paths` (files or folders) to the
    durations file `dest`; the command that recorded them, the date and the files' commits
    are kept in its sources."""
    files = results_files(paths)
    seconds = scenario_seconds(files)
    if not seconds:
        out(f"report: no scenario with a recorded time in {len(files)} file(s): {dest} unchanged")
        return seconds
    commits = sorted({c for f in files if (c := _commit(f))})
    write_durations(dest, seconds, SCENARIO_DURATIONS_ABOUT,
                    f"{time.strftime('%Y-%m-%d')}: {command} ({len(seconds)} scenarios of "
                    f"{len(files)} file(s), commit {', '.join(commits) or 'not recorded'})")
    out(f"report: the seconds of {len(seconds)} scenarios added to {dest}")
    return seconds


def _commit(path: Path) -> str:
    prov = read_results(path).provenance.provenance
    return (prov.tree.commit or "")[:12] if prov is not None else ""

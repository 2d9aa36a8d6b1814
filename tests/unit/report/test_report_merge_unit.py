"""rxe-power report of the shards of one run (harness/report/merge.py, merge_stress.py,
merged_html.py), on recorded results: real matrix runs cut into shards by the project's own
split (each shard file as a sharded run writes it: the header's shard plan, the scenarios
numbered as in the whole run). Merged, the shards give the rows of the unsharded run, each
once, in its order, and say which shard ran each and how long each shard took; a case in
two files keeps its worst outcome and says so; a shard not given or stopped early is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from junitparser import Error, Failure, JUnitXml

from harness import report
from harness.core.printer import NULL, RecordingPrinter
from harness.core.shards import Shard, cycle_plan
from harness.report.merge import merge_matrix
from harness.report.section import load_section, section_dirs
from harness.run.rows import RowStatus
from tests.helpers.shard_results import records, shard_files, write

DATA = Path(__file__).parents[2] / "data"
RECORDED = (DATA / "matrix-standby-linkflap.jsonl", DATA / "nvme-matrix.jsonl")
STRESS = DATA / "stress-v1-405a4e6.jsonl"




def rows_json(rows: list[Any]) -> list[dict[str, Any]]:
    return [r.to_json() for r in rows]


@pytest.mark.parametrize("whole", RECORDED, ids=lambda p: p.name)
@pytest.mark.parametrize("total", [2, 3])
def test_the_shards_merged_are_the_unsharded_run(tmp_path: Path, whole: Path,
                                                 total: int) -> None:
    """`run --shard 1/N` .. `N/N`, then `report` of them all: the same rows as the whole run
    (same scenarios and policies, none twice, in the whole run's order)."""
    files = shard_files(whole, total, tmp_path / "runs")
    unsharded = load_section(whole, tmp_path / "w", NULL).rows
    assert report.write_report(files, tmp_path / "out", out=NULL, pictures=False) == 0
    merged = merge_matrix([load_section(f, tmp_path / "s", NULL) for f in files])
    assert rows_json([m.row for m in merged.rows]) == rows_json(unsharded)
    assert not merged.duplicates and not merged.gaps
    keys = [m.key for m in merged.rows]
    assert len(keys) == len(set(keys))
    # which shard ran each row: the one whose plan holds its scenario
    for m in merged.rows:
        assert m.source.shard is not None and m.row.scenario in m.source.shard.items
    table = (tmp_path / "out" / "table.txt").read_text()
    assert f"merged from {total} results files:" in table
    for i, f in enumerate(files, 1):
        n = sum(r["kind"] == "scenario" for r in records(f))
        assert f"file {i}: shard {i}/{total}, {n} scenarios" in table and str(f) in table
    assert "balance of the shards:" in table and "warning" not in table
    assert table.count("\n") > len(unsharded)
    junit = JUnitXml.fromfile(str(tmp_path / "out" / "junit.xml"))
    cases = [(suite.name, case) for suite in junit for case in suite]
    assert len(cases) == len(unsharded)
    bad = sum(r.status is RowStatus.BAD for r in unsharded)
    errors = sum(r.status.fails_run for r in unsharded)
    assert sum(isinstance(res, Failure) for _, c in cases for res in c.result) == bad
    assert sum(isinstance(res, Error) for _, c in cases for res in c.result) == errors
    for i in range(1, total + 1):
        assert any(name.endswith(f"shard {i}/{total}") for name, _ in cases)
    html = (tmp_path / "out" / "summary.html").read_text()
    assert '<h2 id="merged">' in html and html.count("<td>1/") >= 1


def test_a_case_in_two_files_keeps_the_worst_and_says_so(tmp_path: Path) -> None:
    whole = RECORDED[0]
    files = shard_files(whole, 2, tmp_path / "runs")
    recs = records(whole)
    first = next(r for r in recs if r["kind"] == "scenario")
    # the same scenario again, from another run where the harness failed: broken
    again = write(tmp_path / "again" / "results.jsonl", [
        recs[0], {"schema": 2, "kind": "scenario", "index": first["index"],
                  "scenario": first["scenario"], "error": "the peer agent died"}])
    files.append(again)
    assert report.write_report(files, tmp_path / "out", out=NULL, pictures=False) == 0
    merged = merge_matrix([load_section(f, tmp_path / "s", NULL) for f in files])
    [dup] = merged.duplicates
    assert dup.key == (first["scenario"]["id"], first["scenario"]["policies"][0])
    assert dup.row.status is RowStatus.BROKEN and dup.source.number == 3
    [(other, status)] = dup.others
    assert status is RowStatus.CLEAN and other.shard is not None
    table = (tmp_path / "out" / "table.txt").read_text()
    assert "1 case(s) in several files" in table and "the worst kept" in table
    assert f"duplicate: also in file {other.number} (shard {other.shard_label}): clean" in table
    assert "1 broken" in table and len(merged.rows) == len(load_section(whole, tmp_path).rows)
    html = (tmp_path / "out" / "summary.html").read_text()
    assert "the worst outcome is kept" in html and "broken duplicate" in html
    # the other order: the broken one first, a clean one later: still the broken one
    merged = merge_matrix([load_section(f, tmp_path / "s", NULL) for f in reversed(files)])
    assert [m.row.status for m in merged.duplicates] == [RowStatus.BROKEN]


def test_a_shard_not_given_or_stopped_early_is_named(tmp_path: Path) -> None:
    files = shard_files(RECORDED[0], 3, tmp_path / "runs")
    assert report.write_report(files[:2], tmp_path / "out", out=NULL, pictures=False) == 0
    table = (tmp_path / "out" / "table.txt").read_text()
    assert "warning: shard(s) 3/3 not given:" in table and "of the run's 8 scenarios" in table
    # a shard that stopped after its first scenario: the ones it planned are named
    recs = records(files[1])
    write(files[1], recs[:2])
    merged = merge_matrix([load_section(f, tmp_path / "s", NULL) for f in files])
    [gap] = merged.gaps
    plan = recs[0]["shard"]
    assert gap.startswith("shard 2/3 (file 2) planned ")
    for pos, item in list(zip(plan["positions"], plan["items"], strict=True))[1:]:
        assert f"#{pos} {item}" in gap
    # alone, a shard says what it is part of
    said = RecordingPrinter()
    assert report.write_report(files[0], tmp_path / "one", out=said, pictures=False) == 0
    assert "shard 1/3 of a run of 8 scenarios" in (tmp_path / "one" / "table.txt").read_text()


def test_the_shards_of_a_stress_run_merge_their_cycles(tmp_path: Path) -> None:
    recs = records(STRESS)
    head, cycles = recs[0], [r for r in recs if r["kind"] == "cycle"]
    files = []
    for i in (1, 2):
        plan = cycle_plan(len(cycles), Shard(i, 2))
        files.append(write(tmp_path / f"s{i}" / "results.jsonl",
                           [{**head, "shard": plan.to_json()},
                            *[c for c in cycles if c["cycle"] in plan.positions]]))
    assert report.write_report(files, tmp_path / "out", out=NULL, pictures=False) == 0
    text = (tmp_path / "out" / "stress-table.txt").read_text()
    assert f"{len(cycles)} cycles, {sum(not c['ok'] for c in cycles)} failed" in text
    assert "stress: merged from 2 results files" in text and "warning" not in text
    assert report.write_report(files[:1], tmp_path / "o1", out=NULL, pictures=False) == 0
    report.write_report([files[0], files[0]], tmp_path / "o2", out=NULL, pictures=False)
    text = (tmp_path / "o2" / "stress-table.txt").read_text()
    assert "cycle number(s) in several files" in text and "not in these files" in text


def test_a_report_into_the_folder_of_the_shards_keeps_each_in_its_own(tmp_path: Path) -> None:
    """`--jobs`' merge reports its shards into the folder that holds them: each shard's
    table and timelines stay beside its results file. The control: another folder gets
    them below it, as before."""
    files = [tmp_path / "run" / f"shard-{i}" / "results.jsonl" for i in (1, 2)]
    assert section_dirs(files, tmp_path / "run") == [f.parent for f in files]
    assert section_dirs(files, tmp_path / "merged") == [
        tmp_path / "merged" / "run" / f"shard-{i}" for i in (1, 2)]
    # a results file in that folder itself: as before too
    mixed = [tmp_path / "run" / "results.jsonl", files[0]]
    assert section_dirs(mixed, tmp_path / "run") != [f.parent for f in mixed]

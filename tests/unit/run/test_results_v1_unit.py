"""Results typed end to end, and results files of schema 1 (written before ClientEnd) still read.

Schema-1 files in tests/data, all from the code before ClientEnd:
- matrix-standby-linkflap.jsonl: `rxe-power matrix` in the VM (before 405a4e6);
- matrix-v1-405a4e6.jsonl, stress-v1-405a4e6.jsonl: `rxe-power matrix` (standby
  clients-first, naive + graceful, 40 requests) and `rxe-power stress` (2 cycles, naive +
  graceful, 30 requests) of 405a4e6 in the VM;
- stress-v1-old-writer.jsonl: 405a4e6's ResultsWriter, the cycle bodies laid out as its
  Stress.cycle wrote them (a client terminated by the shim, one that died on its own).
NAME.table-405a4e6.txt: the table 405a4e6's `rxe-power report` printed for NAME.jsonl,
with the columns added since (late, aband, killed, in-flt, wait ms) filled in.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from harness import report
from harness.core.printer import NULL, RecordingPrinter
from harness.run.matrix import rows_of
from harness.run.records import ScenarioRecord
from harness.run.resultsfile import RESULTS_SCHEMA, RecordKind, ResultsWriter, read_results
from harness.run.rows import Row, RowStatus
from harness.run.scenario_result import ClientEnd, ScenarioResult
from power.result import TransitionResult

NOT_RECORDED = ("provenance: not recorded (a results file written before rxe-power "
                "recorded it)")
DATA = Path(__file__).parents[2] / "data"
V1_MATRIX_FILES = sorted(p for p in DATA.glob("*.jsonl") if p.name.startswith("matrix-"))
V1_STRESS = DATA / "stress-v1-old-writer.jsonl"
V1_MATRIX_405 = DATA / "matrix-v1-405a4e6.jsonl"
V1_STRESS_405 = DATA / "stress-v1-405a4e6.jsonl"


@pytest.mark.parametrize("path", V1_MATRIX_FILES, ids=lambda p: p.name)
def test_v1_matrix_results_parse_typed(path: Path) -> None:
    """Every v1 scenario: its result parses into a ScenarioResult with a ClientEnd per
    client, migrated from what v1 stored."""
    res = read_results(path)
    assert not res.problem
    scenarios = res.scenarios()
    assert scenarios and all(s.schema == 1 for s in scenarios)
    ends = set()
    for rec in scenarios:
        assert rec.result is not None, rec.result_problem
        assert isinstance(rec.result.transition, TransitionResult)
        ends |= {c.ended for c in rec.result.clients}
    assert ClientEnd.TERMINATED_BY_SHIM in ends and ClientEnd.COMPLETED in ends


def test_v1_rows_of_the_old_code_equal_the_rows_now() -> None:
    """The v1 file written by `rxe-power matrix` of 405a4e6 (in the VM): the rows it stored,
    computed by the old rules from crash words, equal the rows computed now from ClientEnd."""
    res = read_results(V1_MATRIX_405)
    for rec in res.scenarios():
        assert rec.result is not None, rec.result_problem
        assert [without_figures(r) for r in rows_of(rec.scenario, rec.result)] == \
            [Row.from_json(r) for r in rec.rows]


def without_figures(row: Row) -> Row:
    """A row without the ledger figures added after v1 (in flight at the port going down
    and at the delete, waits of late requests): what a v1 row stored."""
    return dataclasses.replace(row, in_flight_port=None, in_flight_device=None,
                               wait_median_ms=None, wait_max_ms=None)


def test_v1_result_written_again_is_v2_with_the_same_ends_and_rows() -> None:
    path = DATA / "matrix-standby-linkflap.jsonl"
    for rec in read_results(path).scenarios():
        assert rec.result is not None
        again = rec.result.to_json()
        assert all(c["ended"] in {e.value for e in ClientEnd} for c in again["clients"])
        back = ScenarioResult.from_json(json.loads(json.dumps(again)), RESULTS_SCHEMA)
        assert [c.ended for c in back.clients] == [c.ended for c in rec.result.clients]
        assert rows_of(rec.scenario, back) == rows_of(rec.scenario, rec.result)
        assert back.transition.verdict is rec.result.transition.verdict


def _v2_file(tmp_path: Path, ended: ClientEnd, crash: str) -> Path:
    """A schema-2 scenario record: the committed naive record with its client's end and
    crash text replaced."""
    line = next(json.loads(x) for x in (DATA / "matrix-standby-linkflap.jsonl").read_text()
                .splitlines() if '"naive"' in x and '"kind":"scenario"' in x)
    rec = ScenarioRecord.from_json(line)
    assert rec.result is not None
    rec.result.clients[0].ended = ended
    rec.result.clients[0].crash = crash
    path = tmp_path / "v2.jsonl"
    with ResultsWriter(path, "matrix", {}, provenance=None) as out:
        out.write(RecordKind.SCENARIO, {"index": 1, "scenario": line["scenario"],
                                        "result": rec.result.to_json()})
    return path


def test_row_status_comes_from_the_client_end_not_from_the_crash_words(tmp_path: Path) -> None:
    """v2: a client the shim terminated is bad whatever its message says; a client that died
    on its own is broken even if its message says "terminated by the shim"."""
    path = _v2_file(tmp_path, ClientEnd.TERMINATED_BY_SHIM, "client naive: gone")
    (rec,) = read_results(path).scenarios()
    assert rec.schema == RESULTS_SCHEMA == 2 and rec.result is not None
    (row,) = rows_of(rec.scenario, rec.result)
    assert row.status is RowStatus.BAD and row.findings[0].startswith("held the device")
    path = _v2_file(tmp_path, ClientEnd.DIED, "terminated by the shim (it says so, but no)")
    (rec,) = read_results(path).scenarios()
    assert rec.result is not None
    (row,) = rows_of(rec.scenario, rec.result)
    assert row.status is RowStatus.BROKEN and row.findings[0].startswith("crashed")
    path = _v2_file(tmp_path, ClientEnd.NO_REPLY, "client naive: no reply in 60 s")
    (rec,) = read_results(path).scenarios()
    assert rec.result is not None
    assert rows_of(rec.scenario, rec.result)[0].status is RowStatus.BROKEN


def test_v1_stress_file_reads_typed_and_reports(tmp_path: Path) -> None:
    res = read_results(V1_STRESS)
    assert res.header is not None and res.header["schema"] == 1 and not res.problem
    cycles = res.cycles()
    assert [c.cycle for c in cycles] == [1, 2, 3] and [c.ok for c in cycles] == [True, False,
                                                                                  True]
    assert [cl.ended for cl in cycles[0].clients] == [ClientEnd.TERMINATED_BY_SHIM,
                                                      ClientEnd.COMPLETED]
    assert [cl.ended for cl in cycles[1].clients] == [ClientEnd.TERMINATED_BY_SHIM,
                                                      ClientEnd.DIED]
    assert cycles[0].clients[1].recovery_ms == 53.5 and cycles[1].transition_ms == 2402.5
    said = RecordingPrinter()
    assert report.write_report(V1_STRESS, tmp_path, out=said, pictures=False) == 0
    lines = (tmp_path / "table.txt").read_text().splitlines()
    assert lines[:2] == [NOT_RECORDED, ""]  # a v1 file has no provenance: said on top
    lines = lines[2:]
    assert lines[2].split()[:3] == ["1", "ok", "forced"] and "crashed: naive-0" in lines[2]
    assert lines[3].split()[:2] == ["2", "FAILED"]
    assert "crashed: naive-0, graceful-1" in lines[3]
    assert any(x.startswith("3 cycles, 1 failed") for x in lines)
    assert "3 cycles, 1 failed" in (tmp_path / "summary.html").read_text()


@pytest.mark.parametrize("name", ["matrix-standby-linkflap", "matrix-v1-405a4e6",
                                  "stress-v1-old-writer", "stress-v1-405a4e6"])
def test_report_table_equals_the_old_codes(tmp_path: Path, name: str) -> None:
    """`rxe-power report` of a v1 file prints the table the old code (405a4e6) printed for
    it (tests/data/NAME.table-405a4e6.txt, its results path replaced by {RESULTS}), under
    the line saying the file records no provenance."""
    path = DATA / f"{name}.jsonl"
    assert report.write_report(path, tmp_path, out=NULL, pictures=False) == 0
    old = (DATA / f"{name}.table-405a4e6.txt").read_text().replace("{RESULTS}", str(path))
    text = (tmp_path / "table.txt").read_text()
    # the table now starts with what produced the file (an old file: not recorded)
    assert text.startswith(f"{NOT_RECORDED}\n\n"), text[:200]
    new = text[len(NOT_RECORDED) + 2:]
    if name.startswith("stress"):
        assert new == old
        return
    # the matrix table has gained the `away` column (requests handed over while the device
    # was away: "-" for a file that did not measure it), the `missed` status and the fault
    # models (each transition's, power.plan) in its summary since 405a4e6: everything else
    # is what the old code printed
    assert without_away_and_missed(new) == old
    assert " away " in new.splitlines()[0] and "0 missed" in new
    assert "; fault models: standby userspace-removal" in new


def without_away_and_missed(table: str) -> str:
    """The table as the old code laid it out: the `away` column (6 characters right after
    `in-flt`, a fixed-width part of every header and row line) and the summary's missed
    count taken out."""
    lines = table.split("\n")
    cut = lines[0].index("  in-flt") + len("  in-flt")
    out = []
    for line in lines:
        if re.match(r"\d+ rows: ", line):
            line = re.sub(r" \d+ missed \(the transition missed the workload: no "
                          r"measurement\),", "", line)
            line = re.sub(r"; fault models: .*$", "", line)
        elif line.startswith("-" * 20):
            line = line[:-6]
        elif len(line) > cut + 6 and line[cut:cut + 6].strip() in ("away", "-"):
            line = line[:cut] + line[cut + 6:]
        out.append(line)
    return "\n".join(out)


def test_v1_stress_of_the_old_code_reads_typed() -> None:
    """405a4e6's stress: naive terminated by the shim every cycle (not a failure); cycle 2
    failed (the rdma res check), so it kept its full result, which parses typed too."""
    cycles = read_results(V1_STRESS_405).cycles()
    assert [c.cycle for c in cycles] == [1, 2] and [c.ok for c in cycles] == [True, False]
    for c in cycles:
        assert [cl.ended for cl in c.clients] == [ClientEnd.TERMINATED_BY_SHIM,
                                                  ClientEnd.COMPLETED]
    kept = cycles[1].result
    assert cycles[0].result is None and kept is not None
    assert kept.client("naive").ended is ClientEnd.TERMINATED_BY_SHIM
    assert kept.transition.verdict.value == cycles[1].verdict == "forced"


def test_every_row_names_its_fault_model() -> None:
    """A row takes its transition's fault model (power.plan), keeps it through JSON, and a
    stored value this rxe-power does not know is refused, naming the field."""
    from harness.system.provenance import FaultModel
    from power.plan import TRANSITIONS

    for name, transition in TRANSITIONS.items():
        row = Row("s1", name, "hca-first", "naive", "send", "completed")
        assert row.fault_model is transition.fault_model
        assert Row.from_json(row.to_json()) == row
    assert Row("s1", "standby-devices", "hca-first", "naive", "send",
               "completed").fault_model is FaultModel.MLX5_ORDER
    stored = Row("s1", "standby", "hca-first", "naive", "send", "completed").to_json()
    with pytest.raises(ValueError, match="fault_model"):
        Row.from_json({**stored, "fault_model": "sleepy"})

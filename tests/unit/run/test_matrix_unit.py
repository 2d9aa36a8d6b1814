"""Pure logic of matrix, stress and results files, and the CLI's parsing: any host."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from clients.userspace import policy_class
from harness.cli import main as cli_main
from harness.core.errors import RxePowerError, SettingError
from harness.run.lanes import parse_policies
from harness.run.matrix import MatrixSpec, junit_xml, render_table, rows_of
from harness.run.records import ScenarioRecord
from harness.run.resultsfile import RESULTS_SCHEMA, RecordKind, ResultsWriter, read_results
from harness.run.rows import RowStatus
from harness.run.stress import StressSpec
from harness.run.stress_checks import (
    FD_SLACK,
    Usage,
    summarize,
    trend,
    usage_problems,
)
from harness.system.rdma_res import parse_res_summary
from power.plan import Ordering

DATA = Path(__file__).parents[2] / "data" / "matrix-standby-linkflap.jsonl"


def test_default_matrix_is_every_offered_ordering_times_every_policy() -> None:
    spec = MatrixSpec().validate()
    ids = [s.id for s in spec.scenarios()]
    # link-flap, standby, hibernate: 2 orderings each; surprise-removal: hca-first only
    assert len(ids) == 7 * 4 == len(set(ids))
    assert "surprise-removal/hca-first/naive/mixed" in ids
    assert not any(i.startswith("surprise-removal/clients-first") for i in ids)
    together = MatrixSpec(together=True).scenarios()
    assert len(together) == 7 and together[0].policies == spec.policies
    two = MatrixSpec(("standby",), (Ordering.HCA_FIRST,), parse_policies(("graceful",)),
                     ("send", "write"))
    assert [s.id for s in two.scenarios()] == ["standby/hca-first/graceful/send",
                                               "standby/hca-first/graceful/write"]


@pytest.mark.parametrize("kw, words", [
    ({"mixes": ("everything",)}, "unknown operation mix 'everything'"),
    ({"transitions": ("nap",)}, "unknown transition 'nap'"),
    ({"policies": parse_policies(("lazy",))}, "unknown client policy 'lazy'"),
    ({"policies": parse_policies(("no.such.module:X",))}, "cannot be loaded"),
    ({"transitions": ("surprise-removal",), "orderings": (Ordering.CLIENTS_FIRST,)},
     "no selected transition offers"),
    ({"count": 0}, "must all be >= 1"),
    ({"hold_ms": -1}, "negative"),
])
def test_matrix_spec_rejects_bad_values(kw: dict, words: str) -> None:
    with pytest.raises(SettingError, match=words) as exc:
        MatrixSpec(**kw).validate()
    assert exc.value.fix


def test_policy_by_module_path() -> None:
    assert policy_class("graceful").name == "graceful"
    assert policy_class("tests.helpers.bad_clients:Leaky").name == "leaky"
    with pytest.raises(SettingError, match="has no on_suspend"):
        policy_class("harness.run.matrix:Row")


def test_rows_and_table_from_a_recorded_run() -> None:
    res = read_results(DATA)
    assert not res.problem and res.header["command"] == "matrix"
    rows = [r for s in res.scenarios() if s.result for r in rows_of(s.scenario, s.result)]
    by = {(r.transition, r.ordering, r.policy): r for r in rows}
    assert len(rows) == 8
    for o in ("clients-first", "hca-first"):
        naive = by[("standby", o, "naive")]
        assert naive.status is RowStatus.BAD and naive.verdict == "forced"
        assert naive.findings[0].startswith("held the device: terminated by the shim")
        assert "clients.worker" in naive.veto  # recorded before the move to clients.userspace
        g = by[("standby", o, "graceful")]
        assert g.status is RowStatus.CLEAN and g.counts == {"completed-ok": 120}
    assert by[("standby", "clients-first", "graceful")].peer_saw.endswith("(goodbye)")
    flap = by[("link-flap", "hca-first", "naive")]
    assert flap.counts["flushed"] > 0 and flap.peer["missing"] > 0
    table = render_table(rows)
    assert len(table) == 2 + 8 + 1
    assert table[-1].startswith("8 rows: 6 clean, 2 bad")
    suite = ET.fromstring(junit_xml(rows, {}))
    cases = suite.findall("testcase")
    assert len(cases) == 8 and suite.get("failures") == "2" and suite.get("errors") == "0"
    failed = [c for c in cases if c.find("failure") is not None]
    assert {c.get("name") for c in failed} == {"naive[mixed]"}


def test_a_crash_that_was_not_the_shim_makes_a_row_broken() -> None:
    res = read_results(DATA)
    scen = res.of_kind(RecordKind.SCENARIO)[0]
    result = json.loads(json.dumps(scen["result"]))
    c = result["clients"][0]
    c.update(crashed=True, crash="client x during standby: killed by signal 11",
             unaccounted=[3, 4])
    rec = ScenarioRecord.from_json({**scen, "result": result})
    assert rec.result is not None
    (row,) = rows_of(rec.scenario, rec.result)
    assert row.status is RowStatus.BROKEN
    assert row.findings[0].startswith("crashed") and "2 requests unaccounted" in row.findings


def test_results_writer_and_tolerant_reader(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path, "stress", {"cycles": 3}, provenance=None) as out:
        for n in (1, 2, 3):
            out.write(RecordKind.CYCLE, {"cycle": n, "ok": True})
    assert [r["cycle"] for r in read_results(path).records] == [1, 2, 3]
    data = path.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[:-10])  # the last record cut mid-line, as a kill would leave it
    res = read_results(cut)
    assert [r["cycle"] for r in res.records] == [1, 2]
    assert "line 4 is cut short" in res.problem
    lines = data.decode().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], "{garbage", lines[3]]) + "\n")
    res = read_results(bad)
    assert [r["cycle"] for r in res.records] == [1] and "line 3 is corrupt" in res.problem
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(lines[0].replace(f'"schema":{RESULTS_SCHEMA}', '"schema":99') + "\n")
    with pytest.raises(RxePowerError, match="schema 99") as exc:
        read_results(foreign)
    assert "version that wrote it" in exc.value.fix
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(RxePowerError, match="holds no results records"):
        read_results(tmp_path / "empty.jsonl")
    with pytest.raises(RxePowerError, match=r"cannot read results file .*\[ENOENT 2\]"):
        read_results(tmp_path / "missing.jsonl")


def test_usage_and_resource_checks() -> None:
    base = Usage(fds=12, rss_kb=20_000, threads=1)
    assert usage_problems("w", base, Usage(12 + FD_SLACK, 30_000, 1)) == []
    probs = usage_problems("w", base, Usage(12 + FD_SLACK + 1, 60_000, 3))
    assert probs == [f"w: {13 + FD_SLACK} open fds, 12 after cycle 1 (slack {FD_SLACK})",
                     "w: 3 threads, 1 after cycle 1",
                     "w: RSS 60000 KiB, 20000 KiB after cycle 1 (limit 36384 KiB)"]
    raw = [{"ifindex": 3, "ifname": "rxe0", "pd": 4, "cq": 4, "qp": 4, "cm_id": 0, "mr": 3,
            "ctx": 3, "srq": 0},
           {"ifindex": 4, "ifname": "rxe1", "volatile": {"pd": 2, "cq": 1, "qp": 1, "mr": 0}}]
    assert parse_res_summary(raw) == {"rxe0": {"qp": 4, "cq": 4, "mr": 3, "pd": 4},
                                   "rxe1": {"qp": 1, "cq": 1, "mr": 0, "pd": 2}}
    assert trend([5, 5, 5]) == 0 and trend([1, 2, 3, 4]) == pytest.approx(1.0)
    assert summarize({"x.fds": [3, 4, 5]})["x.fds"] == {
        "first": 3, "last": 5, "max": 5, "min": 3, "slope_per_cycle": 1.0}


@pytest.mark.parametrize("argv, words", [
    (["matrix", "--mix", "everything"], "unknown operation mix"),
    (["matrix", "--ordering", "sideways"], "unknown ordering 'sideways'"),
    (["run", "--transition", "nap"], "unknown transition 'nap'"),
    (["stress", "--cycles", "0"], "--cycles 0 must be at least 1"),
    (["stress", "--maxfail", "-1"], "--maxfail -1 is negative"),
    (["stress", "--transition", "surprise-removal", "--ordering", "clients-first"],
     "clients-first"),
    (["report", "/nonexistent/results.jsonl"], "cannot read results file"),
])
def test_cli_refuses_bad_values_before_any_vm(argv: list[str], words: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(argv) == cli_main.HARNESS_ERROR_EXIT
    err = capsys.readouterr().err
    assert words in err and "fix:" in err


def test_stress_spec_defaults_validate() -> None:
    spec = StressSpec().validate()
    assert spec.cycles == 20 and spec.transition == "standby"
    assert spec.to_json()["on_veto"] == "force"


def test_stress_of_kernel_clients_is_its_own_run() -> None:
    """Kernel clients stress in their own cycles (harness/run/kernel_stress.py); mixing
    them with userspace workers in one run is refused with the fix."""
    spec = StressSpec(policies=parse_policies(("nvme-rdma:fast-fail",))).validate()
    assert spec.kernel
    assert not StressSpec().validate().kernel
    with pytest.raises(SettingError, match="mixes kernel clients") as exc:
        StressSpec(policies=parse_policies(("nvme-rdma", "graceful"))).validate()
    assert "two runs" in exc.value.fix
    with pytest.raises(SettingError, match="unknown nvme-rdma"):
        StressSpec(policies=parse_policies(("nvme-rdma:no-such-preset",))).validate()

"""The nvme-rdma rows of a real matrix run in the guest (standby both orderings and
surprise-removal, nvme-rdma:ctrl_loss_tmo=30:reconnect_delay=1:fast_io_fail_tmo=0):
the ledger re-derived from the recorded I/O records, the table row made from it, and
today's judge of the row agreeing with the status it was recorded with.

tests/data/nvme-matrix.jsonl is that run's results file as written, its provenance in the
header: `rxe-power matrix --policy nvme-rdma:ctrl_loss_tmo=30:reconnect_delay=1:
fast_io_fail_tmo=0 --transition standby,surprise-removal` (7 Dec 2026, commit 1f2156f, TCG
guest, kernel 6.1.0-57-amd64, our disassociate rdma_rxe). The recording it replaces had
no connections (it was made before the route guard listed them), yet its rows were
asserted clean; today's judge calls such a row broken (test_a_row_without_connections_is_
broken), and the old one even lacked the step details the judge reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.kernel.route_guard import Connection
from clients.kernel.ulp_scenario import judge, window_of
from harness.run.kernel_lane import _OUTCOME as _LANE_OUTCOMES
from harness.run.kernel_lane import kernel_lane
from harness.run.lanes import parse_policy
from harness.run.lanes.kernel import kernel_rows
from harness.run.resultsfile import RecordKind, read_results
from harness.system.provenance_text import Recorded
from harness.workload.block_ledger import (
    BlockState,
    IoOutcome,
    IoRecord,
    LedgerSummary,
    summarize,
)
from harness.workload.findings import RowStatus, texts
from power.kmsg import KmsgScan
from tests.helpers.recorded_blocks import recorded_target


@pytest.fixture
def recorded(data_dir: Path) -> list[dict]:
    """The run's scenario records (each with its `scenario` and `result`)."""
    res = read_results(data_dir / "nvme-matrix.jsonl")
    assert not res.problem and res.provenance.state is Recorded.YES
    return res.of_kind(RecordKind.SCENARIO)


def todays_judge(result: dict) -> tuple[list[str], str]:
    """clients.kernel.ulp_scenario.judge on what the run measured and recorded."""
    ledger = LedgerSummary(**{k: v for k, v in result["ledger"].items()
                              if k != "invariant_ok"})
    assert result["hang"] is None  # none in this run (a held delete: nvme_hang's report)
    fs = judge(ledger, [Connection(**c) for c in result["connections"]],
               [Connection(**c) for c in result["off_wire"]],
               KmsgScan.from_json(result["kernel"]), result["transition"], None, "rxe0")
    return texts(fs), RowStatus.of(fs)


def test_ledger_rederived_from_records(recorded: list[dict]) -> None:
    assert [r["scenario"]["id"].split("/nvme")[0] for r in recorded] == [
        "standby/clients-first", "standby/hca-first", "surprise-removal/hca-first"]
    for r in recorded:
        res = r["result"]
        recs = [IoRecord.from_json(d) for d in res["records"]]
        win = window_of(res["transition"])
        assert win is not None
        s = summarize(recs, recorded_target(res, recs, win), win)
        assert s.outcomes == res["ledger"]["outcomes"], r["scenario"]["id"]
        assert s.errnos == res["ledger"]["errnos"]
        assert s.acknowledged_writes == res["ledger"]["acknowledged_writes"]
        assert s.target == res["ledger"]["target"]
        assert s.invariant_ok and not s.unaccounted


@pytest.mark.parametrize(("state", "verdict"), [(BlockState.CORRUPTED, "corrupted"),
                                                (BlockState.ABSENT, "lost")])
def test_a_bad_block_on_the_target_breaks_the_invariant(recorded: list[dict],
                                                        state: BlockState,
                                                        verdict: str) -> None:
    """The negative control of the target half, on the recorded runs: one acknowledged
    write's block read back corrupted (or not there) on the target is named by its seq,
    counted apart from the intact ones, and the invariant no longer holds. (The guest's
    control corrupts a real block of the target: tests/rxe/test_negative_controls.py.)"""
    for r in recorded:
        res = r["result"]
        recs = [IoRecord.from_json(d) for d in res["records"]]
        win = window_of(res["transition"])
        target = recorded_target(res, recs, win)
        seq = sorted(target)[len(target) // 2]
        s = summarize(recs, target | {seq: state}, win)
        assert not s.invariant_ok, r["scenario"]["id"]
        assert (s.corrupted_seqs, s.lost_seqs) == (
            ([seq], []) if verdict == "corrupted" else ([], [seq]))
        assert s.target == {"intact": len(target) - 1, verdict: 1}, s.target


def test_outcomes_measured(recorded: list[dict]) -> None:
    by = {r["scenario"]["transition"] + "/" + r["scenario"]["ordering"]: r["result"]
          for r in recorded}
    cf = by["standby/clients-first"]["ledger"]
    assert cf["outcomes"] == {"completed-ok": 144}
    hf = by["standby/hca-first"]["ledger"]
    assert hf["outcomes"]["failed-to-app"] == 176 and hf["errnos"] == {
        "EIO (Input/output error)": 176}
    sr = by["surprise-removal/hca-first"]["ledger"]
    assert sr["errnos"]["ENOSPC (No space left on device)"] == 80
    # a read of the vanished namespace returns 0 bytes: a failure, not an ok
    recs = [IoRecord.from_json(d) for d in by["surprise-removal/hca-first"]["records"]]
    zero_reads = [x for x in recs if x.nbytes == 0]
    assert zero_reads and all(x.errno is None for x in zero_reads)
    assert sr["errnos"]["short (0 of 4096 bytes)"] == len(zero_reads) == 19


def test_rows(recorded: list[dict]) -> None:
    rows = [kernel_rows(r["scenario"], r["result"], parse_policy(r["scenario"]["policies"][0]))[0]
            for r in recorded]
    hf = rows[1]
    assert hf.counts == {"completed-ok": 131, "completed-late": 0, "failed-to-app": 176,
                         "lost": 0}
    assert hf.peer == {"delivered-once": 105, "corrupted": 0, "missing": 0}
    assert hf.status is RowStatus.CLEAN
    assert any(f.startswith("errno EIO") for f in hf.findings)
    assert rows[0].counts["completed-ok"] == 144
    # every connection of the client crossed the wire on rxe0, seen before the transition
    for r in recorded:
        conns = r["result"]["connections"]
        assert any(c["phase"] == "before" for c in conns) and not r["result"]["off_wire"]
        assert {(c["dev"], c["src"]) for c in conns} == {("rxe0", "198.18.0.1")}


def test_todays_judge_agrees_with_the_recorded_status(recorded: list[dict]) -> None:
    """The stored row status is what the judge of today says of what was measured (a row
    the judge would now call otherwise is stale data, not a fixture)."""
    for r in recorded:
        findings, status = todays_judge(r["result"])
        assert status == r["result"]["status"] == "clean", (r["scenario"]["id"], findings)
        assert findings == r["result"]["findings"]


def test_a_row_without_connections_is_broken(recorded: list[dict]) -> None:
    """Negative control: the same row with no connection seen before the transition (what
    the old recording held) is broken, and says why; so is one off the wire."""
    res = dict(recorded[1]["result"])
    findings, status = todays_judge(res | {"connections": []})
    assert status == "broken"
    assert findings[0].startswith("no connection of the client seen in `rdma res show cm_id`")
    loop = {**res["connections"][0], "dev": "rxe1", "src": "198.18.0.2"}
    findings, status = todays_judge(res | {"off_wire": [loop]})
    assert status == "broken" and "did not cross the wire" in findings[0]


def test_late_rule_on_recorded_clients_first(recorded: list[dict]) -> None:
    """clients-first pauses the I/O: nothing is in flight across the transition."""
    res = recorded[0]["result"]
    win = window_of(res["transition"])
    recs = [IoRecord.from_json(d) for d in res["records"]]
    assert not [x for x in recs if x.submit_ns < win.start_ns < (x.done_ns or 0)]
    assert IoOutcome.COMPLETED_LATE.value not in res["ledger"]["outcomes"]


def test_kernel_lane_draws_every_io_with_its_ledger_outcome(recorded: list[dict]) -> None:
    """The timeline lane of a kernel client: one mark per I/O, its outcome the one the
    row counted (the lane and the ledger decide it in one place), and what the ULP did as
    notes (every change of the controller's state, the connections' devices)."""
    for r in recorded:
        res = r["result"]
        lane = kernel_lane(res["scenario"]["policy"], res)
        assert len(lane.ledger) == len(res["records"])
        want = {("lost" if k == "stuck" else k): v
                for k, v in res["ledger"]["outcomes"].items()}
        assert lane.counts == want, r["scenario"]["id"]
        assert {e["op"] for e in lane.ledger} <= {"WRITE", "READ"}
        states = [(e["obj"], e["state"]) for e in lane.events if e["event"] == "controller"]
        sampled = []
        for s in res["ctrl_states"]:  # the changes only, in order
            if not [x for x in sampled if x[0] == s["ctrl"]] or \
                    [x for x in sampled if x[0] == s["ctrl"]][-1][1] != s["state"]:
                sampled.append((s["ctrl"], s["state"]))
        assert states == sampled
        assert [e["t_ns"] for e in lane.events] == sorted(e["t_ns"] for e in lane.events)
        failed = [e for e in lane.ledger if e["outcome"] == "failed-to-app"]
        assert failed or r["scenario"]["id"].startswith("standby/clients-first")
        assert all(e["attempts"][0].get("errno") or e["attempts"][0].get("short")
                   for e in failed)


def test_every_outcome_has_its_own_colour() -> None:
    """A request whose outcome has no colour is drawn as unaccounted (pink): every verbs
    outcome and every kernel lane outcome must have one."""
    from harness.report.drawing import OUTCOME_COLOURS
    from harness.workload.outcomes import Outcome

    assert {o.value for o in Outcome} <= set(OUTCOME_COLOURS)
    assert set(_LANE_OUTCOMES.values()) <= set(OUTCOME_COLOURS)
    assert len(set(OUTCOME_COLOURS.values())) == len(OUTCOME_COLOURS)


def test_a_kernel_clients_scenario_is_drawn_with_its_stored_row(data_dir: Path,
                                                              tmp_path: Path) -> None:
    """A recorded NFS-over-RDMA matrix row (standby hca-first, hard): its result with the
    lane, read back as a results record, keeps the row judged when it ran and is drawn as
    a timeline picture whose lane carries the transport's connections."""
    import struct

    from harness.report.section import scenario_rows
    from harness.report.timeline import render_timeline
    from harness.run.lanes.kernel import with_lane
    from harness.run.records import ScenarioRecord

    (rec,) = json.loads((data_dir / "nfs-matrix-row.json").read_text())
    sc, res = rec["scenario"], rec["result"]
    row = kernel_rows(sc, res, parse_policy(sc["policies"][0]))[0]
    line = {"schema": 2, "kind": "scenario", "index": 1, "scenario": sc,
            "result": with_lane(sc["policies"][0], res), "rows": [row.to_json()]}
    back = ScenarioRecord.from_json(json.loads(json.dumps(line)))
    assert back.row_stored and back.result is not None and not back.result_problem
    (lane,) = back.result.clients
    assert [e["state"] for e in lane.events if e["event"] == "transport"] == [
        "connected #1", "connected #2"]
    rows = scenario_rows(back)
    assert [r.to_json() for r in rows] == [row.to_json()]
    png = render_timeline(back, rows, tmp_path / "nfs.png")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", head[16:24])
    assert 1300 <= w <= 1500 and 700 <= h <= 1100 and png.stat().st_size > 30_000

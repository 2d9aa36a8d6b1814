"""The nvme-rdma rows of a real matrix run in the guest (standby both orderings and
surprise-removal, nvme-rdma:ctrl_loss_tmo=30:reconnect_delay=1:fast_io_fail_tmo=0):
the ledger re-derived from the recorded I/O records, and the table row made from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.kernel.nvme_scenario import window_of
from harness.run.kernel_lane import _OUTCOME as _LANE_OUTCOMES
from harness.run.kernel_lane import kernel_lane
from harness.run.kernel_rows import kernel_rows
from harness.run.rows import RowStatus
from harness.workload.block_ledger import BlockState, IoOutcome, IoRecord, summarize
from tests.helpers.recorded_blocks import recorded_target


@pytest.fixture
def recorded(data_dir: Path) -> list[dict]:
    return json.loads((data_dir / "nvme-matrix-rows.json").read_text())


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
    assert cf["outcomes"] == {"completed-ok": 200}
    hf = by["standby/hca-first"]["ledger"]
    assert hf["outcomes"]["failed-to-app"] == 136 and hf["errnos"] == {
        "EIO (Input/output error)": 136}
    sr = by["surprise-removal/hca-first"]["ledger"]
    assert sr["errnos"]["ENOSPC (No space left on device)"] == 97
    # a read of the vanished namespace returns 0 bytes: a failure, not an ok
    recs = [IoRecord.from_json(d) for d in by["surprise-removal/hca-first"]["records"]]
    zero_reads = [x for x in recs if x.nbytes == 0]
    assert zero_reads and all(x.errno is None for x in zero_reads)


def test_rows(recorded: list[dict]) -> None:
    rows = [kernel_rows(r["scenario"], r["result"])[0] for r in recorded]
    hf = rows[1]
    assert hf.counts == {"completed-ok": 64, "completed-late": 0, "failed-to-app": 136,
                         "lost": 0}
    assert hf.peer == {"delivered-once": 52, "corrupted": 0, "missing": 0}
    assert hf.status is RowStatus.CLEAN
    assert any(f.startswith("errno EIO") for f in hf.findings)
    assert rows[0].counts["completed-ok"] == 200


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
    pytest.importorskip("matplotlib")
    import struct

    from harness.report.section import scenario_rows
    from harness.report.timeline import render_timeline
    from harness.run.kernel_rows import with_lane
    from harness.run.records import ScenarioRecord

    (rec,) = json.loads((data_dir / "nfs-matrix-row.json").read_text())
    sc, res = rec["scenario"], rec["result"]
    row = kernel_rows(sc, res)[0]
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

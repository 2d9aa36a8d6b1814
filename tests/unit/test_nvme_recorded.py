"""The nvme-rdma rows of a real matrix run in the guest (standby both orderings and
surprise-removal, nvme-rdma:ctrl_loss_tmo=30:reconnect_delay=1:fast_io_fail_tmo=0):
the ledger re-derived from the recorded I/O records, and the table row made from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.kernel.nvme_scenario import window_of
from harness.run.kernel_rows import kernel_rows
from harness.run.rows import RowStatus
from harness.workload.block_ledger import (
    BlockState,
    IoOutcome,
    IoRecord,
    acknowledged,
    summarize,
)


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
        # the target held every acknowledged write intact in that run
        target = {x.seq: BlockState.INTACT for x in recs if acknowledged(x, win)}
        s = summarize(recs, target, win)
        assert s.outcomes == res["ledger"]["outcomes"], r["scenario"]["id"]
        assert s.errnos == res["ledger"]["errnos"]
        assert s.acknowledged_writes == res["ledger"]["acknowledged_writes"]
        assert s.invariant_ok and not s.unaccounted


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

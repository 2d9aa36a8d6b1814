"""One result type for the kernel clients (clients/kernel/ulp_result.py): every ULP's
result has the same fields, and what is a ULP's own is one typed record (`own`:
nvme-rdma's CtrlRecord, NFS's MountRecord); their JSON is flat and keeps the keys of the
recorded results (tests/data), so the kernel lane reads old and new alike."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from clients.kernel.nfs_scenario import MountRecord
from clients.kernel.nvme_scenario import CtrlRecord
from clients.kernel.ulp_result import UlpResult
from harness.run.resultsfile import RecordKind, read_results
from harness.workload.block_ledger import LedgerSummary
from harness.workload.findings import Finding, RowStatus, Severity

SHARED = dict(scenario={}, options={}, transition={}, ledger=LedgerSummary(ios=1), records=[],
              connections=[], off_wire=[], survived=True, detect_ms=None, recover_ms=None,
              kernel={}, findings=[], status=RowStatus.CLEAN, client_events=[])
LANE_KEYS = {"clients", "kernel_client"}  # added by the kernel lane (lanes/kernel.py)


def nvme_result() -> UlpResult[CtrlRecord]:
    return UlpResult(**SHARED, own=CtrlRecord(ctrl_states=[], block_device_after="nvme0n1"))


def nfs_result() -> UlpResult[MountRecord]:
    return UlpResult(**SHARED, own=MountRecord(xprt_states=[], transport=[], mount_after=""))


def test_each_ulp_owns_only_its_own_fields() -> None:
    shared = {f.name for f in fields(UlpResult)}
    assert {f.name for f in fields(CtrlRecord)} == {"ctrl_states", "block_device_after"}
    assert {f.name for f in fields(MountRecord)} == {"xprt_states", "transport",
                                                     "mount_after"}
    assert not shared & ({f.name for f in fields(CtrlRecord)}
                         | {f.name for f in fields(MountRecord)})


def test_the_json_has_the_recorded_keys(data_dir: Path) -> None:
    nvme = nvme_result().to_json()
    rec = read_results(data_dir / "nvme-matrix.jsonl").of_kind(RecordKind.SCENARIO)[0]
    # (coverage came after that run: a key it does not have)
    assert set(rec["result"]) - LANE_KEYS == set(nvme) - {"coverage"}
    # the own record's fields are flat, after the shared ones (as the subclasses had them)
    assert list(nvme)[-2:] == ["ctrl_states", "block_device_after"] and "own" not in nvme
    nfs = nfs_result().to_json()
    (row,) = json.loads((data_dir / "nfs-matrix-row.json").read_text())
    assert set(row["result"]) == set(nfs) - {"coverage", "teardown_left"}
    assert nvme["status"] == "clean" and type(nvme["status"]) is str


def test_judged_sets_findings_and_status_from_severities() -> None:
    res = nfs_result()
    res.judged([Finding(Severity.NOTE, "cm sampler: x"), Finding(Severity.BAD, "1 I/O stuck")])
    assert res.status is RowStatus.BAD and res.findings == ["cm sampler: x", "1 I/O stuck"]
    res.judged([Finding(Severity.BROKEN, "teardown left: y")])
    assert res.to_json()["status"] == "broken"


def test_recorded_results_read_back_typed_and_write_the_same(data_dir: Path) -> None:
    """Each recorded kernel result read back with its ULP's own record gives the same JSON
    for every key it had (and the type's defaults for the keys it predates)."""
    (row,) = json.loads((data_dir / "nfs-matrix-row.json").read_text())
    recs = [r["result"] for r in read_results(data_dir / "nvme-matrix.jsonl")
            .of_kind(RecordKind.SCENARIO)]
    for own, d in [(MountRecord, row["result"]), *((CtrlRecord, r) for r in recs)]:
        back = UlpResult.from_json(d, own)
        assert isinstance(back.ledger, LedgerSummary) and isinstance(back.status, RowStatus)
        assert isinstance(back.own, own)
        again = back.to_json()
        assert {k: again[k] for k in set(d) - LANE_KEYS} == {k: d[k] for k in set(d) - LANE_KEYS}
        assert again["coverage"] is None and again["teardown_left"] == d.get("teardown_left", [])

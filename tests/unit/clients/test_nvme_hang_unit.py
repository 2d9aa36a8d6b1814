"""The held-delete report of a kernel client (clients/kernel/nvme_hang.py) and the bounded
delete_controller (harness/system/kernelobjs.py): pure logic, no rxe."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.kernel import nvme_hang
from clients.kernel.nvme_host import CtrlSample
from clients.kernel.ulp_scenario import judge as judge_findings
from harness.core.errors import TopologyError
from harness.system import kernelobjs as ko
from harness.workload.block_ledger import LedgerSummary
from harness.workload.findings import RowStatus, texts
from power.kmsg.marker import Marker
from power.kmsg.records import KmsgRecord
from power.kmsg.scan import KmsgScan


def rec(seq: int, msg: str, level: int = 6) -> KmsgRecord:
    return KmsgRecord(seq, seq * 1000, level, 0, msg)


MARKER = Marker("tok", "rxe-power: marker tok nvme-rdma standby hca-first", 10, True)


def test_kernel_lines_keep_hung_task_traces_and_nvme_lines() -> None:
    records = [rec(9, "nvme nvme0: before the marker"),
               rec(11, 'nvme nvme0: Removing ctrl: NQN "nqn.x:rxpw-1"'),
               rec(12, "rxpwsw: port 1(rxpw0s) entered disabled state"),
               rec(13, "INFO: task rdma:1380 blocked for more than 10 seconds.", 3),
               rec(14, "task:rdma state:D stack:0 pid:1380"),
               rec(15, "Call Trace:"),
               rec(16, " nvme_rdma_remove_one+0x8d/0xb0 [nvme_rdma]")]
    lines, reports = nvme_hang.kernel_lines(records, MARKER)
    assert reports == 1
    text = "\n".join(lines)
    assert "before the marker" not in text and "rxpwsw" not in text
    assert "Removing ctrl" in text and "nvme_rdma_remove_one" in text and "state:D" in text


def report(**kw: object) -> nvme_hang.HangReport:
    base: dict[str, object] = {"held_pids": [1380], "ctrl": "nvme0",
                               "ctrl_state": "deleting (no IO)", "ctrl_state_since_ms": 1500.0,
                               "admin_timeout_s": 60, "io_timeout_s": 30}
    base.update(kw)
    return nvme_hang.HangReport(**base)  # type: ignore[arg-type]


def test_findings_say_what_held_the_device_and_how_it_ended() -> None:
    rep = report(released=True, held_ms=61234.0, hung_task_reports=2,
                 delete_controller="delete of nvme controller nvme0 failed: the write returned")
    assert rep.recovered
    text = " ".join(rep.findings("rxe0"))
    for part in ("pid 1380", "nvme0", "'deleting (no IO)'", "1.5 s", "admin_timeout 60",
                 "61.2 s", "2 hung-task", "delete_controller"):
        assert part in text, (part, text)
    assert rep.to_json()["recovered"] is True


def test_a_hold_that_outlived_the_bound_is_not_recovered() -> None:
    rep = report(released=False, restored=["rxe0's delete still pending in [1380]"])
    assert not rep.recovered
    assert any("HELD_DELETE_TIMEOUT_S" in f for f in rep.findings("rxe0"))


def test_state_since_is_taken_from_the_last_change_of_our_controller() -> None:
    samples = [CtrlSample(1_000_000, "nvme0", "live", "n"),
               CtrlSample(2_000_000, "nvme1", "live", "m"),
               CtrlSample(3_000_000, "nvme0", "deleting (no IO)", "n")]
    assert nvme_hang._state_since(samples, "nvme0", 5_000_000) == ("deleting (no IO)", 2.0)
    assert nvme_hang._state_since(samples, "nvme7", 5_000_000) == ("absent", None)


def _judge(*args: object, **kw: object) -> tuple[list[str], RowStatus]:
    """The judge's findings as the row shows them, and the status they make."""
    fs = judge_findings(*args, **kw)  # type: ignore[arg-type]
    return texts(fs), RowStatus.of(fs)


def _scan() -> KmsgScan:
    return KmsgScan(MARKER, 3)


def test_judge_a_recovered_hold_is_bad_not_broken() -> None:
    lg = LedgerSummary(ios=1)
    conns = [type("C", (), {"phase": "before"})()]
    tres = {"verdict": "failed", "reasons": ["step delete-device failed"]}
    findings, status = _judge(lg, conns, [], _scan(), tres, report(released=True, held_ms=1.0))
    assert status == "bad" and any("held rxe0" in f for f in findings)
    _, status = _judge(lg, conns, [], _scan(), tres, report(released=False))
    assert status == "broken"
    _, status = _judge(lg, conns, [], _scan(), tres, None)
    assert status == "broken"  # a failed transition without a finding to explain it


def test_delete_ctrl_that_leaves_the_controller_is_an_error(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """6.1 answers a delete_controller write on a controller it is already deleting with
    success and does nothing: that must not pass for a delete."""
    ctrl = tmp_path / "nvme0"
    ctrl.mkdir()
    (ctrl / "state").write_text("deleting (no IO)\n")
    (ctrl / "delete_controller").write_text("")
    monkeypatch.setattr(ko, "SYS_NVME", tmp_path)
    monkeypatch.setattr(ko, "CTRL_GONE_TIMEOUT_S", 0.05)
    with pytest.raises(TopologyError) as exc:
        ko.delete_ctrl("nvme0", timeout_s=5.0)
    assert "deleting (no IO)" in exc.value.problem


def test_judge_names_a_shorter_hold_the_shim_outlasted() -> None:
    tres = {"verdict": "forced", "steps": [
        {"step": "delete-device", "outcome": "ok", "detail": {"blocked_s": 4.25, "veto": True}}]}
    conns = [type("C", (), {"phase": "before"})()]
    findings, status = _judge(LedgerSummary(ios=1), conns, [], _scan(), tres, None)
    assert status == "clean" and any("blocked 4.25 s" in f for f in findings), findings


def test_judge_names_a_hold_before_the_delete_reached_uverbs() -> None:
    """An idle nvme controller deleted over a downed link holds the delete inside its own
    removal, which runs before ib_uverbs' (measured: 5.3-5.5 s with admin_timeout 5): the
    delete's uverbs nodes go only then, no process holds it (no veto), and the shim's
    step says so in start_s. The row names it; a quick start (the `rdma` program's own
    start-up) is not named."""
    conns = [type("C", (), {"phase": "before"})()]
    for start_s, named in ((5.34, True), (0.6, False)):
        tres = {"verdict": "completed", "steps": [
            {"step": "delete-device", "outcome": "ok",
             "detail": {"blocked_s": 0.01, "veto": False, "start_s": start_s}}]}
        findings, status = _judge(LedgerSummary(ios=1), conns, [], _scan(), tres, None)
        assert status == "clean"
        assert [f for f in findings if "reached its uverbs nodes" in f] == (
            [f"the delete of rxe0 reached its uverbs nodes only {start_s:.2f} s after it "
             "began: a kernel client's removal held it (and the sleep) that long"]
            if named else []), findings


def test_a_held_delete_does_not_require_io_after_the_transition() -> None:
    """A held delete stops the I/O (the transition never ended): the row is bad for the
    hold, not `missed` for the I/O after it that could not be (the nvme row of a guard-off
    guest run read `missed` with a 93 s hold). I/O that crossed the hold is still required."""
    from harness.workload.coverage import Coverage

    conns = [type("C", (), {"phase": "before"})()]
    tres = {"verdict": "failed", "reasons": ["held"], "steps": []}
    crossed = Coverage(requests=14, before=10, crossed=4, arrived_away=0, after=0,
                       in_flight_at_begin=2)
    held = report(released=True, held_ms=93318.0)
    _, status = _judge(LedgerSummary(ios=14), conns, [], _scan(), tres, held,
                       coverage=crossed)
    assert status == "bad"
    _, status = _judge(LedgerSummary(ios=14), conns, [], _scan(),
                       {"verdict": "completed", "steps": []}, None, coverage=crossed)
    assert status == "missed"
    idle = Coverage(requests=2, before=2, crossed=0, arrived_away=0, after=0,
                    in_flight_at_begin=0)
    _, status = _judge(LedgerSummary(ios=2), conns, [], _scan(), tres, held, coverage=idle)
    assert status == "missed"

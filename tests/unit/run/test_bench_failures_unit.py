"""rxe-power bench, pure logic: a run with any error is FAILED with its cause and no ratio
(perftest's recorded output in tests/data/perftest, a failed harness run's row recorded in
tests/data/bench), the section bounds, and the tracer overhead's order and summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.core.errors import BoundExceeded
from harness.run.bench import client_vs_perftest as cvp
from harness.run.bench.bounds import SectionBound
from harness.run.bench.failures import (
    FirstError,
    first_error,
    harness_failure,
    peer_errors,
    perftest_failure,
)
from harness.run.bench.perftest import BW_COLUMNS, PerftestRun, parse_perftest
from harness.run.bench.record import target_lines, targets
from harness.run.bench.spec import BenchSpec
from harness.run.bench.tracer_overhead import Run, order, summarize
from harness.workload.ledger import Ledger

DATA = Path(__file__).parents[2] / "data"
PERF = DATA / "perftest"
BENCH = DATA / "bench"


# --- perftest ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in PERF.glob("*.txt")
                                        if "over" not in p.name))
def test_a_clean_perftest_output_has_no_failure(name: str) -> None:
    assert perftest_failure((PERF / name).read_text(), 0) is None


def test_perftest_error_completion_is_the_cause() -> None:
    """Recorded in the guest (rxe, kernel 6.1): ib_send_bw's client SENDs 4 KiB into the
    server's 64 B receive buffers (receive buffers of another size at the peer). rxe 6.1
    takes a SEND longer than its receive buffer for a malformed WQE: the client's SEND
    completes REM_OP_ERR (status 11), the server's receive LOC_QP_OP_ERR (status 2); not
    the REM_INV_REQ_ERR the bench saw, which is not what such buffers cause on 6.1."""
    text = (PERF / "ib_send_bw-4096-over-64-client.txt").read_text()
    assert perftest_failure(text, 17) == ("perftest: an error completion at the client: "
                                          "REM_OP_ERR (status 11, wr_id 0, syndrome 0x0); "
                                          "exit 17")
    server = perftest_failure((PERF / "ib_send_bw-4096-over-64-server.txt").read_text(), 17)
    assert server is not None and "at the server: LOC_QP_OP_ERR (status 2" in server


def test_perftest_nonzero_exit_without_error_lines_is_a_failure() -> None:
    why = perftest_failure("Couldn't connect to 198.18.0.2:18515\nUnable to init\n", 1)
    assert why == "perftest exited 1: Couldn't connect to 198.18.0.2:18515 | Unable to init"


# --- harness runs -----------------------------------------------------------------------

def _row() -> dict[str, Any]:
    row: dict[str, Any] = json.loads((BENCH / "failed-send-4096-row.json").read_text())
    return row


def _harness_run(d: dict[str, Any]) -> cvp.HarnessRun:
    return cvp.HarnessRun(**d)


def test_a_recorded_failed_run_is_failed_again_from_its_figures() -> None:
    """The row of a real failed run (the rxe negative control: the peer's QP moved to ERR
    while the 4 KiB SEND run posted): its cause is derived again from its counts."""
    hr = _row()["harness"]
    first = FirstError(**hr["first_error"])
    again = harness_failure(hr["count"], hr["counts"], hr["peer_counts"], hr["unaccounted"],
                            first, hr["peer_errors"], hr["bound"])
    assert again is not None and again == hr["failure"]
    assert again.startswith(f"request {first.req_id} completed {first.status}")


def test_a_failed_harness_run_has_no_ratio_and_its_line_says_failed() -> None:
    rec = _row()
    hr = _harness_run(rec["harness"])
    pt_text = (PERF / "ib_send_bw-4096-client.txt").read_text()
    pt = PerftestRun("ib_send_bw", 4096, 8000, parse_perftest(pt_text, BW_COLUMNS)[-1],
                     ["ib_send_bw"], 1.0, pt_text)
    row = cvp.throughput_row("SEND", "ib_send_bw", 4096, pt, hr)
    assert row["failed"] == f"harness: {hr.failure}" and not row["ledger_ok"]
    assert row["ratio_mib"] is None and row["ratio_msg"] is None
    assert row["perftest"]["mib_per_s"] == 22.12  # perftest's own figure is still there
    line = cvp.throughput_line(row)
    assert hr.failure is not None and "FAILED (no figures)" in line and hr.failure in line
    # and the same harness run held: figures and ratios, no FAILED
    clean = cvp.HarnessRun(**{**rec["harness"], "counts": {"completed-ok": hr.count},
                              "peer_counts": {"delivered-once": hr.count},
                              "first_error": None, "failure": None, "mib_per_s": 11.06})
    ok = cvp.throughput_row("SEND", "ib_send_bw", 4096, pt, clean)
    assert ok["failed"] is None and ok["ratio_mib"] == 0.5
    assert "FAILED" not in cvp.throughput_line(ok)


def test_a_failed_perftest_run_fails_the_row() -> None:
    hr = cvp.HarnessRun(**{**_row()["harness"], "counts": {"completed-ok": 10},
                           "peer_counts": {"delivered-once": 10}, "count": 10,
                           "first_error": None, "failure": None})
    text = (PERF / "ib_send_bw-4096-over-64-client.txt").read_text()
    pt = PerftestRun("ib_send_bw", 4096, 200, {}, ["ib_send_bw"], 1.0, text,
                     failure=perftest_failure(text, 17))
    row = cvp.throughput_row("SEND", "ib_send_bw", 4096, pt, hr)
    assert row["failed"].startswith("perftest: perftest: an error completion at the client")
    assert row["ratio_mib"] is None and row["perftest"]["mib_per_s"] is None


def test_targets_do_not_count_a_failed_row() -> None:
    res = {"spec": {"queue_depth": 64}, "throughput": [
        {"size": 4096, "op": "SEND", "signal_every": 64, "ratio_mib": None, "ratio_msg": None,
         "failed": "harness: request 1128 completed REM_INV_REQ_ERR"},
        {"size": 64, "op": "SEND", "signal_every": 64, "ratio_mib": 0.5, "ratio_msg": 0.5,
         "failed": None}]}
    got = {t["target"]: t for t in targets(res)}
    big = got["harness SEND throughput >= 80% of ib_send_bw at 4096 B"]
    assert big["met"] is False and big["value"] is None and "REM_INV_REQ_ERR" in big["failed"]
    assert got["harness SEND message rate >= 30% of ib_send_bw at 64 B"]["met"] is True
    lines = target_lines(targets(res))
    assert any("not measured, its run FAILED" in line and "4096 B" in line for line in lines)


def test_first_error_is_the_earliest_non_flush_failure() -> None:
    def entry(i: int, status: str | None, done: int | None,
              errno: int | None = None) -> dict[str, Any]:
        return {"req_id": i, "op": "SEND", "size": 64, "qp_index": 0,
                "attempts": [{"generation": 1, "posted_ns": 100 + i, "status": status,
                              "vendor_err": 0, "completed_ns": done, "errno": errno}],
                "outcome": None, "reason": "", "peer": None, "arrived_ns": None,
                "held": False}

    led = Ledger.from_json([entry(0, "SUCCESS", 200), entry(1, "WR_FLUSH_ERR", 250),
                            entry(2, "REM_INV_REQ_ERR", 300), entry(3, "RETRY_EXC_ERR", 400),
                            entry(4, None, None)])
    assert first_error(led) == FirstError(2, "REM_INV_REQ_ERR")
    led = Ledger.from_json([entry(0, "SUCCESS", 200), entry(1, None, None, errno=12)])
    assert first_error(led) == FirstError(1, "rejected-at-post", 0, 12)
    assert first_error(Ledger.from_json([entry(0, "SUCCESS", 200)])) is None


def test_peer_flushes_are_not_errors_but_its_other_error_completions_are() -> None:
    evs = [{"kind": "wc_error", "status": "WR_FLUSH_ERR"}] * 3 + [
        {"kind": "wc_error", "status": "LOC_LEN_ERR"}, {"kind": "other", "status": "x"}]
    assert peer_errors(evs) == {"LOC_LEN_ERR": 1}
    assert peer_errors(evs[:3]) == {}


def test_a_clean_run_has_no_failure_and_a_bound_alone_fails_it() -> None:
    counts, peer = {"completed-ok": 50}, {"delivered-once": 50}
    assert harness_failure(50, counts, peer, 0, None, {}, None) is None
    why = harness_failure(50, counts, peer, 0, None, {}, "X did not finish within B=1s")
    assert why == "X did not finish within B=1s"
    assert harness_failure(50, counts, peer, 0, None, {"LOC_LEN_ERR": 1}, None) == \
        "the peer's error completions: 1 LOC_LEN_ERR"


class FakeWorker:
    """A worker's `progress` replies, one per call (the control channel, not verbs)."""

    name = "bench-send-4096-s64"

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = replies
        self.calls = 0

    def request(self, event: str, timeout_s: float, **payload: Any) -> dict[str, Any]:
        assert event == "progress"
        self.calls += 1
        return self.replies[min(self.calls, len(self.replies)) - 1]


def _progress(done: bool, outstanding: int, queued: int,
              counts: dict[str, int]) -> dict[str, Any]:
    return {"done": done, "outstanding": outstanding, "queued": queued, "counts": counts}


def test_waiting_ends_when_the_client_stopped_at_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cvp, "RUN_PROGRESS_POLL_S", 0.0)
    w = FakeWorker([_progress(False, 64, 1000, {"completed-ok": 500, "unaccounted": 1100}),
                    _progress(False, 3, 428, {"completed-error": 1, "flushed": 40}),
                    _progress(False, 0, 428, {"completed-error": 1, "flushed": 43})])
    clip = SectionBound("throughput", "T", 60.0).clip("HARNESS_RUN_TIMEOUT_S", 600.0)
    assert cvp.wait_until_over(w, clip) is None and w.calls == 3  # type: ignore[arg-type]
    w = FakeWorker([_progress(True, 0, 0, {"completed-ok": 50})])
    assert cvp.wait_until_over(w, clip) is None and w.calls == 1  # type: ignore[arg-type]


def test_the_bound_says_what_the_run_was_waiting_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cvp, "RUN_PROGRESS_POLL_S", 0.0)
    w = FakeWorker([_progress(False, 64, 100, {"completed-ok": 10})])
    bound = SectionBound("throughput", "THROUGHPUT_SECTION_TIMEOUT_S", 0.0)
    fired = cvp.wait_until_over(w, bound.clip("HARNESS_RUN_TIMEOUT_S", 600.0))  # type: ignore[arg-type]
    assert fired is not None
    assert fired.startswith("harness client bench-send-4096-s64 did not finish within "
                            "THROUGHPUT_SECTION_TIMEOUT_S=0s")
    assert "64 requests in flight and 100 queued" in fired


# --- bounds -----------------------------------------------------------------------------

def test_section_bound_clips_and_fires_naming_what_it_waited_for() -> None:
    b = SectionBound("cycle", "CYCLE_SECTION_TIMEOUT_S", 100.0)
    assert b.clip("OWN_TIMEOUT_S", 5.0).bound_name == "OWN_TIMEOUT_S"
    big = b.clip("OWN_TIMEOUT_S", 500.0)
    assert big.bound_name == "CYCLE_SECTION_TIMEOUT_S" and big.seconds <= 100.0
    b.check("standby cycle 2")  # not yet
    b.started -= 101.0
    with pytest.raises(BoundExceeded) as exc:
        b.check("standby cycle 2 of 10, not started")
    assert exc.value.bound_name == "CYCLE_SECTION_TIMEOUT_S"
    assert "outstanding: standby cycle 2 of 10, not started" in exc.value.problem
    assert b.clip("OWN_TIMEOUT_S", 5.0).seconds == 0.0


def test_every_section_has_a_named_bound_that_grows_with_its_work() -> None:
    spec = BenchSpec().validate()
    names = {s: spec.section_bound(s).bound_name for s in spec.sections}
    assert all(n.split(" x ")[0].endswith("_SECTION_TIMEOUT_S") for n in names.values()), names
    cycle = spec.section_bound("cycle")
    assert cycle.bound_name == "CYCLE_SECTION_TIMEOUT_S x 11" and cycle.seconds == 660.0
    big = BenchSpec(scale=2.0).validate().section_bound("throughput")
    assert big.seconds == 2 * spec.section_bound("throughput").seconds
    assert big.bound_name == "THROUGHPUT_SECTION_TIMEOUT_S x 2"


# --- the tracer's overhead ----------------------------------------------------------------

def test_tracer_overhead_order_alternates() -> None:
    assert order(4) == [True, False, False, True, True, False, False, True]
    seq = order(7)
    assert seq.count(True) == seq.count(False) == 7


def test_tracer_overhead_summary() -> None:
    mbs = [20.0, 18.0, 21.0, 19.0, 22.0, 0.0, 17.0, 19.5]  # T U U T T U U T; one zero rate
    runs = [Run(i, t, v, v * 256, 1.0, 2 if t else 0, 30000 if t else 0)
            for i, (t, v) in enumerate(zip(order(4), mbs, strict=True))]
    s = summarize(runs)
    assert s["left_out_zero_rate"] == 1
    assert s["untraced_mib_per_s"]["n"] == 3 and s["traced_mib_per_s"]["n"] == 4
    assert s["untraced_mib_per_s"]["median"] == 18.0  # 18, 21, 17
    assert s["traced_mib_per_s"]["median"] == 19.75  # 20, 19, 22, 19.5
    assert s["ratio_of_medians"] == round(19.75 / 18.0, 3) and s["met"] is True
    # pairs (T, U) (U, T) (T, U) (U, T): 20/18, 19/21, 22/0 left out, 19.5/17
    assert s["pair_ratio"]["n"] == 3 and s["pair_ratio"]["min"] == round(19 / 21, 3)

"""The workload and the ledger: pure logic."""

from __future__ import annotations

import pytest

from harness.core.errors import SettingError
from harness.workload.ledger import Ledger, apply_peer_view
from harness.workload.outcomes import Outcome, PeerView
from harness.workload.spec import Op, WorkloadSpec


def test_workload_cycles_ops_sizes_and_qps() -> None:
    spec = WorkloadSpec(count=8, sizes=(64, 4096), qps=2)
    reqs = spec.requests()
    assert [r.op for r in reqs[:4]] == [Op.SEND, Op.WRITE, Op.READ, Op.FETCH_ADD]
    assert [r.size for r in reqs] == [64, 64, 64, 8, 4096, 4096, 4096, 8]
    assert [r.qp_index for r in reqs[:4]] == [0, 1, 0, 1]
    assert reqs[0].seq == 1  # seq 0 is never on the wire
    assert WorkloadSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("kw", [{"count": 0}, {"queue_depth": 0}, {"sizes": (0,)},
                                {"sizes": (1 << 20,)}, {"completion": "spin"},
                                {"rate_per_s": -1.0}, {"retry_cnt": 8}, {"retry_cnt": -1}])
def test_bad_workloads_are_refused(kw: dict) -> None:
    with pytest.raises(SettingError):
        WorkloadSpec(**kw).validate()


def test_retry_cnt_travels_and_defaults_to_7() -> None:
    """retry_cnt (7 = retry forever on rxe) goes through the worker's start message; a
    spec written without it reads as 7."""
    spec = WorkloadSpec(count=8, retry_cnt=6)
    assert WorkloadSpec.from_json(spec.to_json()).retry_cnt == 6
    old = {k: v for k, v in spec.to_json().items() if k != "retry_cnt"}
    assert WorkloadSpec.from_json(old).retry_cnt == 7


def test_every_path_to_an_outcome() -> None:
    led = Ledger(WorkloadSpec(count=7).requests())
    led.posted(0, 1, 10)
    led.completed(0, "SUCCESS", 0, 20)
    led.posted(1, 1, 10)
    led.completed(1, "WR_FLUSH_ERR", 0, 20)
    led.retry(1)  # replayed on generation 2
    led.posted(1, 2, 30)
    led.completed(1, "SUCCESS", 0, 40)
    led.posted(2, 1, 10)
    led.completed(2, "LOC_QP_OP_ERR", 7, 20)
    led.posted(3, 1, 10)
    led.rejected(3, 22, "EINVAL")
    led.posted(4, 1, 10)  # never completes
    led.failed_to_app(5, "refused")
    assert led.unaccounted() == [4, 6]
    assert led.in_flight() == [4]
    led.finalize()
    assert led.unaccounted() == [6]  # never posted nor refused: a client bug shows here
    assert led.counts() == {"completed-error": 1, "completed-ok": 1, "failed-to-app": 1,
                            "lost": 1, "rejected-at-post": 1, "replayed-ok": 1,
                            "unaccounted": 1}
    assert led.entries[2].reason == "LOC_QP_OP_ERR vendor_err 7"
    back = Ledger.from_json(led.to_json())
    assert back.counts() == led.counts()
    assert back.entries[1].attempts[0].status == "WR_FLUSH_ERR"


def test_peer_view_once_duplicated_corrupted_missing() -> None:
    led = Ledger(WorkloadSpec(count=8).requests())  # SEND 0,4  WRITE 1,5
    arrivals = [{"seq": 1, "ok": True}, {"seq": 2, "ok": True}, {"seq": 2, "ok": True},
                {"seq": 5, "ok": False}, {"seq": None, "ok": False}]
    apply_peer_view(led, arrivals)
    peer = {i: e.peer for i, e in led.entries.items()}
    assert peer[0] is PeerView.DELIVERED_ONCE
    assert peer[1] is PeerView.DUPLICATED
    assert peer[4] is PeerView.CORRUPTED
    assert peer[5] is PeerView.MISSING
    assert peer[2] is PeerView.NOT_VISIBLE and peer[3] is PeerView.NOT_VISIBLE
    assert Outcome.LOST.value == "lost"

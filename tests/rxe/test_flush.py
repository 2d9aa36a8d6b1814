"""Moving a QP to ERR flushes its outstanding work requests, each one accounted for."""

from __future__ import annotations

from harness.core.errors import OsCallError
from harness.peer import traffic
from harness.rdma.names import QpState, wc_status_name
from harness.rdma.verbs import opcode


def test_err_flushes_every_outstanding_wr(rc_pair: traffic.Pair) -> None:
    qp = rc_pair.qp
    recv_ids = list(range(100, 100 + rc_pair.recv_slots))
    for i, wr_id in enumerate(recv_ids):  # nothing will arrive for these
        qp.post_recv(wr_id, i * 64, 64)
    qp.to_err()
    assert qp.state() is QpState.ERR
    wcs = qp.wait(len(recv_ids), what="flushed receives")
    assert sorted(int(w.wr_id) for w in wcs) == recv_ids
    assert {wc_status_name(int(w.status)) for w in wcs} == {"WR_FLUSH_ERR"}

    # sends posted on an ERR QP: each is either refused at post or flushed, never lost
    send_ids = [500, 501, 502, 503]
    refused, posted = [], []
    for wr_id in send_ids:
        try:
            qp.post_send(wr_id, opcode("SEND"), 0, 64)
            posted.append(wr_id)
        except OsCallError as exc:
            refused.append((wr_id, exc.errno))
    wcs = qp.wait(len(posted), what="flushed sends") if posted else []
    assert sorted(int(w.wr_id) for w in wcs) == posted
    assert all(wc_status_name(int(w.status)) == "WR_FLUSH_ERR" for w in wcs)
    assert len(refused) + len(wcs) == len(send_ids)
    assert qp.poll() == []  # nothing extra

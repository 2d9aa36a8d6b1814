"""RC traffic rxe0 (this process) <-> rxe1 (the peer agent process), payload checked where it lands.

Over this module more than 10,000 messages cross the veth wire.
"""

from __future__ import annotations

from harness.peer import traffic

SIZES = [1, 2, 7, 23, 24, 25, 64, 255, 1000, 1024, 4095, 4096, 4097, 16384, 65536]


def _assert_ok(stats: traffic.OpStats, messages: int) -> None:
    assert not stats.errors, stats.errors[:5]
    assert stats.messages == messages


def test_send_recv_all_sizes(rc_pair: traffic.Pair) -> None:
    sizes = SIZES * 20
    _assert_ok(traffic.send_messages(rc_pair, sizes), len(sizes))


def test_send_recv_many_small(rc_pair: traffic.Pair) -> None:
    sizes = [64] * 6000 + [1] * 1000 + [512] * 1000
    _assert_ok(traffic.send_messages(rc_pair, sizes), len(sizes))


def test_send_recv_one_mebibyte(local_device: object, peer_agent: object) -> None:
    mib = 1 << 20
    with traffic.connected_pair(local_device, peer_agent, local_mr=4 * mib, peer_mr=6 * mib,
                                recv_slots=4, slot_size=mib) as pair:
        sizes = [mib, mib - 1, 3 * (1 << 18), mib]
        _assert_ok(traffic.send_messages(pair, sizes), len(sizes))


def test_rdma_write_all_sizes(rc_pair: traffic.Pair) -> None:
    _assert_ok(traffic.write_messages(rc_pair, SIZES), len(SIZES))
    sizes = [4096] * 200
    _assert_ok(traffic.write_messages(rc_pair, sizes), len(sizes))


def test_rdma_read_all_sizes(rc_pair: traffic.Pair) -> None:
    _assert_ok(traffic.read_messages(rc_pair, SIZES), len(SIZES))
    sizes = [4096] * 200
    _assert_ok(traffic.read_messages(rc_pair, sizes), len(sizes))


def test_rdma_write_and_read_one_mebibyte(local_device: object, peer_agent: object) -> None:
    mib = 1 << 20
    with traffic.connected_pair(local_device, peer_agent, local_mr=2 * mib, peer_mr=3 * mib,
                                recv_slots=4, slot_size=4096) as pair:
        _assert_ok(traffic.write_messages(pair, [mib]), 1)
        _assert_ok(traffic.read_messages(pair, [mib]), 1)


def test_atomics_fetch_add_and_cmp_swap(rc_pair: traffic.Pair) -> None:
    _assert_ok(traffic.atomics(rc_pair, 100), 102)


def test_corruption_is_detected_by_the_peer(rc_pair: traffic.Pair) -> None:
    """The checks can fail: a WRITE whose bytes differ from its seq's pattern is flagged."""
    pair = rc_pair
    seq = pair.take_seq()
    pair.qp.write_local(0, traffic.payload.encode(seq + 1000, 4096))  # wrong seq's bytes
    pair.qp.post_send(seq, traffic.opcode("RDMA_WRITE"), 0, 4096,
                      remote_addr=pair.remote.addr, rkey=pair.remote.rkey)
    pair.qp.wait(1)
    rep = pair.agent.request("verify", qp_id=pair.qp_id, offset=0, length=4096, seq=seq)
    assert rep["ok"] is False and "seq" in rep["reason"]

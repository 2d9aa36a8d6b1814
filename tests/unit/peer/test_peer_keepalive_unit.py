"""What the peer agent does with the QPs of a client that is gone (harness/peer/keepalive.py):
they are destroyed PARTNER_KEEPALIVE_TIMEOUT_S after the client's connection closed, as a
target's keep-alive would; never before, never the controller's. The agent's part (its
connections, SO_PEERCRED, the destroy) is run on real rxe in tests/rxe/test_peer_keepalive.py.
"""

from __future__ import annotations

import os
import socket

from harness.peer.keepalive import PARTNER_KEEPALIVE_TIMEOUT_S, Owner, PartnerWatch, peer_pid

CTL, CLIENT, OTHER = Owner(0, 100, True), Owner(1, 338, False), Owner(2, 339, False)


def test_a_gone_clients_qps_fall_due_at_the_bound_and_not_before() -> None:
    w = PartnerWatch()
    w.own(1, CTL)
    w.own(2, CLIENT)
    w.own(3, CLIENT)
    w.own(4, OTHER)
    assert w.due(1e9) == [] and w.next_due() is None  # nobody has gone
    w.partner_gone(CLIENT.conn, 10.0)
    assert w.next_due() == 10.0 + PARTNER_KEEPALIVE_TIMEOUT_S
    assert w.due(10.0 + PARTNER_KEEPALIVE_TIMEOUT_S - 0.01) == []  # negative control
    assert w.due(10.0 + PARTNER_KEEPALIVE_TIMEOUT_S) == [2, 3]
    rep = w.report(12.5)
    assert [(q["qp_id"], q["partner_gone_s"]) for q in rep["qps"]] == [
        (1, None), (2, 2.5), (3, 2.5), (4, None)]
    r2 = w.destroyed(2, 15.5)
    w.destroyed(3, 15.5)
    assert (r2.owner_pid, r2.gone_s) == (338, 5.5)
    assert w.due(1e9) == [] and [q["qp_id"] for q in w.report(16)["qps"]] == [1, 4]
    assert [r["qp_id"] for r in w.report(16)["reaped"]] == [2, 3]


def test_the_controllers_qps_and_destroyed_ones_are_never_reaped() -> None:
    w = PartnerWatch()
    w.own(1, CTL)
    w.own(2, CLIENT)
    w.partner_gone(CTL.conn, 0.0)  # the agent exits when the controller goes: never watched
    assert w.due(1e9) == []
    w.forget(2)  # destroyed on request before its client went
    w.partner_gone(CLIENT.conn, 0.0)
    assert w.due(1e9) == [] and w.gone_at == {}


def test_peer_pid_is_the_connecting_process() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_pid(a) == os.getpid()

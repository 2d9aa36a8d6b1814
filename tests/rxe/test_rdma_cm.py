"""The same traffic through rdma_cm (listen/connect/accept/disconnect), and an orderly
disconnect that the peer sees.

The active side runs in a worker process (harness.peer.cm_check.run_cm_session_in_child):
librdmacm keeps a device's context open for the life of a process that used
rdma_cm on it, which would block every later delete of rxe0 until pytest exits.
"""

from __future__ import annotations

from harness.peer.cm_check import run_cm_session_in_child
from harness.system.holders import find_holders
from harness.topology.config import Topology

CM_PORT = 18515


def test_rdma_cm_connect_traffic_disconnect(rxe_topology: Topology) -> None:
    res = run_cm_session_in_child(rxe_topology.to_json(), CM_PORT)
    assert res["peer_connect_events"] == ["CONNECT_REQUEST", "ESTABLISHED"]
    for op in res["operations"]:
        assert op["ok"], op
    assert [op["messages"] for op in res["operations"]] == [200, 32, 32, 12]
    assert res["peer_disconnect_events"] == ["DISCONNECTED"]
    # the peer moved its QP to ERR on DISCONNECTED: every posted receive flushed, none lost
    flushed = res["peer_flushed"]
    assert {ev["status"] for ev in flushed} == {"WR_FLUSH_ERR"}
    assert len(flushed) == res["slots"]
    # the worker is gone, and with it librdmacm's hold on the local device
    assert find_holders(rxe_topology.local.dev) == []

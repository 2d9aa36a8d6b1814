"""rxe's own behaviour around a power-down, as measured in ../shared/notes section 5.

These pin the kernel's behaviour: a kernel that behaves differently fails here
first, before the power shim's results are misread.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from harness.peer import traffic
from harness.rdma.names import QpState, wc_status_name
from harness.rdma.verbs import Device, opcode
from harness.system.holders import find_holders
from harness.topology import devices, netdevs
from harness.topology.config import Topology, TopologyConfig

BLOCKED_OBSERVATION_S = 2.0  # how long the delete must stay blocked to count as blocked
DELETE_AFTER_CLOSE_TIMEOUT_S = 5.0


def test_link_down_errors_the_qp_and_it_stays_in_err(rxe_topology: Topology,
                                                      rxe_config: TopologyConfig,
                                                      rc_pair: traffic.Pair) -> None:
    """Link down: port DOWN at once; a SEND is accepted by post_send, then completes with
    LOC_QP_OP_ERR (rxe's requester refuses to transmit on a down port and errors the QP).
    After link up the port is ACTIVE again but the QP stays in ERR: rxe does not recover a
    QP by itself, the client must re-create or reset and reconnect it."""
    loc = rxe_topology.local
    assert traffic.send_messages(rc_pair, [64] * 10).ok
    netdevs.set_netdev_up(loc.netdev, False)
    try:
        devices.wait_port_state(loc.dev, "DOWN")
        peer_state_while_down = devices.port_state(rxe_topology.peer.dev)
        rc_pair.qp.write_local(0, traffic.payload.encode(1, 64))
        rc_pair.qp.post_send(1, opcode("SEND_WITH_IMM"), 0, 64, imm=1)
        wcs = rc_pair.qp.wait(1, what="the SEND posted while the link is down")
        assert wc_status_name(int(wcs[0].status)) == "LOC_QP_OP_ERR"
        assert rc_pair.qp.state() is QpState.ERR
    finally:  # link up *with its route*: the kernel dropped the route with the link
        netdevs.side_up(rxe_config, "local")
    devices.wait_port_state(loc.dev, "ACTIVE")
    assert rc_pair.qp.state() is QpState.ERR
    # a veth wire has no switch: the peer's end loses carrier with ours (recorded, not hidden)
    print(f"peer port state while the local link was down: {peer_state_while_down}")
    devices.wait_port_state(rxe_topology.peer.dev, "ACTIVE")


def test_delete_blocks_while_held_and_finishes_after_close(
        rxe_topology: Topology, rxe_config: TopologyConfig) -> None:
    """`rdma link delete` of a device held open does not fail and does not finish: rxe has
    no disassociate_ucontext, so the kernel waits for every uverbs file to close. The
    device vanishes from `rdma link show` at once; the holder is named by /proc; once
    the Context closes the delete completes promptly. The peer's rxe1 stays ACTIVE."""
    loc = rxe_topology.local
    dev = Device(loc.dev, loc.port, loc.gid_index)
    proc = None
    try:
        holders = find_holders(loc.dev)
        assert any(h.pid == dev_pid() for h in holders), holders
        proc = subprocess.Popen(["rdma", "link", "delete", loc.dev], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        devices.wait_port_state(loc.dev, None)  # gone from the list at once
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=BLOCKED_OBSERVATION_S)  # ...but the delete is still blocked
        assert devices.port_state(rxe_topology.peer.dev) == "ACTIVE"
    finally:
        dev.close()
    t0 = time.monotonic()
    assert proc.wait(timeout=DELETE_AFTER_CLOSE_TIMEOUT_S) == 0
    took = time.monotonic() - t0
    print(f"delete finished {took * 1000:.0f} ms after the Context closed")
    assert devices.port_state(rxe_topology.peer.dev) == "ACTIVE"
    devices.add_rdma_link(loc.dev, loc.netdev)
    devices.wait_ports_active(rxe_config)


def dev_pid() -> int:
    import os

    return os.getpid()


PROVIDER_RUN_TIMEOUT_S = 60.0  # examples/wr_api_client, 200 SENDs rxe0 -> rxe1


def test_provider_cq_ex_poll_to_enoent_overruns_the_consumer_index(
        rxe_topology: Topology) -> None:
    """rdma-core 44's rxe provider (the guest's; the fault is in every version before 55):
    polling an extended CQ as its man page shows (ibv_start_poll, ibv_next_poll until
    ENOENT, ibv_end_poll) advances the CQ's consumer index once too often, past the
    producer: the next ibv_start_poll reads stale entries as new completions. Untraced,
    examples/wr_api_client with `drain` polls that way; the receiver reposts a receive for
    every stale "completion" until its receive ring is full and ibv_post_recv fails with
    ENOMEM, at the first repost. (This ENOMEM was blamed on the tracer while
    test_extended_verbs_followed was an expected failure.) Fixed upstream in rdma-core 55,
    b78b414e0 "rxe: fix completion queue consumer index overrun": on a fixed provider this
    test fails, and the example's workaround can go."""
    from clients.tracer.traced import example_program

    loc, peer = rxe_topology.local, rxe_topology.peer
    argv = [str(example_program("wr_api_client")), loc.dev, str(loc.gid_index), peer.dev,
            str(peer.gid_index), "200"]
    drained = subprocess.run([*argv, "drain"], capture_output=True, text=True,
                             timeout=PROVIDER_RUN_TIMEOUT_S, check=False)
    print(f"drain: exit {drained.returncode}: {drained.stdout}{drained.stderr}")
    assert drained.returncode == 1, drained.stdout + drained.stderr
    assert drained.stderr.splitlines() == [
        "ibv_post_recv: errno 12 (Cannot allocate memory)"], drained.stderr
    # the same program polling only what is known to be there: every SEND completes
    known = subprocess.run(argv, capture_output=True, text=True,
                           timeout=PROVIDER_RUN_TIMEOUT_S, check=False)
    assert known.returncode == 0, known.stdout + known.stderr
    assert known.stdout.strip() == "wr_api_client: 200 sends completed, 200 received"

"""The peer agent destroys the QPs of a client that died, after its keep-alive bound, as a
real target would (harness/peer/keepalive.py); on real rxe.

A client process connects to the agent's socket, makes a QP over it and is SIGKILLed.
The agent names the QP's owner (its pid, from SO_PEERCRED) and how long it has been
gone, keeps the QP for PARTNER_KEEPALIVE_TIMEOUT_S, then destroys it: rxe1's `rdma res`
is back to what it was before the client came. Negative controls: a QP the controller
made, and one of a client that is still connected, outlive the bound.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from harness.core.errors import RxePowerError
from harness.peer.controller import PeerAgent
from harness.peer.keepalive import PARTNER_KEEPALIVE_TIMEOUT_S
from harness.system.rdma_res import res_summary
from harness.topology.config import Topology

REAP_SLACK_S = 3.0  # the agent's loop turns at most every SELECT_TICK_S (0.5 s); TCG is slow
CLIENT_READY_TIMEOUT_S = 60.0

CLIENT = """
import socket, sys, time
sys.path.insert(0, sys.argv[1])
from harness.core.protocol import Channel
from harness.core.schemas import ChannelKind
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[2])
ch = Channel(s, "test client", ChannelKind.PEER)
rep = ch.request("create_qp", 30.0, mr_size=1 << 16, recv_slots=4, slot_size=4096,
                 write_slots=0)
print(rep["qp_id"], flush=True)
time.sleep(600)
"""


def client(agent: PeerAgent) -> tuple[subprocess.Popen[str], int]:
    root = str(Path(harness.__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-P", "-c", CLIENT, root, agent.sock_path],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded by the test's timeout
    assert line.strip().isdigit(), f"the client did not make its QP: {line!r}"
    return proc, int(line)


def qps(agent: PeerAgent) -> dict[int, dict]:
    return {q["qp_id"]: q for q in agent.request("holders")["qps"]}


@pytest.mark.timeout(120)
def test_a_dead_clients_qp_is_destroyed_after_the_keepalive(rxe_topology: Topology) -> None:
    with PeerAgent(rxe_topology.peer) as agent:
        base = res_summary()[rxe_topology.peer.dev]
        own_id, _ = agent.create_qp(mr_size=1 << 17, recv_slots=4)  # the controller's
        dead, dead_qp = client(agent)
        alive, alive_qp = client(agent)
        try:
            held = qps(agent)
            assert held[dead_qp]["owner_pid"] == dead.pid
            assert held[alive_qp]["owner_pid"] == alive.pid
            assert held[own_id]["controller"] and held[dead_qp]["partner_gone_s"] is None
            dead.send_signal(signal.SIGKILL)
            dead.wait(10)
            killed_at = time.monotonic()
            deadline = killed_at + PARTNER_KEEPALIVE_TIMEOUT_S + REAP_SLACK_S
            seen_waiting = False
            while dead_qp in (now := qps(agent)) and time.monotonic() < deadline:
                gone = now[dead_qp]["partner_gone_s"]
                assert gone is not None and gone < PARTNER_KEEPALIVE_TIMEOUT_S + REAP_SLACK_S
                seen_waiting = True
                time.sleep(0.2)
            reaped_after = time.monotonic() - killed_at
            assert dead_qp not in qps(agent), f"still there {reaped_after:.1f} s after the kill"
            assert seen_waiting  # it was kept for a while, not destroyed at once
            assert reaped_after >= PARTNER_KEEPALIVE_TIMEOUT_S - 0.5, reaped_after
            (rec,) = agent.request("holders")["reaped"]
            assert rec["qp_id"] == dead_qp and rec["owner_pid"] == dead.pid
            assert rec["gone_s"] >= PARTNER_KEEPALIVE_TIMEOUT_S
            left = qps(agent)
            assert own_id in left and alive_qp in left  # the negative controls
            # its record of arrivals stays readable (the controller accounts a client after
            # it has gone) until the controller destroys it; then the QP is unknown
            got = agent.arrivals(dead_qp, 0, timeout_s=0)
            assert got["arrivals"] == [] and not got["more"], got
            assert agent.request("destroy_qp", qp_id=dead_qp) == {"reaped": True}
            with pytest.raises(RxePowerError, match=f"no QP with id {dead_qp}"):
                agent.arrivals(dead_qp, 0, timeout_s=0)
            print(f"the dead client's QP was destroyed {reaped_after:.2f} s after the kill "
                  f"(bound {PARTNER_KEEPALIVE_TIMEOUT_S:g} s); the agent's record {rec}")
        finally:
            alive.kill()
            alive.wait(10)
            if dead.poll() is None:
                dead.kill()
                dead.wait(10)
        agent.request("destroy_qp", qp_id=own_id)
        deadline = time.monotonic() + PARTNER_KEEPALIVE_TIMEOUT_S + REAP_SLACK_S
        while res_summary()[rxe_topology.peer.dev] != base and time.monotonic() < deadline:
            time.sleep(0.2)
        assert res_summary()[rxe_topology.peer.dev] == base

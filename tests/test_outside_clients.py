"""Programs that are not ours under the shim: perftest's ib_send_bw and rdma-core's
ibv_rc_pingpong drive traffic rxe0 <-> rxe1 (server on rxe1, client on rxe0) while the
shim takes rxe0 through a transition with --on-veto force.

rxe cannot take a held device away (no disassociate): the delete blocks on the client's
open context, the shim names it (pid and command line) and terminates it. The server on
rxe1 is ours to clean up: it is killed, bounded, whatever happened.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness import cmdjson, topology
from harness.holders import find_holders
from harness.proc import wait_or_kill
from power.plan import OnVeto
from power.result import Verdict

pytestmark = pytest.mark.rxe

START_TIMEOUT_S = 30.0  # server listening, then the client holding rxe0 with traffic flowing
SERVER_STOP_TIMEOUT_S = 5.0  # SIGTERM -> SIGKILL for what we started
CLIENT_EXIT_TIMEOUT_S = 10.0  # the forced client reaped after the transition
POLL_S = 0.05
TRAFFIC_PKTS = 200  # rxe0 packets sent once the client holds the device: traffic flows
DURATION_S = 30  # ib_send_bw -D: longer than any transition here
ITERS = 100_000_000  # ibv_rc_pingpong -n: never runs out during a test
HOLD_MS = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def argvs(program: str, topo: topology.Topology, port: int) -> tuple[list[str], list[str]]:
    """(server on the peer HCA, client on the local HCA to the peer's address)."""
    loc, peer = topo.local, topo.peer
    if program == "ib_send_bw":
        common = ["-p", str(port), "-D", str(DURATION_S), "-F"]
        return (["ib_send_bw", "-d", peer.dev, "-x", str(peer.gid_index), *common],
                ["ib_send_bw", "-d", loc.dev, "-x", str(loc.gid_index), *common, peer.addr])
    common = ["-p", str(port), "-n", str(ITERS), "-s", "4096"]
    return (["ibv_rc_pingpong", "-d", peer.dev, "-g", str(peer.gid_index), *common],
            ["ibv_rc_pingpong", "-d", loc.dev, "-g", str(loc.gid_index), *common, peer.addr])


def sent_pkts(dev: str) -> int:
    return int(cmdjson.run_json(["rdma", "-j", "statistic", "show", "link", f"{dev}/1"])[0]
               ["sent_pkts"])


def listening(pid: int, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False


def wait_until(cond, what: str, proc: subprocess.Popen, deadline: float) -> None:
    while not cond():
        assert proc.poll() is None, f"{proc.args[0]} exited {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"{what}: not within START_TIMEOUT_S"
        time.sleep(POLL_S)  # polling interval of a bounded wait


@contextlib.contextmanager
def outside(program: str, topo: topology.Topology,
            log_dir: Path) -> Iterator[tuple[subprocess.Popen, subprocess.Popen]]:
    """Server on rxe1, then the client on rxe0, with traffic flowing; both stopped
    (bounded) afterwards, whatever happened."""
    port = _free_port()
    srv_argv, cli_argv = argvs(program, topo, port)
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen] = []
    try:
        with open(log_dir / f"{program}-server.log", "w") as srv_log, \
                open(log_dir / f"{program}-client.log", "w") as cli_log:
            srv = subprocess.Popen(srv_argv, stdin=subprocess.DEVNULL, stdout=srv_log,
                                   stderr=subprocess.STDOUT)
            started.append(srv)
            deadline = time.monotonic() + START_TIMEOUT_S
            wait_until(lambda: listening(srv.pid, port), "the server listened", srv, deadline)
            base = sent_pkts(topo.local.dev)
            cli = subprocess.Popen(cli_argv, stdin=subprocess.DEVNULL, stdout=cli_log,
                                   stderr=subprocess.STDOUT)
            started.append(cli)
            wait_until(lambda: any(h.pid == cli.pid for h in find_holders(topo.local.dev)),
                       "the client opened rxe0", cli, deadline)
            wait_until(lambda: sent_pkts(topo.local.dev) - base >= TRAFFIC_PKTS,
                       "traffic flowed", cli, deadline)
            yield srv, cli
    finally:
        for p in reversed(started):
            if p.poll() is None:
                p.terminate()
            wait_or_kill(p, SERVER_STOP_TIMEOUT_S)


@pytest.mark.parametrize("transition", ["standby", "surprise-removal"])
@pytest.mark.parametrize("program", ["ib_send_bw", "ibv_rc_pingpong"])
def test_outside_program_forced(power_shim, rxe_topology, results_dir, program,
                                transition) -> None:
    """The client program holds rxe0 when the delete comes: the shim names it as the only
    holder by pid and command line (argv0 = the program), terminates it (SIGTERM), and the
    transition completes as forced with rxe1 ACTIVE throughout; the server on rxe1 is
    stopped by the test."""
    with outside(program, rxe_topology, results_dir / "logs") as (srv, cli):
        res = power_shim.run(transition, hold_ms=HOLD_MS, on_veto=OnVeto.FORCE)
        cli_rc = cli.wait(CLIENT_EXIT_TIMEOUT_S)
        srv_alive = srv.poll() is None
    veto = res.veto
    print(f"{program} under {transition}: verdict {res.verdict}; client exit {cli_rc}; "
          f"server still running after: {srv_alive}; veto "
          f"{veto.to_json() if veto else None}")
    assert res.verdict is Verdict.FORCED, res.reasons
    assert res.peer_active_throughout
    held = {h["pid"]: h["cmdline"] for h in veto.holders}
    assert list(held) == [cli.pid], held
    assert held[cli.pid].split()[0] == program and f"-d {rxe_topology.local.dev}" in held[cli.pid]
    assert {t["pid"]: t["how"] for t in veto.terminated} == {cli.pid: "SIGTERM"}
    assert cli_rc == -signal.SIGTERM

"""Programs that are not ours under the shim: perftest's ib_send_bw and rdma-core's
ibv_rc_pingpong drive traffic rxe0 <-> rxe1 (server on rxe1, client on rxe0 to the
peer's address) while the shim takes rxe0 through standby or surprise removal with
--on-veto force.

rxe cannot take a held device away (no disassociate): the delete blocks on the client's
open context, the shim names it (pid and command line) and terminates it. Under standby
the carrier drops first, and a client that is sending at that moment gets LOC_QP_OP_ERR
and exits by itself, racing the delete (measured: ibv_rc_pingpong was gone first in 6
of 10 runs, otherwise named and forced); so standby is run with ib_send_bw
--reversed (rxe0 only receives: it is always still there to be named), and pingpong
under standby is checked for whichever of the two outcomes happened. The server on
rxe1 is ours to clean up: stopped, bounded, whatever happened.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.core.proc import stop_child
from harness.system import command
from harness.system.holders import find_holders
from harness.topology.config import Topology
from harness.workload.ledger import Outcome
from power.plan import OnVeto, StepKind
from power.result import Verdict

START_TIMEOUT_S = 30.0  # server listening, then the client holding rxe0 with traffic flowing
SERVER_STOP_TIMEOUT_S = 5.0  # SIGTERM -> SIGKILL for what we started
CLIENT_EXIT_TIMEOUT_S = 10.0  # the forced client reaped after the transition
POLL_S = 0.05
TRAFFIC_PKTS = 200  # rxe0 packets sent + received once the client holds it: traffic flows
DURATION_S = 30  # ib_send_bw -D: longer than any transition here
ITERS = 100_000_000  # ibv_rc_pingpong -n: never runs out during a test
HOLD_MS = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def argvs(program: str, topo: Topology, port: int,
          extra: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(server on the peer HCA, client on the local HCA to the peer's address)."""
    loc, peer = topo.local, topo.peer
    if program == "ib_send_bw":
        # 4 KiB messages, 16 in flight: at its defaults (64 KiB, 128 in flight, ~8000
        # packets on the wire) ib_send_bw rxe0 -> rxe1 failed by itself in 2 of 6 runs under
        # TCG, REM_INV_REQ_ERR (status 9) after 389 and 1468 messages, with no transition
        common = ["-p", str(port), "-D", str(DURATION_S), "-F", "-s", "4096", "-t", "16",
                  *extra]
        return (["ib_send_bw", "-d", peer.dev, "-x", str(peer.gid_index), *common],
                ["ib_send_bw", "-d", loc.dev, "-x", str(loc.gid_index), *common, peer.addr])
    common = ["-p", str(port), "-n", str(ITERS), "-s", "4096"]
    return (["ibv_rc_pingpong", "-d", peer.dev, "-g", str(peer.gid_index), *common],
            ["ibv_rc_pingpong", "-d", loc.dev, "-g", str(loc.gid_index), *common, peer.addr])


def wire_pkts(dev: str) -> int:
    """Packets rxe sent and received on port 1 (data and ACKs), from its counters."""
    row = command.run_json(["rdma", "-j", "statistic", "show", "link", f"{dev}/1"])[0]
    return int(row["sent_pkts"]) + int(row["rcvd_pkts"])


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
def outside(program: str, topo: Topology, log_dir: Path, tag: str,
            extra: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen, subprocess.Popen]]:
    """Server on rxe1, then the client on rxe0, with traffic flowing; both stopped
    (bounded) afterwards, whatever happened. Their output goes to LOG_DIR/TAG-*.log."""
    port = _free_port()
    srv_argv, cli_argv = argvs(program, topo, port, extra)
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen] = []
    try:
        with open(log_dir / f"{tag}-server.log", "w") as srv_log, \
                open(log_dir / f"{tag}-client.log", "w") as cli_log:
            srv = subprocess.Popen(srv_argv, stdin=subprocess.DEVNULL, stdout=srv_log,
                                   stderr=subprocess.STDOUT)
            started.append(srv)
            deadline = time.monotonic() + START_TIMEOUT_S
            wait_until(lambda: listening(srv.pid, port), "the server listened", srv, deadline)
            base = wire_pkts(topo.local.dev)
            cli = subprocess.Popen(cli_argv, stdin=subprocess.DEVNULL, stdout=cli_log,
                                   stderr=subprocess.STDOUT)
            started.append(cli)
            wait_until(lambda: any(h.pid == cli.pid for h in find_holders(topo.local.dev)),
                       "the client opened rxe0", cli, deadline)
            wait_until(lambda: wire_pkts(topo.local.dev) - base >= TRAFFIC_PKTS,
                       "traffic flowed", cli, deadline)
            yield srv, cli
    finally:
        for p in reversed(started):
            if p.poll() is None:
                p.terminate()
            stop_child(p, SERVER_STOP_TIMEOUT_S)


def check_named_and_forced(res, cli: subprocess.Popen, program: str, dev: str) -> None:
    """The client was the only holder, named by pid and command line, and terminated."""
    assert res.verdict is Verdict.FORCED, res.reasons
    held = {h["pid"]: h["cmdline"] for h in res.veto.holders}
    assert list(held) == [cli.pid], held
    argv = held[cli.pid].split()
    assert argv[0] == program and argv[argv.index("-d") + 1] == dev, argv
    how = {t["pid"]: t["how"] for t in res.veto.terminated}
    assert list(how) == [cli.pid] and how[cli.pid] in ("SIGTERM", "SIGKILL"), how
    # the shim reaped it (psutil), so Popen sees no exit status: it is gone, that is all
    assert cli.poll() is not None and not psutil.pid_exists(cli.pid)


# (program, its extra options, transition): the local side holds rxe0 when the delete comes
FORCED_CASES = [
    # (ib_send_bw sending under surprise-removal: test_forced_client_log_survives in
    # tests/rxe/test_tracer_transitions.py, traced, with the same checks; ibv_rc_pingpong
    # under surprise-removal: tests/rxe/test_power.py, through the CLI)
    # the server on rxe1 sends (--reversed): rxe0 only receives, so the carrier drop gives
    # it no error and it still holds the device at the delete
    ("ib_send_bw", ("--reversed",), "standby"),
]


@pytest.mark.parametrize("program, extra, transition", FORCED_CASES,
                         ids=[f"{p}{''.join(e)}-{t}" for p, e, t in FORCED_CASES])
def test_outside_holder_named_and_forced(power_shim, rxe_topology, results_dir, program,
                                         extra, transition, request) -> None:
    """The client program holds rxe0 when the delete comes: the shim names it as the only
    holder by pid and command line (argv0 = the program, -d rxe0), terminates it (SIGTERM
    was enough in every run: ~0.8-1.2 s of blocked delete), and the transition completes
    as forced with rxe1 ACTIVE throughout and the topology whole (power_shim checks); the
    server on rxe1 keeps retrying into the void (retry_cnt 7) until the test kills it."""
    with outside(program, rxe_topology, results_dir / "logs", request.node.name,
                 extra) as (srv, cli):
        res = power_shim.run(transition, hold_ms=HOLD_MS, on_veto=OnVeto.FORCE)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cli.wait(CLIENT_EXIT_TIMEOUT_S)
        srv_alive = srv.poll() is None
    print(f"{program} {' '.join(extra)} under {transition}: verdict {res.verdict}; delete "
          f"blocked {res.veto.blocked_s:.2f} s; holders {res.veto.holders}; terminated "
          f"{res.veto.terminated}; server still running after: {srv_alive}")
    assert res.peer_active_throughout
    check_named_and_forced(res, cli, program, rxe_topology.local.dev)


def test_pingpong_under_standby(power_shim, rxe_topology, results_dir, tmp_path,
                                request) -> None:
    """ibv_rc_pingpong under standby (force), both ends traced, races the carrier drop;
    both ends were measured (10 runs: 6 and 4), and which one happened is decided from
    evidence the program does not write itself, then printed:
    - `errored`: rxe0's last SEND was still unacknowledged, its retransmission met the
      down port: the tracer's log has a SEND completed LOC_QP_OP_ERR after the carrier
      dropped and before the delete ended (in a loaded guest it came 21 ms after the
      delete began: the program let go before the shim looked), the log is closed (it
      exited by itself, 1,
      "Failed status local QP operation error"), and the shim found no holder (verdict
      completed);
    - `held`: it had its ACK and was waiting for rxe1's message: no error completion in
      its log before the delete began, the log has no END (it never exited by itself), and
      the shim named it as the only holder and terminated it (verdict forced).
    Anything else fails. Either way rxe1 stays ACTIVE and the topology is whole."""
    from tests.rxe.tracing import check_accounted, ledgers, traced, wait_first_completion

    port = _free_port()
    srv_argv, cli_argv = argvs("ibv_rc_pingpong", rxe_topology, port)
    tdir, tag = tmp_path / "trace", request.node.name
    with traced(srv_argv, cli_argv, port, tdir, results_dir / "logs", tag) as (_srv, cli):
        wait_first_completion(tdir, cli.pid, cli)
        res = power_shim.run("standby", hold_ms=HOLD_MS, on_veto=OnVeto.FORCE)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cli.wait(CLIENT_EXIT_TIMEOUT_S)
    log = (results_dir / "logs" / f"{tag}-client.log").read_text()
    client = ledgers(tdir, results_dir / "trace" / tag)[cli.pid]
    check_accounted(client)
    down, delete = res.step(StepKind.PORT_DOWN), res.step(StepKind.DELETE_DEVICE)
    assert down is not None and delete is not None, res.steps
    errors = sorted((r for r in client.sends() if r.outcome is Outcome.COMPLETED_ERROR),
                    key=lambda r: r.completed_ns or 0)
    behaviour = "held" if res.veto.holders else "errored"
    print(f"ibv_rc_pingpong under standby: behaviour {behaviour}; verdict {res.verdict}; "
          f"holders {res.veto.holders}; exit {cli.returncode}; errors "
          f"{[(r.status, r.completed_ns) for r in errors[:3]]}; carrier down at "
          f"{down.begin_ns}, delete at {delete.begin_ns}; its log ends {log[-200:]!r}")
    assert res.peer_active_throughout
    if behaviour == "held":
        check_named_and_forced(res, cli, "ibv_rc_pingpong", rxe_topology.local.dev)
        assert not client.closed, "its log has END: it exited by itself, yet it held rxe0"
        assert not [r for r in errors if (r.completed_ns or 0) < delete.begin_ns], errors
        assert "Failed status" not in log, log[-300:]
        return
    assert res.verdict is Verdict.COMPLETED, res.reasons
    assert errors, ("none of the known ends: nobody held rxe0 at the delete, yet its log "
                    f"has no error completion; counts {dict(client.counts())}")
    first = errors[0]
    assert first.status == "LOC_QP_OP_ERR", first
    assert down.begin_ns <= (first.completed_ns or 0) < delete.end_ns, (first, down, delete)
    assert client.closed and cli.returncode == 1, (client.closed, cli.returncode)
    assert "Failed status local QP operation error" in log, log[-300:]

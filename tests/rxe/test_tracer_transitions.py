"""Unmodified verbs programs under the verbs tracer through transitions (the suite's
default rdma_rxe, whose delete blocks on a holder): ibv_rc_pingpong, ib_send_bw,
ib_write_bw and rping (rdma_cm) under link-flap through the matrix's own path for `--client-cmd`
(harness/run/outside.py), a holder forced out by surprise-removal, and the two C examples
(one that speaks the notify protocol, one that ignores every error). Every request of
every program gets exactly one outcome; what each program made of the transition is
printed as its row. Standby with the removal a real HCA does: test_tracer_standby.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.tracer.traced import example_program, make_trace_dir, traced_env
from harness.core.errors import BoundExceeded
from harness.core.proc import stop_child
from harness.run.outside import OutsideSpec, run_outside
from harness.run.records import ScenarioKey
from harness.run.rows import RowStatus
from harness.topology.config import Topology
from harness.workload.ledger import Outcome
from harness.workload.traced_ledger import build_ledger
from harness.workload.traced_peer import match_peer
from harness.workload.traced_types import EndedBy, FindingKind
from harness.workload.tracelog import read_log
from power.plan import OnVeto, Ordering, StepKind
from power.result import TransitionRequest, Verdict
from tests.rxe.test_outside_clients import _free_port, check_named_and_forced
from tests.rxe.tracing import (
    POLL_S,
    STOP_TIMEOUT_S,
    bw_argv,
    check_accounted,
    check_flap_row,
    flap_behaviour,
    ledgers,
    traced,
    wait_exit,
    wait_first_completion,
)

PROGRAMS = ("ibv_rc_pingpong", "ib_send_bw", "ib_write_bw")
# ib_*_bw -D: traffic through the transition, then the programs end. The transition starts
# at the client's first completion, but the shim reaches the carrier only after its own
# preparation (the topology's precondition, the kernel-log marker, both devices' async
# event channels): measured beside a CPU hog (CI 13, 7 Dec), a 4 s run had ended before
# the carrier dropped (4768 SENDs, every one before the flap: the row `missed`). 15 s
# leaves the transition its time on a slow machine; the programs end by themselves after.
BW_DURATION_S = 15
PINGPONG_ITERS = 100_000_000  # pingpong has no duration mode: it never runs out here
# after the transition: perftest ends by itself once its duration is over (within ~2 s)
PROGRAM_EXIT_TIMEOUT_S = BW_DURATION_S + 5.0  # from the transition's end: the rest of -D
# a pingpong never ends by itself unless it errors: one that went on (or hangs polling a
# device that is gone) is judged and stopped after this long
PINGPONG_EXIT_TIMEOUT_S = 3.0
RPING_EXIT_TIMEOUT_S = 3.0  # rping without a count: as a pingpong


def program_spec(program: str) -> OutsideSpec:
    """The program's client and server commands, as a user gives them to `matrix`."""
    if program == "rping":  # no -C: it pings until it errors or is stopped
        return OutsideSpec("rping -c -a {peer_addr} -p {port} -V",
                           "rping -s -a {peer_addr} -p {port} -V",
                           RPING_EXIT_TIMEOUT_S).validate()
    if program == "ibv_rc_pingpong":
        common = f"-n {PINGPONG_ITERS} -s 4096 -p {{port}}"
        return OutsideSpec(f"ibv_rc_pingpong -d {{dev}} -g {{gid}} {common} {{peer_addr}}",
                           f"ibv_rc_pingpong -d {{peer_dev}} -g {{peer_gid}} {common}",
                           PINGPONG_EXIT_TIMEOUT_S).validate()
    # 4 KiB, 16 in flight: perftest's defaults fail by themselves under TCG
    # (tests/rxe/test_outside_clients.py)
    common = f"-F -s 4096 -t 16 -D {BW_DURATION_S} -p {{port}}"
    return OutsideSpec(f"{program} -d {{dev}} -x {{gid}} {common} {{peer_addr}}",
                       f"{program} -d {{peer_dev}} -x {{peer_gid}} {common}",
                       PROGRAM_EXIT_TIMEOUT_S).validate()


def run_program(power_shim: Any, topo: Topology, program: str, transition: str,
                log_dir: Path) -> tuple[dict[str, Any], Any]:
    """One scenario through the matrix's path: (the outside record, its table row)."""
    req = TransitionRequest(transition, Ordering.HCA_FIRST, on_veto=OnVeto.FORCE)
    try:
        res = run_outside(power_shim.shim, topo, req, program_spec(program), log_dir)
    except BoundExceeded:
        # seen once: an ib_send_bw pair right after a link-flap test opened its devices and
        # never got further (its own TCP rendezvous?): what the network looked like then
        for argv in (["ip", "-j", "neigh", "show"], ["ss", "-tanp"],
                     ["ip", "route", "show", "table", "all"]):
            out = subprocess.run(argv, capture_output=True, text=True, check=False)
            print(" ".join(argv), "->", out.stdout[-3000:], out.stderr[-500:])
        raise
    (row,) = res.rows(ScenarioKey(transition, Ordering.HCA_FIRST.value, (res.program.program,),
                                  "program", f"{transition}-{program}"))
    result = res.to_json()  # the record's `result`, as the results file has it
    out = result["outside"]
    print(f"{program} under {transition}: verdict {result['transition']['verdict']}; "
          f"exit {out['exit']} (stopped {out['stopped_by_harness']}, terminated "
          f"{out['terminated_by_shim']}); sends {out['counts']}; receives "
          f"{out['receive_counts']}; peer {out['peer_counts']}; recovery "
          f"{out['recovery_ms']} ms; wire ready after {out.get('wire_ready_ms')} ms; row "
          f"{row.status.value}: {row.findings}")
    return result, row


def check_program_accounted(out: dict[str, Any], program: str) -> None:
    """Every request of the program has one outcome, every completion found its request,
    traffic flowed before the transition, and nothing reached the peer twice."""
    assert out["traced"], out["findings"]
    assert out["unaccounted"] == 0 and out["unmatched_completions"] == 0, out
    assert out["counts"].get(Outcome.COMPLETED_OK.value, 0) > 0, out["counts"]
    assert sum(out["counts"].values()) > 0
    if program != "ib_write_bw":  # RDMA WRITE lands without the peer's CPU: nothing to match
        assert out["peer_counts"]["delivered-once"] > 0, out["peer_counts"]
    assert out["peer_counts"].get("duplicated", 0) == 0, out["peer_counts"]


def test_forced_client_log_survives(power_shim, rxe_topology, results_dir, tmp_path,
                                    request) -> None:
    """ib_send_bw holds rxe0 when the shim removes it (surprise-removal, --on-veto force):
    the shim terminates it, so it never reaches exit() and its log has no END record; the
    records written up to the kill are there (shared mapping) and the ledger accounts for
    every request: what was in flight is `lost`, saying the process did not exit."""
    port = _free_port()
    loc, peer = rxe_topology.local, rxe_topology.peer
    d = ["-D", "30"]
    tdir = tmp_path / "trace"
    with traced(bw_argv("ib_send_bw", peer, port, *d),
                [*bw_argv("ib_send_bw", loc, port, *d), peer.addr], port, tdir,
                results_dir / "logs", request.node.name) as (_srv, cli):
        wait_first_completion(tdir, cli.pid, cli)
        res = power_shim.run("surprise-removal", hold_ms=200, on_veto=OnVeto.FORCE)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cli.wait(STOP_TIMEOUT_S)
    print(f"surprise-removal verdict {res.verdict}; terminated {res.veto.terminated}")
    # named as the only holder by pid and command line, and terminated
    check_named_and_forced(res, cli, "ib_send_bw", rxe_topology.local.dev)
    client = ledgers(tdir, results_dir / "trace" / request.node.name)[cli.pid]
    assert not client.closed
    check_accounted(client)
    assert client.counts()[Outcome.COMPLETED_OK.value] > 0
    lost = [r for r in client.sends() if r.outcome is Outcome.LOST]
    assert lost and {r.ended_by for r in lost} == {EndedBy.LOG_ENDED}, lost[:3]
    assert os.path.getsize(tdir / f"rxe-power-trace.{cli.pid}.bin") % 64 == 0


EXAMPLE_RUN_S = 6  # the examples' traffic time: longer than the transition (500 ms hold)
SOCKET_TIMEOUT_S = 10.0  # notify_client's socket in the clients directory
# notify_client's traffic time, and a standby hold longer than all of it: its time runs out
# while it is released (CI once saw it then poll its closed device and die of SIGSEGV)
# its traffic time: longer than the shim's preparation before the notice can take (beside
# a CPU hog, CI 14 of 7 Dec, a 4 s client had ended before the notice went out: no socket,
# answers []); the hold longer than all of it, so a client that counted its released time
# would be gone before resume
NOTIFY_RUN_S = 10
NOTIFY_HOLD_MS = 11000
# broken_client's traffic time: beside a CPU hog (CI 17 of 7 Dec) a 6 s client had sent
# all its 1910 SENDs before the shim, after its preparation, dropped the carrier: the
# flap missed it, and the test then failed as "no behaviour"; a missed flap fails first now
BROKEN_RUN_S = 12


@contextlib.contextmanager
def traced_example(name: str, topo: Topology, tdir: Path, log_dir: Path, tag: str,
                   clients_dir: Path, run_s: int = EXAMPLE_RUN_S
                   ) -> Iterator[subprocess.Popen]:
    env = traced_env(make_trace_dir(tdir))
    env["RXE_POWER_CLIENTS_DIR"] = str(clients_dir)
    argv = [str(example_program(name)), topo.local.dev, str(topo.local.gid_index),
            topo.peer.dev, str(topo.peer.gid_index), str(run_s)]
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{tag}.log", "w") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_child(proc, 0.0, grace_s=STOP_TIMEOUT_S)


def test_notify_client_releases_reopens_clean(power_shim, rxe_topology, results_dir,
                                              tmp_path, request) -> None:
    """examples/notify_client.c under standby (clients-first): it answers released (its
    in-flight SENDs drained), so the delete finds no holder; on resume_complete it reopens
    rxe0 and sends again. The hold outlasts its whole traffic time: released time does not
    count, so it is still there to be resumed. Its ledger: two opens of each device, every
    request completed-ok and received once, no error, no failed call; exit 0."""
    clients = power_shim.clients_dir
    clients.mkdir(mode=0o700, parents=True, exist_ok=True)
    tdir = tmp_path / "trace"
    with traced_example("notify_client", rxe_topology, tdir, results_dir / "logs",
                        request.node.name, clients, NOTIFY_RUN_S) as cli:
        wait_first_completion(tdir, cli.pid, cli)
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while not list(clients.glob("notify_client.*.sock")):
            assert time.monotonic() < deadline, "no socket within SOCKET_TIMEOUT_S"
            time.sleep(POLL_S)  # polling interval of a bounded wait
        assert cli.poll() is None, "notify_client ended before the standby began"
        res = power_shim.run("standby", hold_ms=NOTIFY_HOLD_MS)
        rc = wait_exit(cli, "notify_client")
    print(f"standby verdict {res.verdict}; answers {res.answers}; exit {rc}")
    assert res.verdict is Verdict.COMPLETED, res.reasons
    # a client that does not answer is a `no-answer`; none at all: it had ended before
    # the notice went out, and the standby missed it
    assert res.answers, "missed: no client socket was there when the notice went out"
    kinds = sorted(a["kind"] for a in res.answers)
    assert kinds == ["released", "resumed"], res.answers
    led = ledgers(tdir, results_dir / "trace" / request.node.name)[cli.pid]
    assert rc == 0 and led.closed
    check_accounted(led)
    loc, peer = rxe_topology.local.dev, rxe_topology.peer.dev
    assert led.devices == [loc, peer, loc, peer] and led.closes == 4, led.devices
    assert {r.outcome for r in led.sends()} == {Outcome.COMPLETED_OK}, led.counts()
    assert not led.failed_calls and not led.posted_after_error()
    # one QP pair per opening (rxe numbers QPs afresh on the re-created rxe0), each way
    sending = [m for m in match_peer(led, led) if m.sent]
    assert len(sending) == 2 and all(m.missing == m.duplicated == 0 for m in sending), sending
    assert sum(m.delivered_once for m in sending) == len(led.sends())


def test_broken_client_found_out(power_shim, rxe_topology, results_dir, tmp_path,
                                 request) -> None:
    """examples/broken_client.c under link-flap: it ignores the notice (it has no socket),
    its SEND QP on rxe0 goes to the error state when the carrier drops, and it goes on
    posting and ignoring every status. It exits 0; only its ledger tells: error
    completions and requests posted after the error (finding posted-after-error), or
    posts refused by post_send that it ignores, and still every request accounted for."""
    clients = power_shim.clients_dir
    clients.mkdir(mode=0o700, parents=True, exist_ok=True)
    tdir = tmp_path / "trace"
    with traced_example("broken_client", rxe_topology, tdir, results_dir / "logs",
                        request.node.name, clients, BROKEN_RUN_S) as cli:
        wait_first_completion(tdir, cli.pid, cli)
        res = power_shim.run("link-flap")
        rc = wait_exit(cli, "broken_client")
    led = ledgers(tdir, results_dir / "trace" / request.node.name)[cli.pid]
    print(f"link-flap verdict {res.verdict}; exit {rc}; findings "
          f"{[f.what.value for f in led.findings][:10]}")
    assert rc == 0 and led.closed
    check_accounted(led)
    # the flap met the client: a SEND posted once the carrier was dropping, or one in
    # flight then (on CLOCK_MONOTONIC, the tracer's clock and the shim's); else `missed`
    down = res.step(StepKind.PORT_DOWN)
    assert down is not None and down.outcome == "ok", res.steps
    sends = led.sends()
    met = [r for r in sends if r.posted_ns >= down.begin_ns
           or r.completed_ns is None or r.completed_ns >= down.begin_ns]
    assert met, (f"missed: all {len(sends)} SENDs had completed before the carrier drop "
                 f"(the client's {BROKEN_RUN_S} s ended before the flap)")
    counts = led.counts()
    bad = counts.get(Outcome.FLUSHED.value, 0) + counts.get(Outcome.COMPLETED_ERROR.value, 0)
    rejected = counts.get(Outcome.REJECTED_AT_POST.value, 0)
    # rxe decides which, run by run (both measured): a send in flight when the carrier
    # drops completes in error and the client posts on (posted-after-error), or the QP is
    # in ERR before one is in flight and post_send refuses every later post, which the
    # client ignores just as well (thousands rejected, the last in-flight ones lost)
    assert bad > 0 or rejected > 1, counts
    if bad > 0:
        assert led.posted_after_error() > 0
        assert FindingKind.POSTED_AFTER_ERROR in {f.what for f in led.findings}


def test_rping_under_link_flap(power_shim, rxe_topology, results_dir, request) -> None:
    """rping (rdmacm-utils), the common rdma_cm example, client and server traced, under
    link-flap through the matrix's path. Its server listens through rdma_cm on rxe1 and
    has no TCP socket: it is seen ready by its listening rdma_cm id (issue 22 defect 7:
    before, the run ended in BoundExceeded after SERVER_READY_TIMEOUT_S, a broken row).
    What rping made of the flap is the row's, and each known behaviour is checked
    against rping's exit and both ledgers: it errored and exited (bad: its exit status,
    with error completions in its ledger), or RC retried through the flap and it went on
    pinging until it was stopped (bad: stopped, nothing in error, completions after the
    resume; the SEND it had in flight at the stop is lost, its log ended by the kill).
    Anything else fails the test."""
    log_dir = results_dir / "logs" / request.node.name
    result, row = run_program(power_shim, rxe_topology, "rping", "link-flap", log_dir)
    out, peer = result["outside"], rxe_topology.peer
    assert out["server_ready"].startswith(f"rdma_cm id LISTEN on {peer.dev} {peer.addr}:") \
        and out["server_ready"].endswith("(rping)"), out["server_ready"]
    assert result["transition"]["verdict"] == Verdict.COMPLETED.value, result["transition"]
    check_program_accounted(out, "rping")
    counts = out["counts"]
    errors = counts.get(Outcome.COMPLETED_ERROR.value, 0) + counts.get(Outcome.FLUSHED.value, 0)
    assert row.status is RowStatus.BAD, (row.status, row.findings)
    if out["exit"] not in (0, None):
        # it ended by itself on an error: error completions in its ledger, or (beside a
        # CPU hog in CI: exit 255 on an rdma_cm event, every SEND completed) a request it
        # had posted and was waiting on when it gave up, never completed
        unfinished = counts.get(Outcome.LOST.value, 0) + \
            out["receive_counts"].get(Outcome.LOST.value, 0)
        print(f"rping errored under the flap: exit {out['exit']}, {errors} in error, "
              f"{unfinished} posted and never completed")
        assert not out["stopped_by_harness"] and errors + unfinished > 0, (out["exit"], out)
        assert any(f.startswith(f"exit status {out['exit']}") for f in row.findings)
        return
    print(f"rping went on through the flap: recovery {out['recovery_ms']} ms, stopped")
    assert out["stopped_by_harness"] and out["exit"] is None, out
    assert errors == 0 and out["recovery_ms"] is not None, (counts, out["recovery_ms"])
    led = build_ledger(read_log(log_dir / "trace" / f"rxe-power-trace.{out['pid']}.bin"))
    lost = [r for r in led.sends() if r.outcome is Outcome.LOST]
    # rping waits for each ping's answer: at most its one SEND in flight at the stop,
    # ended by the kill; the server missed none but that one
    assert len(lost) <= 1 and {r.ended_by for r in lost} <= {EndedBy.LOG_ENDED}, lost
    assert out["peer_counts"]["missing"] <= len(lost), out["peer_counts"]
    stopped = f"still running {RPING_EXIT_TIMEOUT_S:g} s after the transition: stopped"
    assert row.findings == [stopped] + ([f"{len(lost)} lost (posted, never completed)"]
                                        if lost else []), row.findings


# pingpong last, and this test last in the file: twice in four suite runs, right after
# the pingpong case the wire gave the next program's TCP rendezvous no ARP answer for
# ~30 s (neighbour FAILED on rxpw0; cause not found). run_outside now waits for ARP
# both ways (WIRE_READY_TIMEOUT_S) and records the wait (wire_ready_ms, printed)
# (8 Dec 2026, CI 26: with ib_send_bw left out for the suite's time, ib_write_bw ran first
# and both programs' TCP rendezvous hung in connect() for 30 s, the neighbour of
# 198.18.0.2 FAILED on rxpw0: the flake above, after the file's earlier tests. Put back;
# cause still not found)
LINK_FLAP_ORDER = ("ib_send_bw", "ib_write_bw", "ibv_rc_pingpong")


@pytest.mark.parametrize("program", LINK_FLAP_ORDER)
def test_program_under_link_flap(power_shim, rxe_topology, results_dir, program,
                                 request) -> None:
    """The program under link-flap (hca-first, 500 ms without carrier), both ends traced:
    every request of both accounted for, and which known behaviour happened, decided from
    the two ledgers against the shim's step times (tests/rxe/tracing.py flap_behaviour):
    `errored` (a request failed with LOC_QP_OP_ERR at the carrier drop: the row is bad),
    `peer-errored` (only its server's did), `retried` (no error anywhere, a SEND carried
    across the flap by RC: the row is clean exactly when the program exited 0 with every
    request completed), or `stalled` (no error, nothing completed after the carrier came
    back, a SEND never completed: bad, stopped or lost). The behaviour is printed; none of
    them fails the test."""
    log_dir = results_dir / "logs" / request.node.name
    shutil.rmtree(log_dir / "trace", ignore_errors=True)  # this test's own, of an earlier run
    result, row = run_program(power_shim, rxe_topology, program, "link-flap", log_dir)
    assert result["transition"]["verdict"] == Verdict.COMPLETED.value, result["transition"]
    out = result["outside"]
    check_program_accounted(out, program)
    # the harness's own coverage says whether the flap met the program's requests: a
    # scenario it missed measures nothing, and fails here saying so
    assert row.status.value != "missed", (row.status, row.findings)
    client, server = traced_pair(log_dir / "trace", out["pid"])
    behaviour = flap_behaviour(client, server, result["transition"])
    print(f"{program} under link-flap: behaviour {behaviour.value}")
    check_flap_row(behaviour, client, server, out, row)


def traced_pair(trace_dir: Path, pid: int) -> tuple[Any, Any]:
    """The client's ledger (pid) and its server's (the other log) from a kept trace."""
    leds = {}
    for p in sorted(trace_dir.glob("rxe-power-trace.*.bin")):
        led = build_ledger(read_log(p))
        leds[led.pid] = led
    assert pid in leds and len(leds) == 2, (pid, sorted(leds))
    return leds.pop(pid), next(iter(leds.values()))

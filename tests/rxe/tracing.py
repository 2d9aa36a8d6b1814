"""Helpers of the tracer tests (not a test module): both programs of a pair started
under the verbs tracer (LD_PRELOAD), bounded waits on their logs, and the ledger checks
every such test makes."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from clients.tracer.traced import make_trace_dir, traced_env
from harness.core.proc import stop_child
from harness.topology.config import Endpoint
from harness.workload.ledger import Outcome
from harness.workload.traced_ledger import build_ledger, summary_line
from harness.workload.traced_peer import match_peer
from harness.workload.traced_types import ProcessLedger, TracedRequest
from harness.workload.tracelog import REC_SIZE, log_paths, read_log
from tests.rxe.test_outside_clients import listening

START_TIMEOUT_S = 30.0  # the server listening, then the client holding rxe0
RUN_TIMEOUT_S = 60.0  # a run to its end (both programs exit by themselves)
STOP_TIMEOUT_S = 5.0  # SIGTERM -> SIGKILL for what we started
TRAFFIC_TIMEOUT_S = 30.0  # the client's first completions in its log
POLL_S = 0.05
PINGPONG_ITERS = 50
BW_ITERS = 300
FLAP_DURATION_S = 8  # ib_send_bw -D: longer than the flap (500 ms hold) and its recovery


def bw_argv(prog: str, ep: Endpoint, port: int, *extra: str) -> list[str]:
    # 4 KiB, 16 in flight: perftest's defaults fail by themselves under TCG (see
    # tests/test_outside_clients.py)
    return [prog, "-d", ep.dev, "-x", str(ep.gid_index), "-F", "-s", "4096", "-t", "16",
            "-p", str(port), *extra]


def pingpong_argv(ep: Endpoint, port: int) -> list[str]:
    return ["ibv_rc_pingpong", "-d", ep.dev, "-g", str(ep.gid_index), "-n",
            str(PINGPONG_ITERS), "-s", "4096", "-p", str(port)]


@contextlib.contextmanager
def traced(server: list[str], client: list[str], port: int, trace_dir: Path,
           log_dir: Path, tag: str) -> Iterator[tuple[subprocess.Popen, subprocess.Popen]]:
    """Both programs under the tracer: the server first (listening), then the client;
    both stopped (bounded) afterwards whatever happened."""
    env = traced_env(make_trace_dir(trace_dir))
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen] = []
    try:
        with open(log_dir / f"{tag}-server.log", "w") as slog, \
                open(log_dir / f"{tag}-client.log", "w") as clog:
            srv = subprocess.Popen(server, env=env, stdin=subprocess.DEVNULL, stdout=slog,
                                   stderr=subprocess.STDOUT)
            started.append(srv)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not listening(srv.pid, port):
                assert srv.poll() is None, f"{server[0]} exited {srv.returncode} at start"
                assert time.monotonic() < deadline, "server not listening in START_TIMEOUT_S"
                time.sleep(POLL_S)  # polling interval of a bounded wait
            cli = subprocess.Popen(client, env=env, stdin=subprocess.DEVNULL, stdout=clog,
                                   stderr=subprocess.STDOUT)
            started.append(cli)
            yield srv, cli
    finally:
        for p in reversed(started):
            stop_child(p, 0.0, grace_s=STOP_TIMEOUT_S)


def ledgers(trace_dir: Path, keep: Path) -> dict[int, ProcessLedger]:
    """Every process's ledger, by pid; the logs are copied to KEEP for the record."""
    keep.mkdir(parents=True, exist_ok=True)
    out = {}
    for p in log_paths(trace_dir):
        shutil.copy(p, keep / p.name)
        led = build_ledger(read_log(p))
        print(summary_line(led))
        out[led.pid] = led
    return out


def check_accounted(led: ProcessLedger) -> None:
    """Every request has exactly one outcome and every completion found its request."""
    assert not led.unaccounted(), [r for r in led.unaccounted()][:5]
    assert not led.unmatched_completions(), led.unmatched_completions()[:5]


def wait_exit(p: subprocess.Popen, what: str) -> int:
    try:
        return p.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} (pid {p.pid}) still running after RUN_TIMEOUT_S={RUN_TIMEOUT_S}")


def wait_first_completion(trace_dir: Path, pid: int, proc: subprocess.Popen) -> None:
    """Bounded: the client's log shows a successful send completion (traffic flows)."""
    deadline = time.monotonic() + TRAFFIC_TIMEOUT_S
    path = trace_dir / f"rxe-power-trace.{pid}.bin"
    while True:
        # the tracer creates its log first and writes the 64-byte header a moment later:
        # a log shorter than that is "no completion yet", not a broken log
        if path.exists() and path.stat().st_size >= REC_SIZE:
            led = build_ledger(read_log(path))
            if any(r.outcome is Outcome.COMPLETED_OK for r in led.sends()):
                return
        assert proc.poll() is None, f"{proc.args[0]} exited {proc.returncode} before traffic"
        assert time.monotonic() < deadline, \
            f"no completion in {path} within TRAFFIC_TIMEOUT_S={TRAFFIC_TIMEOUT_S}"
        time.sleep(POLL_S)  # polling interval of a bounded wait


# --- a traced program under link-flap: which known behaviour, from independent evidence ----

FLAP_ERRORS = {"LOC_QP_OP_ERR", "RETRY_EXC_ERR"}  # what rxe completes a request with there


class FlapBehaviour(StrEnum):
    """What a traced program (and its traced server) made of a link flap, as measured on
    rxe 6.1; decided from the two ledgers against the shim's own step times."""

    ERRORED = "errored"  # a request of the program failed at the carrier drop
    PEER_ERRORED = "peer-errored"  # only its server's did: the program saw no error
    RETRIED = "retried"  # no error anywhere: RC carried what was in flight across the flap
    # no error anywhere, and no SEND of either side completed after the carrier came back:
    # what was in flight never completed and the program waited until it was stopped
    # (measured: ib_send_bw -n, and ibv_rc_pingpong, whose server's SEND reached rxe0
    # after the flap while rxe0's ACK and its next SEND never reached rxe1; the next pair
    # of programs then got no first completion in 30 s: the wire after some flaps, cause
    # not found)
    STALLED = "stalled"


def flap_window(transition: dict[str, Any]) -> tuple[int, int]:
    """(the port-down step's begin, the port-up step's end), CLOCK_MONOTONIC ns, as the
    shim recorded them (the tracer's clock too)."""
    steps = {s["step"]: s for s in transition["steps"] if s["outcome"] == "ok"}
    assert {"port-down", "port-up"} <= set(steps), transition["steps"]
    return int(steps["port-down"]["begin_ns"]), int(steps["port-up"]["end_ns"])


def _errors(led: ProcessLedger | None) -> list[TracedRequest]:
    got = [r for r in led.requests if r.outcome is Outcome.COMPLETED_ERROR] if led else []
    return sorted(got, key=lambda r: r.completed_ns or 0)


def flap_behaviour(client: ProcessLedger, server: ProcessLedger | None,
                   transition: dict[str, Any]) -> FlapBehaviour:
    """The known behaviour the two ledgers show, each from its own evidence; an
    AssertionError naming what was seen when they show none of them (or an error of
    another kind, or one before the carrier dropped: not the flap's)."""
    down, up = flap_window(transition)
    cli_err, srv_err = _errors(client), _errors(server)
    for first in cli_err[:1] + srv_err[:1]:
        assert first.status in FLAP_ERRORS and (first.completed_ns or 0) >= down, (
            f"an error completion not of the flap: {first.status} at {first.completed_ns} "
            f"(carrier dropped at {down})")
    if cli_err:
        return FlapBehaviour.ERRORED
    if srv_err:
        return FlapBehaviour.PEER_ERRORED
    sends = [r for led in (client, server) if led for r in led.sends()]
    across = [r for r in sends if r.outcome is Outcome.COMPLETED_OK and r.posted_ns < down
              and (r.completed_ns or 0) > up]
    if across:
        return FlapBehaviour.RETRIED
    after = [r for r in sends if r.outcome is Outcome.COMPLETED_OK
             and (r.completed_ns or 0) > up]
    lost = [r for r in sends if r.outcome is Outcome.LOST]
    assert lost and not after, (
        "none of the known behaviours under the flap: no error completion on either side, "
        "no SEND carried across it, and "
        + (f"{len(after)} completed after it" if after else "none lost")
        + f"; client {dict(client.counts())}, server "
        f"{dict(server.counts()) if server else None}")
    return FlapBehaviour.STALLED


def check_flap_row(behaviour: FlapBehaviour, client: ProcessLedger,
                   server: ProcessLedger | None, out: dict[str, Any], row: Any) -> None:
    """The row against what the ledgers showed: an error is never clean; a program that
    saw none has no failed or flushed request; its server received what it completed, once;
    the row is clean exactly when the program exited 0 with every request completed ok."""
    counts = client.counts()
    ok = counts.get(Outcome.COMPLETED_OK.value, 0)
    not_ok = sum(counts.values()) - ok
    if server is not None and any(r.opcode.name.startswith("SEND") for r in client.sends()):
        ms = [m for m in match_peer(client, server) if m.sent]
        missing = sum(m.missing for m in ms)
        assert sum(m.duplicated for m in ms) == 0 and missing <= not_ok, (ms, counts)
    if behaviour is FlapBehaviour.ERRORED:
        assert row.status.value == "bad", (row.status, row.findings)
        if out["exit"] not in (0, None):
            assert any(f.startswith(f"exit status {out['exit']}") for f in row.findings)
        return
    if behaviour is FlapBehaviour.STALLED:
        lost = counts.get(Outcome.LOST.value, 0)
        assert row.status.value == "bad", (row.status, row.findings)
        assert not lost or f"{lost} lost (posted, never completed)" in row.findings, \
            row.findings
    assert not counts.get(Outcome.COMPLETED_ERROR.value) and \
        not counts.get(Outcome.FLUSHED.value), counts
    clean = out["exit"] == 0 and not_ok == 0 and not out["stopped_by_harness"]
    assert (row.status.value == "clean") is clean, (row.status, row.findings, out["exit"],
                                                    counts)
    if not clean:
        assert row.status.value == "bad", (row.status, row.findings)

"""Helpers of the tracer tests (not a test module): both programs of a pair started
under the verbs tracer (LD_PRELOAD), bounded waits on their logs, and the ledger checks
every such test makes."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.traced import make_trace_dir, traced_env
from harness.core.proc import stop_child
from harness.topology.config import Endpoint
from harness.workload.ledger import Outcome
from harness.workload.traced_ledger import ProcessLedger, build_ledger, summary_line
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

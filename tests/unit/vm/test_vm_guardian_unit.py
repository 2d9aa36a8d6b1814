"""The guests' guardian (harness.vm.guardian): when the controller dies, SIGKILL included,
every guest group it was told of ends; nothing else is signalled. The guests here are
stand-ins shaped like vng's (a leader in a session of its own with a child under it),
so this runs on any host; the pair's real QEMUs are checked in the guest runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.proc import ProcessRef, process_start
from harness.vm import guardian

ROOT = Path(__file__).resolve().parents[3]
GONE_BOUND_S = 20.0  # the guardian's grace and SIGKILL waits, with room
STARTED_BOUND_S = 20.0

# a controller: the guardian (or none), two stand-in guests it watches; prints their
# pids as JSON, then waits to be killed
CONTROLLER = """
import json, subprocess, sys, time
from pathlib import Path
from harness.vm.guardian import Guardian
guests = [subprocess.Popen(["sh", "-c", "sleep 600 & wait"], start_new_session=True)
          for _ in range(2)]
if sys.argv[1] == "guarded":
    g = Guardian(Path(sys.argv[2]))
    for p in guests:
        g.watch(p)
print(json.dumps([p.pid for p in guests]), flush=True)
time.sleep(600)
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_controller(tmp_path: Path, how: str) -> tuple[subprocess.Popen[str], list[int]]:
    ctl = subprocess.Popen([sys.executable, "-c", CONTROLLER, how, str(tmp_path / "g.log")],
                           cwd=ROOT, stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert ctl.stdout is not None
    line = ctl.stdout.readline()  # bounded by the test's own timeout of the suite
    pgids = json.loads(line)
    deadline = time.monotonic() + STARTED_BOUND_S
    while not all(_group_alive(g) for g in pgids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return ctl, pgids


def _wait_gone(pgids: list[int]) -> list[int]:
    deadline = time.monotonic() + GONE_BOUND_S
    while (left := [g for g in pgids if _group_alive(g)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_guests_end_when_the_controller_is_killed(tmp_path: Path, sig: int) -> None:
    ctl, pgids = _start_controller(tmp_path, "guarded")
    try:
        assert all(_group_alive(g) for g in pgids)
        ctl.send_signal(sig)
        ctl.wait(GONE_BOUND_S)
        assert _wait_gone(pgids) == []
        log = (tmp_path / "g.log").read_text()
        assert all(f"guest group {g}: SIGTERM" in log for g in pgids), log
    finally:
        for g in pgids:
            if _group_alive(g):
                os.killpg(g, signal.SIGKILL)


def test_negative_control_without_the_guardian_the_guests_stay(tmp_path: Path) -> None:
    ctl, pgids = _start_controller(tmp_path, "unguarded")
    try:
        ctl.kill()
        ctl.wait(GONE_BOUND_S)
        time.sleep(1.0)  # the guarded case ends its guests well within this; here: nothing
        assert all(_group_alive(g) for g in pgids)
    finally:
        for g in pgids:
            os.killpg(g, signal.SIGKILL)
        assert _wait_gone(pgids) == []


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    """A line naming a live process with another start time (its pid reused): left alone."""
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        start = process_start(other.pid)
        assert start is not None
        log = tmp_path / "log"
        with log.open("w") as f:
            r, w = os.pipe()
            os.write(w, f"{other.pid} {start + 1.0!r}\nnot a line\n".encode())
            os.close(w)
            with os.fdopen(r, "rb") as pipe:
                assert guardian.guard(pipe, f) == 0
        assert other.poll() is None  # still running
        assert "already gone" in log.read_text() and "ignored" in log.read_text()
    finally:
        other.kill()
        other.wait()


def test_parse_line() -> None:
    assert guardian.parse_line(b"1234 5678.0\n") == ProcessRef(1234, 5678.0, True)
    for bad in (b"", b"1 2", b"x 1.0", b"12 y", b"12 1.0 extra", b"-5 1.0"):
        assert guardian.parse_line(bad) is None

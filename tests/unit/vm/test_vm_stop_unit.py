"""Issue 17 #17: a stop signal to a command running a guest ends the guest (its whole
process group) within GUEST_STOP_TIMEOUT_S, says so, and exits 128 + signum.

The "guest" here is a stand-in with the shape of vng -> qemu: a shell (the group
leader, as vng) with a child that ignores nothing (as qemu), run by the real
run_logged in a child Python process that we signal. The same path with a real guest:
ci/vm-stop-check.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core import procfs
from harness.vm.process import GUEST_STOP_TIMEOUT_S

STARTED_TIMEOUT_S = 20.0  # the stand-in guest is running
POLL_S = 0.02

RUNNER = """
import sys
from pathlib import Path
from harness.vm.process import StopSignal, run_logged
try:
    run_logged(["sh", "-c", "echo guest-up; sleep 300 & wait"], log_path=Path(sys.argv[1]),
               timeout_s=600)
except StopSignal as stop:
    raise SystemExit(stop.exit_code)
raise SystemExit(0)
"""


def _live() -> list[procfs.ProcStat]:
    """Every process now that is not a zombie (harness.core.procfs: each may go while the
    list is read)."""
    stats = (procfs.read_stat(pid) for pid in procfs.pids())
    return [st for st in stats if st is not None and not st.gone]


def _group_alive(pgid: int) -> list[int]:
    return [st.pid for st in _live() if st.pgrp == pgid]


def _guest_group(runner_pid: int) -> int:
    """The process group of the stand-in guest: the runner's child leads it."""
    end = time.monotonic() + STARTED_TIMEOUT_S
    while time.monotonic() < end:
        for st in _live():
            if st.ppid == runner_pid and st.pgrp == st.pid and len(_group_alive(st.pid)) >= 2:
                return st.pid
        time.sleep(POLL_S)
    raise AssertionError(f"the stand-in guest of pid {runner_pid} did not start within "
                         f"{STARTED_TIMEOUT_S:g} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signal_ends_the_guest_within_the_bound(tmp_path: Path,
                                                     sig: signal.Signals) -> None:
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "console.log")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pgid = _guest_group(runner.pid)
    try:
        t0 = time.monotonic()
        runner.send_signal(sig)
        _, err = runner.communicate(timeout=GUEST_STOP_TIMEOUT_S + 5)
        took = time.monotonic() - t0
        assert runner.returncode == 128 + sig, err
        assert _group_alive(pgid) == []
        assert took <= GUEST_STOP_TIMEOUT_S
        assert f"{sig.name}: ended the guest" in err
        assert f"stopped by {sig.name}" in (tmp_path / "console.log").read_text()
    finally:
        for pid in _group_alive(pgid):  # never leave one behind, even when failing
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=GUEST_STOP_TIMEOUT_S)

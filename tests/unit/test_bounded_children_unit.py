"""A bounded step stays bounded however its child ends (issue 17, defect 13):
subprocess.run(timeout=) kills an overrunning child and then waits for it and its
output without a bound, so a child stuck in the kernel, or one whose grandchild keeps
its pipes open, hangs the caller. run_bounded and kill_bounded never wait past
GONE_TIMEOUT_S after SIGKILL."""

from __future__ import annotations

import subprocess
import time

import pytest

from harness.core.errors import BoundExceeded
from harness.core.proc import GONE_TIMEOUT_S, kill_bounded, run_bounded
from harness.system import command

# a child whose grandchild keeps stdout and stderr open for 30 s after the child is killed
HOLDS_PIPES = ["sh", "-c", "sleep 30 & sleep 30"]
SLACK_S = 5.0  # process start-up under a loaded emulator


def test_run_bounded_returns_at_its_bound_though_a_grandchild_holds_the_pipes() -> None:
    t0 = time.monotonic()
    with pytest.raises(BoundExceeded) as err:
        run_bounded(HOLDS_PIPES, 0.5, step="the holder", bound_name="HOLDER_TIMEOUT_S",
                    outstanding="its sleep")
    took = time.monotonic() - t0
    assert took < 0.5 + GONE_TIMEOUT_S + SLACK_S, took  # subprocess.run: 30 s
    assert err.value.bound_name == "HOLDER_TIMEOUT_S"
    assert "its sleep; it was killed" in err.value.outstanding


def test_run_bounded_gives_the_output_of_a_child_that_finishes() -> None:
    done = run_bounded(["sh", "-c", "echo out; echo err >&2; exit 3"], 30.0, step="sh",
                       bound_name="SH_TIMEOUT_S", outstanding="sh")
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_kill_bounded_reaps_a_child_and_says_nothing() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    assert kill_bounded(proc) == ""
    assert proc.returncode is not None


def test_the_command_runner_is_bounded_too() -> None:
    """system.command.run (every `ip`/`rdma` call) goes through run_bounded."""
    t0 = time.monotonic()
    with pytest.raises(BoundExceeded):
        command.run(HOLDS_PIPES, timeout_s=0.5)
    assert time.monotonic() - t0 < 0.5 + GONE_TIMEOUT_S + SLACK_S

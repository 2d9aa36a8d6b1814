"""A bounded step stays bounded however its child ends (issue 17, defect 13):
subprocess.run(timeout=) kills an overrunning child and then waits for it without a
bound, forever for a child stuck in the kernel (D state: what a blocked delete is, and
what this tool provokes). run_bounded and kill_bounded never wait past GONE_TIMEOUT_S
after SIGKILL: a child that does not die is left and named."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from harness.core.errors import BoundExceeded
from harness.core.proc import GONE_TIMEOUT_S, kill_bounded, run_bounded
from harness.system import command

SLACK_S = 5.0  # process start-up under a loaded emulator
REAL_KILL_TIMEOUT_S = 10.0


class Unkillable(subprocess.Popen):  # type: ignore[type-arg]
    """A child that SIGKILL does not end, as one in uninterruptible sleep: kill() is
    recorded and ignored (the test ends it for real afterwards)."""

    made: ClassVar[list[Unkillable]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        Unkillable.made.append(self)

    def kill(self) -> None:
        pass


@pytest.fixture
def unkillable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess, "Popen", Unkillable)
    yield
    for p in Unkillable.made:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(REAL_KILL_TIMEOUT_S)
    Unkillable.made.clear()


def test_run_bounded_leaves_a_child_that_does_not_die(unkillable: None) -> None:
    t0 = time.monotonic()
    with pytest.raises(BoundExceeded) as err:
        run_bounded(["sleep", "30"], 0.5, step="the sleeper", bound_name="SLEEPER_TIMEOUT_S",
                    outstanding="its sleep")
    assert time.monotonic() - t0 < 0.5 + GONE_TIMEOUT_S + SLACK_S  # subprocess.run: 30 s
    assert err.value.bound_name == "SLEEPER_TIMEOUT_S"
    assert "did not die within GONE_TIMEOUT_S" in err.value.outstanding
    assert "was left" in err.value.outstanding


def test_the_command_runner_is_bounded_too(unkillable: None) -> None:
    """system.command.run (every `ip`/`rdma` call) goes through run_bounded."""
    t0 = time.monotonic()
    with pytest.raises(BoundExceeded, match="was left"):
        command.run(["sleep", "30"], timeout_s=0.5)
    assert time.monotonic() - t0 < 0.5 + GONE_TIMEOUT_S + SLACK_S


def test_run_bounded_gives_the_output_of_a_child_that_finishes() -> None:
    done = run_bounded(["sh", "-c", "echo out; echo err >&2; exit 3"], 30.0, step="sh",
                       bound_name="SH_TIMEOUT_S", outstanding="sh")
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_kill_bounded_reaps_a_child_and_says_nothing() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    assert kill_bounded(proc) == ""
    assert proc.returncode is not None

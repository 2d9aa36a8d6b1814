"""Issue 27 item 3: the engine of `--jobs N` (harness.vm.parallel) runs its shards at once
and leaves nothing running however its controller ends: SIGKILLed (the death signal; its
negative control: without it the stand-in guests outlive the controller), stopped by a
signal, or past its bound.

The shards here are stand-ins with the shape of a real one (harness.cli.shard_job's
SIGTERM handler, then harness.vm.process.run_logged running a "guest": a shell leading
its own group with a child, as vng -> qemu), run by the real run_parallel in a controller
Python process that we signal. The same with real guests: the closing note of issue 27.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core import procfs
from harness.core.proc import PACKAGES_ROOT
from harness.vm.parallel import CHILD_STOP_GRACE_S

STARTED_TIMEOUT_S = 30.0  # both stand-in guests are running
GONE_MARGIN_S = 5.0  # beyond CHILD_STOP_GRACE_S, for the processes to be reaped
POLL_S = 0.05

SHARD = """
import sys
from pathlib import Path
from harness.cli import shard_job
from harness.vm.process import StopSignal, run_logged

def stand_in(argv):
    print("shard", argv[1], "starts", flush=True)
    try:
        run_logged(["sh", "-c", "echo guest-up; sleep 300 & wait"], log_path=Path(argv[0]),
                   timeout_s=600)
    except StopSignal as stop:
        return stop.exit_code
    return 0

raise SystemExit(shard_job.run(sys.argv[1:], stand_in))
"""

CONTROLLER = """
import sys
from harness.core.printer import STDOUT
from harness.vm import parallel
if sys.argv[2] == "no-death-signal":  # the negative control
    parallel.dies_with_parent = lambda parent, libc=None: (lambda: None)
shard = [sys.executable, "-c", sys.argv[3]]
children = [parallel.Child(f"{i}/2", [*shard, f"{sys.argv[1]}/console-{i}.log", str(i)])
            for i in (1, 2)]
try:
    done = parallel.run_parallel(children, float(sys.argv[4]), STDOUT)
except parallel.StopSignal as stop:
    raise SystemExit(stop.exit_code)
for fin in done:
    print("finished", fin.child.label, fin.exit_code, fin.stopped, flush=True)
"""


def _live() -> list[procfs.ProcStat]:
    stats = (procfs.read_stat(pid) for pid in procfs.pids())
    return [st for st in stats if st is not None and not st.gone]


def _descendants(root: int) -> list[procfs.ProcStat]:
    """Every live process below `root` (by parent links, read once)."""
    live = _live()
    below, found = {root}, []
    changed = True
    while changed:
        changed = False
        for st in live:
            if st.ppid in below and st.pid not in below:
                below.add(st.pid)
                found.append(st)
                changed = True
    return found


def _guests(controller: int) -> list[int]:
    """The pids of the stand-in guests' groups (leaders of a group of two or more, below
    the controller's shards), once both run."""
    end = time.monotonic() + STARTED_TIMEOUT_S
    while time.monotonic() < end:
        below = _descendants(controller)
        leaders = [st.pid for st in below if st.pgrp == st.pid
                   and sum(1 for o in below if o.pgrp == st.pid) >= 2
                   and any(o.pid == st.ppid and o.ppid == controller for o in below)]
        if len(leaders) == 2:
            return leaders
        time.sleep(POLL_S)
    raise AssertionError(f"the two stand-in guests of controller {controller} did not start "
                         f"within {STARTED_TIMEOUT_S:g} s")


def _alive(pids: set[int]) -> list[int]:
    """The processes of `pids` (and of their groups) still there."""
    return [st.pid for st in _live() if st.pid in pids or st.pgrp in pids]


def _wait_gone(pids: set[int], bound_s: float) -> list[int]:
    end = time.monotonic() + bound_s
    while (left := _alive(pids)) and time.monotonic() < end:
        time.sleep(POLL_S)
    return left


def _controller(tmp_path: Path, how: str, bound_s: float = 600.0) -> subprocess.Popen[str]:
    env = {**os.environ, "RXE_POWER_STATE": str(tmp_path / "state" / "topology.json")}
    return subprocess.Popen([sys.executable, "-c", CONTROLLER, str(tmp_path), how, SHARD,
                             str(bound_s)], cwd=PACKAGES_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _shards_and_guests(controller: subprocess.Popen[str]) -> tuple[set[int], list[int]]:
    guests = _guests(controller.pid)
    shards = {st.pid for st in _descendants(controller.pid) if st.ppid == controller.pid}
    return shards, guests


def _never_leave(pids: set[int]) -> None:
    for pid in _alive(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_controller_leaves_no_guest(tmp_path: Path) -> None:
    controller = _controller(tmp_path, "death-signal")
    shards, guests = _shards_and_guests(controller)
    everything = shards | set(guests)
    try:
        assert len(shards) == 2
        controller.kill()  # SIGKILL: nothing of the controller runs any more
        controller.wait()
        assert _wait_gone(everything, CHILD_STOP_GRACE_S + GONE_MARGIN_S) == []
        for i in (1, 2):  # each shard ended its own guest (run_logged's stop path)
            assert "stopped by SIGTERM" in (tmp_path / f"console-{i}.log").read_text()
        # and took the dead controller's record of it off the state file, the guest's too
        state = json.loads((tmp_path / "state" / "topology.json").read_text())
        assert [e for e in state["created"] if e["kind"] == "process"] == []
    finally:
        _never_leave(everything)


def test_without_the_death_signal_the_guests_outlive_their_controller(tmp_path: Path) -> None:
    """The negative control: the same kill, the shards started without the death signal."""
    controller = _controller(tmp_path, "no-death-signal")
    shards, guests = _shards_and_guests(controller)
    everything = shards | set(guests)
    try:
        controller.kill()
        controller.wait()
        time.sleep(2.0)  # what the test above allows is longer; these never go by themselves
        assert set(guests) <= set(_alive(set(guests)))
    finally:
        _never_leave(everything)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_controller_ends_every_shard_then_exits(tmp_path: Path,
                                                          sig: signal.Signals) -> None:
    controller = _controller(tmp_path, "death-signal")
    shards, guests = _shards_and_guests(controller)
    everything = shards | set(guests)
    try:
        controller.send_signal(sig)
        out, _ = controller.communicate(timeout=CHILD_STOP_GRACE_S + GONE_MARGIN_S)
        assert controller.returncode == 128 + sig, out
        assert _alive(everything) == []
        assert "[1/2] shard 1 starts" in out and "[2/2] shard 2 starts" in out
    finally:
        _never_leave(everything)
        if controller.poll() is None:
            controller.kill()


def test_shards_past_the_bound_are_stopped_and_said(tmp_path: Path) -> None:
    controller = _controller(tmp_path, "death-signal", bound_s=4.0)
    out, _ = controller.communicate(timeout=4.0 + STARTED_TIMEOUT_S + CHILD_STOP_GRACE_S)
    assert controller.returncode == 0, out
    assert "the shards did not finish within timeout_s=4s; outstanding: 1/2 (pid" in out
    assert "finished 1/2 124 SIGTERM" in out and "finished 2/2 124" in out


def test_shards_run_at_once_and_their_lines_are_labelled(tmp_path: Path) -> None:
    """Two shards that each wait for the other's mark: they can only both end if they ran
    at the same time (one after the other, the first would wait out its bound)."""
    script = ("import pathlib, sys, time\n"
              "d = pathlib.Path(sys.argv[1]); me, other = sys.argv[2], sys.argv[3]\n"
              "(d / me).touch(); end = time.monotonic() + 20\n"
              "while not (d / other).exists() and time.monotonic() < end: time.sleep(0.05)\n"
              "print('saw', other, (d / other).exists(), flush=True)\n"
              "raise SystemExit(0 if (d / other).exists() else 3)\n")
    runner = ("import sys\nfrom harness.core.printer import STDOUT\n"
              "from harness.vm.parallel import Child, run_parallel\n"
              f"s = [sys.executable, '-c', {script!r}, sys.argv[1]]\n"
              "done = run_parallel([Child('1/2', [*s, 'a', 'b']), Child('2/2', [*s, 'b', 'a'])],"
              " 60, STDOUT)\n"
              "print([f.exit_code for f in done])\n")
    env = {**os.environ, "RXE_POWER_STATE": str(tmp_path / "state" / "topology.json")}
    res = subprocess.run([sys.executable, "-c", runner, str(tmp_path)], cwd=PACKAGES_ROOT,
                         env=env, text=True, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "[1/2] saw b True" in res.stdout and "[2/2] saw a True" in res.stdout
    assert "[0, 0]" in res.stdout

"""Child processes: start one on the record, stop one within a bound.

Every long-lived child (peer agent, client workers, async event reader) is started
with `spawn`, which writes it into the state file (harness/state.py) with its start
time; `wait_or_kill` takes it off once it is gone. If the harness is SIGKILLed in
between, `rxe-power cleanup` or the next run ends it.
"""

from __future__ import annotations

import subprocess
from typing import Any

from harness.core.state import track, untrack


def spawn(argv: list[str], role: str, **popen_kw: Any) -> subprocess.Popen:
    """Popen, recorded in the state file under `role`."""
    proc = subprocess.Popen(argv, **popen_kw)
    try:
        track(proc, role)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def wait_or_kill(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Give a child `timeout_s` to exit by itself, then SIGKILL it. True if it was killed.
    Either way it is taken off the state file's record."""
    try:
        proc.wait(timeout_s)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        killed = True
    untrack(proc.pid)
    return killed

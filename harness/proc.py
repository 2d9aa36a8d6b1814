"""Child processes: stop one within a bound (stdlib only)."""

from __future__ import annotations

import subprocess


def wait_or_kill(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Give a child `timeout_s` to exit by itself, then SIGKILL it. True if it was killed."""
    try:
        proc.wait(timeout_s)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True

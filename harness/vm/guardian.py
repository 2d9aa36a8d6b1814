"""The guests' guardian: ends them when their controller dies, however it dies.

A guest (vng, virtme-run, qemu) leads a process group of its own, so no signal to the
controller reaches it. On SIGTERM, SIGHUP or SIGINT the controller ends its guests itself
(harness.vm.process.end_guest); after SIGKILL nothing of it runs. The guardian is a small
child in a session of its own that reads a pipe whose only write end the controller
holds (pipes are close-on-exec: no guest inherits it). The controller writes one line
per guest it starts, `PID START` (the group leader and its start time); when the pipe
reaches its end (the controller closed it, exited, or was killed: the kernel closes its
files), the guardian ends every group still there: SIGTERM to its leaves (each parent
then reaps its child), SIGKILL to the group after the grace, then to any straggler. A
leader whose pid now names another process (start time differs) is never signalled.
What it did goes to its log, one line per guest.

    python -P -m harness.vm.guardian    (stdin: the pipe; stderr: its log)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

from harness.core.files import open_new
from harness.core.proc import (
    STOP_GRACE_S,
    ProcessRef,
    Stopped,
    python_child,
    stop_processes,
)
from harness.core.state import process_start
from harness.vm.process import kill_stragglers, terminate_leaves

GUARDIAN_EXIT_TIMEOUT_S = 20.0  # its own end after the pipe closed: grace + SIGKILL waits


def parse_line(line: bytes) -> ProcessRef | None:
    """`PID START` as the controller writes it; None for anything else."""
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return None
    try:
        start = float(parts[1])
    except ValueError:
        return None
    pid = int(parts[0])
    return ProcessRef(pid, start, group=True) if pid > 1 else None


def guard(pipe: IO[bytes], log: IO[str]) -> int:
    refs: list[ProcessRef] = []
    for line in pipe:
        ref = parse_line(line)
        if ref is None:
            print(f"guardian: ignored a line that is not 'PID START': {line[:80]!r}",
                  file=log, flush=True)
            continue
        refs.append(ref)
    ended = stop_processes(refs, grace_s=STOP_GRACE_S,
                           terminate=lambda r: terminate_leaves(r.pid))
    for ref in refs:
        # members whose leader went first: while any is left the kernel gives no process
        # the leader's pid, so a pid that names a process now names another group: skip
        if process_start(ref.pid) is None or ended[ref.pid] is not Stopped.ALREADY_GONE:
            kill_stragglers(ref.pid)
        print(f"guardian: guest group {ref.pid}: {ended[ref.pid].value}", file=log, flush=True)
    return 0


class Guardian:
    """The controller's end: start it, `watch` each guest's process, `close` when done."""

    def __init__(self, log_path: Path) -> None:
        self.log = open_new(log_path)
        self.proc = subprocess.Popen(python_child("harness.vm.guardian"), stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=self.log, start_new_session=True)

    def watch(self, proc: subprocess.Popen[bytes]) -> None:
        ref = ProcessRef.now(proc.pid, group=True)
        if ref is not None and self.proc.stdin is not None:
            self.proc.stdin.write(f"{ref.pid} {ref.start!r}\n".encode())
            self.proc.stdin.flush()

    def close(self) -> None:
        """The pipe's end: the guardian ends what is left of the guests, and exits."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(GUARDIAN_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


if __name__ == "__main__":
    raise SystemExit(guard(sys.stdin.buffer, sys.stderr))

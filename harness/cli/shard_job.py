"""One shard of a `--jobs N` run: `rxe-power ARGS` as a child of the controller
(harness.cli.jobs), that takes its whole process group with it when it is told to stop.

The controller starts it in its own session with a death signal (harness.vm.parallel:
SIGTERM when the controller dies, even by SIGKILL, or when it stops its shards). While a
guest runs, harness.vm.process catches that SIGTERM and ends the guest; at any other time
(the suite's host part, a report being drawn) the default would end this process alone
and leave its children running (the host part's pytest), so here SIGTERM ends the whole
group: this process and every child of it that did not start a session of its own.
Once it ends by itself (its guest ended on that SIGTERM, or its work done) it takes the
controller's record of it off the state file: a SIGKILLed controller cannot.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from harness.cli.main import main
from harness.core.state import untrack


def end_my_group(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM's handler outside a guest run: the same signal, by default, to the group."""
    signal.signal(signum, signal.SIG_DFL)
    os.killpg(os.getpgrp(), signum)


def run(argv: list[str], command: Callable[[list[str]], int] = main) -> int:
    """`command(argv)` (the CLI's main) as a shard."""
    signal.signal(signal.SIGTERM, end_my_group)
    try:
        return command(argv)
    finally:
        untrack(os.getpid())  # the controller's record of this shard


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))

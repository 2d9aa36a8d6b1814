"""The guest's side of a VM run: ``python -m harness.cli.guest FILE --owner-uid UID``.

FILE is the Invocation the host wrote in the run's results folder
(harness.cli.operations.VmOperations); it is read only when it is a plain file of UID (who
ran the command on the host) or root that nobody else may write
(harness.cli.invocation.read_invocation), and run here, natively, as decided on the host:
nothing of it is chosen again. JOBS is the one table from a job's kind to its type.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.bench_command import BenchJob
from harness.cli.invocation import JobTypes, read_invocation
from harness.cli.maintenance import CheckJob
from harness.cli.operations import NativeOperations
from harness.cli.power_commands import TransitionJob
from harness.cli.results_commands import MatrixJob, StressJob
from harness.cli.suite import TestJob
from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.printer import STDOUT, Printer

HARNESS_ERROR_EXIT = 2  # as rxe-power's own (harness.cli.main)
JOBS: JobTypes = {job.KIND: job for job in (MatrixJob, StressJob, BenchJob, CheckJob,
                                              TransitionJob, TestJob)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.cli.guest",
                                description="run the invocation the host wrote (in the "
                                "guest rxe-power's VM mode boots)")
    p.add_argument("invocation", type=Path, help="the invocation file")
    p.add_argument("--owner-uid", type=int, required=True,
                   help="who ran the command on the host: the file must be theirs or root's")
    return p


def main(argv: list[str] | None = None, out: Printer = STDOUT) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings.check_environment()  # what the host forwarded, before anything runs
        inv = read_invocation(args.invocation, args.owner_uid, JOBS)
        out(f"rxe-power {inv.command}: in the guest, as decided on the host: "
            f"{inv.command_line}")
        return NativeOperations().run(inv, out)
    except RxePowerError as exc:
        out.to_stderr()(f"rxe-power: error: {exc}")
        return HARNESS_ERROR_EXIT


if __name__ == "__main__":
    raise SystemExit(main())

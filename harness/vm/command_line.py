"""``python -m harness.vm [--timeout-s N] [--rwdir DIR]... [--log PATH] [--no-python-copy]
[--kernel-console] -- CMD...``

Runs CMD as root in the guest; exits with CMD's exit code, 124 on timeout, 125 when the
VM could not be started.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from harness.core.errors import BoundExceeded, RxePowerError
from harness.core.settings import parse_positive_float
from harness.vm.messages import say
from harness.vm.process import HARNESS_ERROR_EXIT_CODE, StopSignal
from harness.vm.runner import VM_RUN_TIMEOUT_S, VmRequest, run_in_vm


def _positive_float(raw: str) -> float:
    try:
        return parse_positive_float(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


MODULE_PROG = "python -m harness.vm"  # how this parser names itself (rxe-power vm: its own)


def _parser(prog: str = MODULE_PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run CMD as root in a QEMU guest that boots a kernel with rdma_rxe "
        "(virtme-ng). Exits with CMD's exit code; 124 on timeout; 125 if the VM could "
        "not be started.",
    )
    p.add_argument("--timeout-s", type=_positive_float, default=VM_RUN_TIMEOUT_S,
                   help=f"bound on the whole run, boot included (default {VM_RUN_TIMEOUT_S:g})")
    p.add_argument("--rwdir", type=Path, action="append", default=None, metavar="DIR",
                   help="host dir the guest may write (repeatable; default: the cwd)")
    p.add_argument("--log", type=Path, default=None, metavar="PATH",
                   help="console log (default: results/vm-console.log under the cwd)")
    p.add_argument("--no-python-copy", dest="python_copy", action="store_false",
                   help="the guest imports Python from the shared host folder, not from a "
                   "copy in its memory (slower under TCG; harness/vm/python_copy.py)")
    p.add_argument("--kernel-console", action="store_true",
                   help="put the guest kernel's console (ttyS0, kept on through system "
                   "sleep) into the console log")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    return p


def request_from_argv(argv: list[str], cwd: Path | None = None,
                      prog: str = MODULE_PROG) -> VmRequest:
    """Parse the command line into a VmRequest (argparse exits 2 on a usage error)."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error(f"no command given: {prog} [options] -- CMD...")
    here = cwd if cwd is not None else Path.cwd()
    return VmRequest(
        command=command,
        rw_dirs=args.rwdir if args.rwdir else [here],
        log_path=args.log if args.log is not None else here / "results" / "vm-console.log",
        timeout_s=args.timeout_s,
        cwd=here,
        python_copy=args.python_copy,
        kernel_console=args.kernel_console,
    )


def main(argv: list[str] | None = None, prog: str = MODULE_PROG) -> int:
    req = request_from_argv(sys.argv[1:] if argv is None else argv, prog=prog)
    try:
        result = run_in_vm(req)
    except RxePowerError as exc:
        say(str(exc))
        return HARNESS_ERROR_EXIT_CODE
    except StopSignal as stop:  # the guest is gone by now (process.end_guest said so)
        say(f"stopped by {stop}")
        return stop.exit_code
    if result.timed_out:
        say(str(BoundExceeded("the guest command in the VM", "--timeout-s", req.timeout_s,
                               f"the guest command {shlex.join(req.command)}; console log "
                               f"{result.log_path}")))
    else:
        say(
            f"guest exited {result.exit_code} after {result.duration_s:.1f} s "
            f"(accel {result.accel}); console log: {result.log_path}"
        )
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())

"""The `rxe-power` command: its parser and main(argv).

Each command group lives in its own module and registers its subcommands here:
results_commands (run, matrix, stress, report), bench_command, suite (test),
maintenance (check, cleanup, setup, teardown, show), power_commands (transition,
recover), doctor; `vm` hands the rest of the line to harness.vm.command_line. A command
that runs something (run, matrix, stress, bench, check, transition, test) builds one
Invocation (harness.cli.invocation) and runs it here or in the VM (harness.cli.operations).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Iterator

from harness.cli import (
    bench_command,
    doctor,
    maintenance,
    power_commands,
    results_commands,
    suite,
)
from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.printer import STDOUT, Printer
from harness.core.runlock import run_lock
from harness.core.settings import SETTINGS, resolve
from harness.vm import command_line as vm_command_line
from harness.vm.process import StopSignal

HARNESS_ERROR_EXIT = 2
# the commands on this kernel's topology that run no Invocation: each holds the run lock
# throughout (a command with an Invocation holds it where it runs natively, the guest's in
# the guest: harness.cli.operations)
TOPOLOGY_COMMANDS = frozenset({"recover", "setup", "teardown", "cleanup"})

DESCRIPTION = """\
rxe-power: a test harness that puts RDMA clients under simulated power transitions
(link-flap, standby, hibernate, surprise-removal) on Linux Soft-RoCE (rdma_rxe): a local
HCA and a peer HCA on a veth pair, with client policies under live traffic.

    rxe-power run    [matrix options]                the main job: the default scenario
                                                     matrix, then its report, in one folder
    rxe-power matrix [--transition T,..] [--ordering O,..] [--policy P,..] [--mix M,..]
                     [--together] [--junit FILE]     the scenario matrix -> results.jsonl
    rxe-power stress --cycles N [--transition T] [--policy P,..] [--maxfail N]
                                                     one transition over and over, leak checks
    rxe-power report RESULTS.jsonl|DIR               table, timeline PNGs, HTML summary
    rxe-power bench  [--sizes ..] [--only S,..]      harness vs perftest, standby cycle parts
    rxe-power doctor [--json]                        what is missing, with the fix
    rxe-power test   [--mode auto|native|vm] [-- ARGS]  the test suite (pytest ARGS)
    rxe-power transition NAME [--ordering O] [--hold-ms N] [--on-veto wait|force]
                                                     one power transition of the local HCA
    rxe-power check                                  a traffic check rxe0 <-> rxe1
    rxe-power recover                                put the local side back after a veto
    rxe-power cleanup                                remove what a killed run left
    rxe-power setup | teardown | show                the topology on this kernel (root)
    rxe-power vm [--timeout-s N] -- CMD              run any command in the rxe VM

`--mode auto` (the default) uses the running kernel when it has (or can load)
rdma_rxe, else boots a distribution kernel that has it in QEMU (virtme-ng) and
runs the same command there with `--mode native`; output, exit code and the
results folder come back. Option values are checked before any VM boots.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rxe-power", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    mode_help = SETTINGS["rxe-mode"].help + " (env RXE_POWER_MODE)"
    results_commands.add_parsers(sub, mode_help)
    maintenance.add_check_parser(sub, mode_help)
    suite.add_parser(sub, mode_help)
    power_commands.add_parsers(sub, mode_help)
    doctor.add_parser(sub)
    bench_command.add_parser(sub)
    maintenance.add_topology_parsers(sub)
    sub.add_parser("vm", help="run a command in the rxe VM: vm [--timeout-s N] -- CMD",
                   add_help=False)
    return ap


def main(argv: list[str] | None = None, out: Printer = STDOUT) -> int:
    """`out`: how the CLI speaks to its user (made here, at the edge, and handed to every
    command; its errors go to the same printer on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vm"]:  # everything after `vm` belongs to the VM runner's own parser
        return vm_command_line.main(argv[1:], prog="rxe-power vm")
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if hasattr(args, "mode"):
            args.mode = resolve("rxe-mode", args.mode, option="--mode").value
        settings.check_environment()  # every value, before any VM boots
        if getattr(args, "pytest_args", None) and args.pytest_args[0] == "--":
            args.pytest_args = args.pytest_args[1:]
        with _topology_lock(args):
            return int(args.func(args, out))
    except RxePowerError as exc:
        out.to_stderr()(f"rxe-power: error: {exc}")
        return HARNESS_ERROR_EXIT
    except StopSignal as stop:  # the guest is gone by now (harness.vm.process.end_guest)
        out.to_stderr()(f"rxe-power: stopped by {stop}")
        return stop.exit_code


@contextlib.contextmanager
def _topology_lock(args: argparse.Namespace) -> Iterator[None]:
    """The run lock around a command that uses the topology here. Not taken by a non-root
    caller (such a command refuses it: it can touch nothing)."""
    if args.command not in TOPOLOGY_COMMANDS or os.geteuid() != 0:
        yield
        return
    with run_lock(shlex.join(["rxe-power", *args.argv])):
        yield


if __name__ == "__main__":
    raise SystemExit(main())

"""`rxe-power test`: the test suite (pytest) where rxe exists.

In the VM mode the tests not marked rxe run on this host (they need no rxe, and under
emulation they would cost minutes) and the tests marked rxe run in the guest. A marker
selection of the caller's (`-m EXPR`) is kept on both sides: `(EXPR) and not rxe` here,
`(EXPR) and rxe` in the guest; a guest part that cannot select any test is not booted
(`-m 'not rxe'` runs here only). A side that collects nothing exits 5, which alone does
not fail the command. Given no test path, the guest collects only RXE_TESTS (where every
rxe test lives: tests/conftest.py refuses one elsewhere): importing the pure-logic
modules only to deselect them cost 33 s under TCG.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cli import launch
from harness.cli.invocation import Invocation, Job, invoke, mode_of
from harness.cli.jobs import (
    add_jobs_option,
    folders,
    jobs_of,
    merge_test_durations,
    results_base,
    run_jobs,
)
from harness.cli.launch import Subcommands
from harness.cli.operations import run_invocation
from harness.cli.peer_option import add_peer_option
from harness.cli.removal import add_removal_option
from harness.cli.shard_option import add_shard_option, pytest_shard, suite_pytest_args
from harness.core.errors import BoundExceeded
from harness.core.files import make_dir
from harness.core.printer import Printer
from harness.core.proc import python_child, run_bounded
from harness.core.shards import TEST_DURATIONS_NAME

MAX_MARKER_NAMES = 12  # names tried in every combination (4096)
PYTEST_NO_TESTS = 5  # pytest.ExitCode.NO_TESTS_COLLECTED
RXE_TESTS = "tests/rxe"  # relative to the repository root, the suite's working directory
TEST_VM_TIMEOUT_S = 3600.0  # the suite takes 15-20 min in TCG; CI allows 90


def add_parser(subparsers: Subcommands, mode_help: str) -> None:
    p = subparsers.add_parser("test", help="run the test suite (pytest) where rxe exists")
    p.add_argument("--mode", default=None, help=mode_help)
    add_removal_option(p)
    add_peer_option(p)
    p.add_argument("--timeout-s", type=float, default=TEST_VM_TIMEOUT_S,
                   help="bound on the whole VM run")
    add_shard_option(p, "test")
    add_jobs_option(p)
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest")
    p.set_defaults(func=cmd_test)


@dataclass(frozen=True)
class TestJob(Job):
    """`test`: pytest's arguments. Natively pytest runs in this process; in VM mode the
    tests not marked rxe run on the host (host_part) and the job the guest gets selects
    the rxe ones. The removal mode, when the command has one, is pytest's --removal
    (before the caller's own: a --removal among them wins, as in pytest)."""

    __test__ = False  # a job, not a test class pytest should collect
    KIND = "test"
    LOADS_MODULE = False  # the suite's plugin loads the module (each module's own)
    USES_TOPOLOGY = False  # no run lock: the suite's session has its own state
    LOG_NAME = "vm-test-console.log"
    RECORD_NAME = "test-invocation.json"
    pytest_args: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"pytest_args": list(self.pytest_args)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TestJob:
        args = d["pytest_args"]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise TypeError("pytest_args is not a list of strings")
        return cls(tuple(args))

    def run_here(self, inv: Invocation, out: Printer) -> int:
        import pytest  # only here: no other command needs the test runner loaded

        return int(pytest.main([*removal_args(inv), *self.pytest_args]))

    def host_part(self, inv: Invocation, out: Printer) -> tuple[Job | None, int | None]:
        say = out.prefixed("rxe-power test: ")
        expr, rest = split_marker_expression(list(self.pytest_args))
        host_expr, guest_expr = side_expressions(expr)
        # The pure-logic tests need no rxe: here, natively (under emulation they cost
        # minutes).
        say(f"the tests not marked rxe, on this host: pytest -m '{host_expr}' "
            + " ".join(rest))
        host_argv = python_child("pytest", *removal_args(inv), "-m", host_expr, *rest)
        try:
            host_rc = run_bounded(host_argv, inv.timeout_s, step="the host part of the tests",
                                  bound_name="--timeout-s", outstanding=" ".join(host_argv),
                                  capture=False).returncode
        except BoundExceeded as exc:
            say(exc.problem)
            host_rc = 1
        if selects_nothing(guest_expr):
            say(f"-m '{guest_expr}' selects no rxe test: no guest")
            return None, combined_pytest_exit(host_rc)
        say("the tests marked rxe, in the VM")
        return TestJob(("-m", guest_expr, *rest, *guest_paths(rest))), host_rc

    def after_guest(self, inv: Invocation, host_code: int | None, guest_code: int,
                    out: Printer) -> int:
        assert host_code is not None  # host_part ran the host part
        out(f"rxe-power test: host part exit {host_code}, VM part exit {guest_code}")
        return combined_pytest_exit(host_code, guest_code)


def removal_args(inv: Invocation) -> list[str]:
    return [] if inv.removal is None else ["--removal", str(inv.removal)]


def cmd_test(args: argparse.Namespace, out: Printer) -> int:
    # --shard I/N checked before any VM boots; every run records its tests' durations
    pytest_args = recording_durations(suite_pytest_args(args))
    jobs = jobs_of(args, mode_of(args), pytest_shard(pytest_args), None, "tests",
                   out)
    if jobs > 1:
        base = make_dir(results_base(args, "test"))
        done = run_jobs(args, jobs, base, out)
        merge_test_durations(folders(base, jobs), base, out)
        return combined_pytest_exit(*(f.exit_code for f in done))
    inv = invoke(args, TestJob(tuple(pytest_args)), launch.RESULTS_DIR, out)
    return run_invocation(inv, out)


def recording_durations(pytest_args: list[str]) -> list[str]:
    """pytest's arguments with `--record-durations RESULTS/test-durations.json` added (both
    parts add their tests' seconds to it), unless the caller records somewhere already."""
    if any(a == "--record-durations" or a.startswith("--record-durations=")
           for a in pytest_args):
        return list(pytest_args)
    return [*pytest_args, "--record-durations",
            str(launch.RESULTS_DIR.absolute() / TEST_DURATIONS_NAME)]


# pytest options whose value is the next argument (a value is never a test path)
VALUE_OPTIONS = frozenset({"-k", "-m", "-p", "-c", "-o", "-W", "-r", "--durations",
                           "--durations-min", "--deselect", "--ignore", "--ignore-glob",
                           "--timeout", "--rootdir", "--junitxml", "--basetemp", "--maxfail",
                           "--tb", "--confcutdir", "--override-ini", "--removal",
                           "--shard", "--shard-durations", "--record-durations"})


def guest_paths(rest: list[str]) -> list[str]:
    """[RXE_TESTS] when none of the caller's arguments names a test path (an existing file
    or folder, a node id's file part), else nothing: the caller's paths are collected. An
    option's value taken for a path only costs the full collection; a path missed only
    adds the rxe tests."""
    if not Path(RXE_TESTS).is_dir():
        return []
    named, after_option = [], False
    for a in rest:
        if not after_option and not a.startswith("-") and Path(a.split("::")[0]).exists():
            named.append(a)
        after_option = a in VALUE_OPTIONS
    return [] if named else [RXE_TESTS]


def combined_pytest_exit(*codes: int) -> int:
    """One exit code for several pytest runs: the first failure's; 5 ("no tests
    collected") only when every part collected nothing."""
    failures = [c for c in codes if c not in (0, PYTEST_NO_TESTS)]
    if failures:
        return failures[0]
    return PYTEST_NO_TESTS if all(c == PYTEST_NO_TESTS for c in codes) else 0


def split_marker_expression(argv: list[str]) -> tuple[str | None, list[str]]:
    """The caller's `-m EXPR` (`-m EXPR`, `-mEXPR` or `-m=EXPR`; the last one wins, as in
    pytest) and the other arguments, in order. A `-m` with no value is left to pytest."""
    expr = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-m" and i + 1 < len(argv):
            expr, i = argv[i + 1], i + 2
            continue
        if a.startswith("-m") and a != "-m":
            expr = a[3:] if a.startswith("-m=") else a[2:]
        else:
            rest.append(a)
        i += 1
    return expr, rest


def side_expressions(expr: str | None) -> tuple[str, str]:
    """The marker expressions of the host part and the guest part."""
    if expr is None or not expr.strip():
        return "not rxe", "rxe"
    return f"({expr}) and not rxe", f"({expr}) and rxe"


def selects_nothing(guest_expr: str) -> bool:
    """True when the guest part's expression is false for every test marked rxe, whatever
    its other markers: tried for each set of the other names in the expression."""
    from _pytest.mark.expression import Expression  # pytest's own parser of -m

    try:
        compiled = Expression.compile(guest_expr)
    except SyntaxError:  # a bad expression: pytest itself says what is wrong, in the guest
        return False
    names = sorted(set(re.findall(r"[A-Za-z_][\w.]*", guest_expr))
                   - {"and", "or", "not", "rxe", "True", "False"})[:MAX_MARKER_NAMES]
    for bits in range(2 ** len(names)):
        have = {"rxe"} | {n for k, n in enumerate(names) if bits >> k & 1}
        if compiled.evaluate(_Markers(have)):
            return False
    return True


class _Markers:
    """A test's markers as pytest's expression matcher asks for them."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def __call__(self, name: str, /, **kwargs: str | int | bool | None) -> bool:
        return name in self.names

"""`rxe-power test`: the test suite (pytest) where rxe exists.

In the VM mode the tests not marked rxe run on this host (they need no rxe, and under
emulation they would cost minutes) and the tests marked rxe run in the guest; a
marker selection (`-m ...`) runs as asked, all of it in the guest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from harness.cli.launch import Subcommands, choose_mode, run_in_guest
from harness.core.settings import Mode

PYTEST_NO_TESTS = 5  # pytest.ExitCode.NO_TESTS_COLLECTED
TEST_VM_TIMEOUT_S = 3600.0  # the suite takes 15-20 min in TCG; CI allows 90


def add_parser(subparsers: Subcommands, mode_help: str) -> None:
    p = subparsers.add_parser("test", help="run the test suite (pytest) where rxe exists")
    p.add_argument("--mode", default=None, help=mode_help)
    p.add_argument("--timeout-s", type=float, default=TEST_VM_TIMEOUT_S,
                   help="bound on the whole VM run")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest")
    p.set_defaults(func=cmd_test)


def cmd_test(args: argparse.Namespace) -> int:
    mode, why = choose_mode(args.mode)
    print(f"rxe-power test: mode {mode.value} ({why})", flush=True)
    if mode is not Mode.VM:
        import pytest  # only here: no other command needs the test runner loaded

        return int(pytest.main(args.pytest_args))
    if any(a.startswith("-m") for a in args.pytest_args):
        # the caller selects by marker: all of it in the guest, as asked
        return run_in_guest([sys.executable, "-m", "pytest", *args.pytest_args], args.timeout_s,
                            "vm-test-console.log")
    # The pure-logic tests need no rxe: here, natively (under emulation they cost minutes).
    print("rxe-power test: the tests not marked rxe, on this host: pytest -m 'not rxe' "
          + " ".join(args.pytest_args), flush=True)
    host_argv = [sys.executable, "-m", "pytest", "-m", "not rxe", *args.pytest_args]
    try:
        host_rc = subprocess.run(host_argv, check=False, timeout=args.timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"rxe-power test: the host part did not finish within --timeout-s="
              f"{args.timeout_s:g}s (still running: {' '.join(host_argv)}); killed", flush=True)
        host_rc = 1
    print("rxe-power test: the tests marked rxe, in the VM", flush=True)
    vm_rc = run_in_guest([sys.executable, "-m", "pytest", "-m", "rxe", *args.pytest_args],
                         args.timeout_s, "vm-test-console.log")
    print(f"rxe-power test: host part exit {host_rc}, VM part exit {vm_rc}", flush=True)
    return combined_pytest_exit(host_rc, vm_rc)


def combined_pytest_exit(*codes: int) -> int:
    """One exit code for several pytest runs: the first failure's; 5 ("no tests
    collected") only when every part collected nothing."""
    failures = [c for c in codes if c not in (0, PYTEST_NO_TESTS)]
    if failures:
        return failures[0]
    return PYTEST_NO_TESTS if all(c == PYTEST_NO_TESTS for c in codes) else 0

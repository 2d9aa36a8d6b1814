"""`--shard I/N` on run, matrix, stress and test: the option, read and checked before any VM
boots (harness.core.shards does the split; harness.run.shard_plans plans a matrix's or a
stress run's shard; the pytest plugin splits the tests)."""

from __future__ import annotations

import argparse

from harness.core.errors import SettingError
from harness.core.shards import Shard, parse_shard

SHARD_HELP = ("run only shard I of N of this run (1-based; e.g. 1/2 and 2/2 on two "
              "machines): the shards split the run by its recorded durations, together "
              "they run every {what} exactly once, and `rxe-power report` of their results "
              "merges them")


def add_shard_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--shard", metavar="I/N", help=SHARD_HELP.format(what=what))


def shard_of(args: argparse.Namespace) -> Shard | None:
    """The command's --shard, checked (SettingError naming the problem and the fix)."""
    text = getattr(args, "shard", None)
    return None if text is None else parse_shard(text)


def pytest_shard(pytest_args: list[str]) -> Shard | None:
    """A `--shard I/N` among pytest's arguments (`--shard I/N` or `--shard=I/N`, the last
    one wins as in pytest), checked here so that a bad one fails before any VM boots."""
    found = None
    for i, a in enumerate(pytest_args):
        if a == "--shard":
            found = parse_shard(pytest_args[i + 1] if i + 1 < len(pytest_args) else "")
        elif a.startswith("--shard="):
            found = parse_shard(a.split("=", 1)[1])
    return found


def suite_pytest_args(args: argparse.Namespace) -> list[str]:
    """pytest's arguments for `rxe-power test [--shard I/N] [-- ARGS]`: the caller's, with
    the command's --shard added (both checked; a --shard in both must agree)."""
    own, given = shard_of(args), pytest_shard(args.pytest_args)
    if own is None:
        return list(args.pytest_args)
    if given is not None and given != own:
        raise SettingError(f"rxe-power test --shard {own} and pytest's --shard {given} "
                           "differ", "give the shard once: rxe-power test --shard I/N")
    return [*args.pytest_args, "--shard", str(own)]

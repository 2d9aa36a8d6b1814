"""The tests in shards: `--shard I/N` keeps shard I's tests (split by their recorded
durations, harness.core.shards), `--record-durations FILE` adds each test's seconds to
FILE at the end of the session."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.core import settings
from harness.core.errors import RxePowerError, SettingError
from harness.core.shards import (
    TEST_DURATIONS_ABOUT,
    TEST_DURATIONS_FILE,
    Shard,
    estimates,
    parse_shard,
    read_durations,
    split,
    write_durations,
)

DURATIONS_FILE = TEST_DURATIONS_FILE  # the recorded seconds of each test, by node id
DURATIONS_ABOUT = TEST_DURATIONS_ABOUT

SHARD = pytest.StashKey[Shard]()  # --shard I/N
SHARD_LINE = pytest.StashKey[str]()  # what this shard runs, for the terminal summary


def configure_shards(config: pytest.Config) -> None:
    """Read --shard (a bad one is a usage error) and start --record-durations (refused
    into the file --shard splits by)."""
    text = config.getoption("rxe_shard", None)
    if text is not None:
        try:
            config.stash[SHARD] = parse_shard(text)
        except SettingError as exc:
            raise pytest.UsageError(f"{exc.problem}; fix: {exc.fix}") from None
    record = config.getoption("record_durations", None)
    if record is not None:
        if SHARD in config.stash and Path(record).absolute() == durations_path(config):
            raise pytest.UsageError(
                f"--record-durations {record} is the file --shard splits by: the shards run "
                "after this one would split by other durations than this one did, and some "
                "tests would run twice and others never; fix: record into another file "
                "(--record-durations FILE) and put it in place once every shard has run, or "
                "record in a run without --shard")
        config.pluginmanager.register(DurationRecorder(Path(record)), "rxe-power-durations")


def durations_path(config: pytest.Config) -> Path:
    """The durations file --shard splits by."""
    return Path(config.getoption("shard_durations", None)
                or config.rootpath / DURATIONS_FILE).absolute()


def keep_shard(config: pytest.Config, items: list[pytest.Item], shard: Shard) -> None:
    """Deselect every test but shard `shard`'s (harness.core.shards.split by the recorded
    durations; a test without one counts the median)."""
    path = durations_path(config)
    try:
        durations = read_durations(path)
    except RxePowerError as exc:
        raise pytest.UsageError(f"{exc.problem}; fix: {exc.fix}") from None
    names = [it.nodeid for it in items]
    parts = split(names, durations, shard.total)
    mine = set(parts[shard.index - 1])
    dropped = [it for i, it in enumerate(items) if i not in mine]
    items[:] = [it for i, it in enumerate(items) if i in mine]
    config.hook.pytest_deselected(items=dropped)
    est = estimates(names, durations)
    loads = ", ".join(f"{sum(est[i] for i in part):.0f}" for part in parts)
    known = sum(1 for n in names if n in durations)
    config.stash[SHARD_LINE] = (
        f"shard {shard}: {len(items)} of {len(names)} tests (the {shard.total} shards expect "
        f"{loads} s; {known} of the {len(names)} tests have a recorded duration in {path})")


class DurationRecorder:
    """--record-durations FILE: each test's setup, call and teardown seconds, added to FILE
    at the end of the session (a test recorded again takes its new value)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.seconds:
            return
        where = "in the VM" if settings.in_vm() else f"kernel {os.uname().release}"
        args = " ".join(session.config.invocation_params.args)
        try:
            write_durations(self.path, self.seconds, DURATIONS_ABOUT,
                            f"{time.strftime('%Y-%m-%d')}: pytest {args} "
                            f"({len(self.seconds)} tests, {where})")
        except RxePowerError as exc:  # the tests' own outcome stands; the file is a by-product
            said = (f"rxe-power: the tests' durations were not recorded: {exc.problem}; fix: "
                    f"{exc.fix}")
        else:
            said = f"rxe-power: the seconds of {len(self.seconds)} tests added to {self.path}"
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(said)

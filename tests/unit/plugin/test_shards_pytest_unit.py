"""The test suite in shards (harness/plugin/shards.py --shard, --record-durations): pytest runs of
a small suite written here, through the rxe_power plugin, in this process (as pytester
runs them). The shards
together run every selected test exactly once (what -m deselects is split by nobody), the
split follows the recorded durations, and --record-durations writes them."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

from harness.core.shards import read_durations, split

SUITE = '''
import time
import pytest

@pytest.mark.parametrize("n", range(12))
def test_fast(n):
    pass

@pytest.mark.rxe
def test_marked_rxe():
    pass

def test_slow():
    time.sleep(0.3)

class TestGroup:
    def test_one(self):
        pass

    def test_two(self):
        pass
'''


class Run:
    """One in-process pytest run of the small suite: its exit code, what passed, its
    output."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.passed: list[str] = []
        before = set(sys.modules)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            self.code = pytest.main(["-p", "no:cacheprovider", "-q", "--rootdir", str(folder),
                                     "-c", str(folder / "tox.ini"), *args, str(folder)],
                                    plugins=[self])
        self.output = buf.getvalue()
        for name in set(sys.modules) - before:  # the small suite's modules, as pytester does
            if name.startswith("test_small"):
                del sys.modules[name]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed:
            self.passed.append(report.nodeid)

    @property
    def ran(self) -> list[str]:
        return sorted(self.passed)


@pytest.fixture
def suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # its rxe test must skip here, also under CI's RXE_POWER_REQUIRE_RXE=1 (there a host
    # without rxe fails it instead: the durations test then saw an error, not a skip)
    monkeypatch.setenv("RXE_POWER_REQUIRE_RXE", "0")
    (tmp_path / "tox.ini").write_text("[pytest]\naddopts = \n")
    (tmp_path / "test_small.py").write_text(SUITE)
    return tmp_path


def test_the_shards_of_a_suite_run_every_test_once(suite: Path) -> None:
    whole = Run(suite, "-m", "not rxe")
    assert whole.code == 0, whole.output[-3000:]
    everything = whole.ran
    assert len(everything) == 15 and not any("rxe" in t for t in everything)
    for total in (1, 2, 3, 7):
        parts = []
        for i in range(1, total + 1):
            res = Run(suite, "-m", "not rxe", "--shard", f"{i}/{total}")
            assert res.code == 0, res.output[-3000:]
            assert f"rxe-power: shard {i}/{total}: " in res.output
            parts.append(res.ran)
        assert sorted(t for p in parts for t in p) == everything, total  # once each
        assert all(parts)


def test_recorded_durations_drive_the_split(suite: Path) -> None:
    record = suite / "durations.json"
    res = Run(suite, "--record-durations", str(record))
    assert res.code == 0, res.output[-3000:]
    seconds = read_durations(record)
    assert len(seconds) == 16  # every test that ran, the rxe one (skipped here) too
    assert seconds["test_small.py::test_slow"] >= 0.3
    doc = json.loads(record.read_text())
    assert "--record-durations" in doc["sources"][0]
    # the slow test alone in its shard: time, not count
    res = Run(suite, "-m", "not rxe", "--shard", "1/2", "--shard-durations", str(record))
    assert res.ran == ["test_small.py::test_slow"], res.output[-2000:]
    assert "15 of the 15 tests have a recorded duration" in res.output
    names = [n for n in seconds if "rxe" not in n]
    assert [names[i] for i in split(names, seconds, 2)[0]] == ["test_small.py::test_slow"]


@pytest.mark.parametrize("args, problem", [
    (("--shard", "3/2"), "shard 3 of 2 does not exist"),
    (("--shard", "x"), "is not of the form I/N"),
])
def test_a_bad_shard_stops_pytest_with_the_fix(suite: Path, args: tuple[str, ...],
                                              problem: str) -> None:
    res = Run(suite, *args)
    assert res.code == pytest.ExitCode.USAGE_ERROR
    assert problem in res.output and "fix:" in res.output


def test_a_bad_durations_file_stops_the_shard(suite: Path) -> None:
    (suite / "bad.json").write_text("{")
    res = Run(suite, "--shard", "1/2", "--shard-durations", str(suite / "bad.json"))
    assert res.code == pytest.ExitCode.USAGE_ERROR
    assert "is not JSON" in res.output and "bad.json" in res.output


def test_recording_into_the_file_the_shards_split_by_is_refused(suite: Path) -> None:
    """Shard 1 recording into the durations file shard 2 then splits by would change shard
    2's split (seen in a guest run: the host part's shards ran 393 and 320 of 786 tests)."""
    (suite / "d.json").write_text('{"seconds": {}}')
    res = Run(suite, "--shard", "1/2", "--shard-durations", str(suite / "d.json"),
              "--record-durations", str(suite / "d.json"))
    assert res.code == pytest.ExitCode.USAGE_ERROR
    assert "is the file --shard splits by" in res.output and "fix:" in res.output
    res = Run(suite, "-m", "not rxe", "--shard", "1/2", "--shard-durations",
              str(suite / "d.json"), "--record-durations", str(suite / "other.json"))
    assert res.code == 0 and len(read_durations(suite / "other.json")) == len(res.ran) > 0


def test_a_durations_file_that_cannot_be_written_costs_the_run_nothing(suite: Path) -> None:
    """Every `rxe-power test` run records (issue 27): a bad file there is said, and the
    tests' own outcome stands. The control: a good file is added to and said so."""
    (suite / "bad.json").write_text("{")
    res = Run(suite, "-m", "not rxe", "--record-durations", str(suite / "bad.json"))
    assert res.code == 0, res.output[-2000:]
    assert "the tests' durations were not recorded" in res.output and "is not JSON" in \
        res.output and "fix:" in res.output
    assert (suite / "bad.json").read_text() == "{"  # left as it was
    res = Run(suite, "-m", "not rxe", "--record-durations", str(suite / "good.json"))
    assert res.code == 0
    assert f"the seconds of 15 tests added to {suite / 'good.json'}" in res.output

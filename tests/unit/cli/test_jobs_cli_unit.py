"""`--jobs N` on run, matrix, stress and test (harness/cli/jobs.py): a bad N is refused
before any VM boots or any shard starts, with the problem and the fix; the default follows
the machine (one guest per RXE_POWER_VM_CPUS cores that the free memory holds); shard I of
N is the command itself with --shard I/N, --mode vm and its own results folder; the shards'
results are merged by the report's merge, the suite's durations into one file. Pure logic:
the shards (harness.vm.parallel.run_parallel) are replaced by a stand-in that leaves what
real shards leave (recorded results cut by the project's split). The shards run for real,
killed and stopped: tests/unit/vm/test_parallel_unit.py; in the guest: issue 27's note."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.cli import jobs, launch, main
from harness.core.printer import Printer
from harness.core.proc import PACKAGES_ROOT
from harness.core.settings import Mode
from harness.core.shards import TEST_DURATIONS_NAME, read_durations, write_durations
from harness.vm.parallel import Child, Finished
from tests.helpers.guest_recorder import GuestRecorder
from tests.helpers.shard_results import shard_files

DATA = Path(__file__).parents[2] / "data"
RECORDED = DATA / "matrix-standby-linkflap.jsonl"


class NoShards:
    """run_parallel that must not be called (a bad --jobs starts nothing)."""

    def __call__(self, *a: object, **kw: object) -> list[Finished]:
        raise AssertionError("a shard was started")


@pytest.fixture
def no_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "run_parallel", NoShards())


@pytest.mark.parametrize("argv, problem", [
    (["run", "--jobs", "0"], "--jobs '0' is not a number of guests from 1 to 64"),
    (["matrix", "--jobs", "two"], "--jobs 'two' is not a number"),
    (["run", "--jobs", "65"], "--jobs '65' is not a number of guests from 1 to 64"),
    (["run", "--jobs", "12"], "the run has 11 scenarios, fewer than 12 shards"),
    (["run", "--jobs", "2", "--shard", "1/2"], "--jobs splits the run into shards itself"),
    (["stress", "--cycles", "3", "--jobs", "4"], "the run has 3 cycles, fewer than 4 shards"),
    (["test", "--jobs", "2", "--", "-k", "x", "--shard", "1/2"], "--jobs 2 and --shard 1/2"),
    (["test", "--jobs", "-1"], "--jobs '-1' is not a number"),
])
def test_a_bad_jobs_is_refused_before_anything_starts(
        guest: GuestRecorder, no_shards: None, capsys: pytest.CaptureFixture[str],
        argv: list[str], problem: str) -> None:
    assert main.main([argv[0], "--mode", "vm", *argv[1:]]) == main.HARNESS_ERROR_EXIT
    assert guest.requests == []
    err = capsys.readouterr().err
    assert problem in err and "fix:" in err


def test_more_guests_than_the_memory_holds_are_refused(
        guest: GuestRecorder, no_shards: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(jobs, "_available_mib", lambda: 3 * jobs.GUEST_MEMORY_MIB - 1)
    assert main.main(["run", "--mode", "vm", "--jobs", "3"]) == main.HARNESS_ERROR_EXIT
    err = capsys.readouterr().err
    assert "3 guests of 2048 MiB need 6144 MiB" in err and "at most --jobs 2" in err


def test_jobs_in_the_native_mode_are_refused(guest: GuestRecorder, no_shards: None,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(launch, "native_rxe_available", lambda: (True, "rdma_rxe is loaded"))
    assert main.main(["matrix", "--mode", "native", "--jobs", "2"]) == main.HARNESS_ERROR_EXIT
    err = capsys.readouterr().err
    assert "one topology for one run at a time" in err and "--mode vm" in err


@pytest.mark.parametrize("cores, vm_cpus, mib, items, want", [
    (2, 2, 22000, None, 1),  # this machine: one guest
    (1, 2, 22000, None, 1),  # fewer cores than a guest's vCPUs: still one
    (8, 2, 22000, None, 4),  # a CI runner of 8 cores
    (8, 2, 5000, None, 2),  # the memory holds two
    (8, 2, 22000, 3, 3),  # three scenarios
    (16, 1, 9000, None, 4),  # one vCPU per guest: the memory decides
    (8, 2, None, None, 4),  # memory unreadable: the cores decide
])
def test_the_default_follows_the_cores_and_the_memory(cores: int, vm_cpus: int,
                                                      mib: int | None, items: int | None,
                                                      want: int) -> None:
    n, why = jobs.default_jobs(cores, vm_cpus, mib, items)
    assert n == want
    assert f"{cores} cores / {vm_cpus} vCPUs per guest" in why


def _args(argv: list[str]) -> argparse.Namespace:
    args = main.build_parser().parse_args(argv)
    args.argv = argv
    return args


def test_no_jobs_given_is_one_in_the_native_mode_and_for_a_shard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "machine_jobs", lambda items: (4, "a big machine"))
    quiet = Printer(open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    assert jobs.jobs_of(_args(["run"]), Mode.VM, None, 11, "scenarios", quiet) == 4
    assert jobs.jobs_of(_args(["run"]), Mode.NATIVE, None, 11, "scenarios", quiet) == 1
    from harness.core.shards import Shard
    assert jobs.jobs_of(_args(["run"]), Mode.VM, Shard(1, 2), 11, "scenarios", quiet) == 1


def test_each_shard_is_the_command_with_its_shard_and_folder(tmp_path: Path) -> None:
    args = _args(["run", "--jobs", "2", "--transition", "link-flap", "--mode=auto", "--out",
                  "somewhere", "--junit", "j.xml", "--timeout-s", "900"])
    kids = jobs.shard_children(args, 2, tmp_path)
    for i, kid in enumerate(kids, 1):
        argv = kid.argv
        tail = argv[argv.index("harness.cli.shard_job") + 1:]
        assert tail == ["run", "--shard", f"{i}/2", "--mode", "vm", "--out",
                        str(tmp_path / f"shard-{i}"), "--transition", "link-flap",
                        "--timeout-s", "900"]
        assert kid.env == {"RXE_POWER_RESULTS": str(tmp_path / f"shard-{i}")}
        assert kid.label == f"{i}/2"


def test_the_suites_pytest_arguments_go_to_every_shard_untouched(tmp_path: Path) -> None:
    args = _args(["test", "--jobs", "2", "--", "-k", "x", "--out", "y", "--jobs", "3"])
    kids = jobs.shard_children(args, 2, tmp_path)
    tail = kids[1].argv[kids[1].argv.index("harness.cli.shard_job") + 1:]
    assert tail == ["test", "--shard", "2/2", "--mode", "vm", "--", "-k", "x", "--out", "y",
                    "--jobs", "3"]


class RecordedShards:
    """run_parallel standing in for N real shards: each shard's folder gets what a real
    shard leaves (its results file, cut from a recorded run by the project's split; for
    the suite, its recorded durations), and each exits with the given code."""

    def __init__(self, codes: Sequence[int], suite: bool = False) -> None:
        self.codes = codes
        self.suite = suite
        self.children: list[Child] = []

    def __call__(self, children: Sequence[Child], timeout_s: float, out: Printer,
                 bound_name: str = "") -> list[Finished]:
        self.children = list(children)
        base = Path(children[0].env["RXE_POWER_RESULTS"]).parent
        if self.suite:
            for i, _ in enumerate(children, 1):
                write_durations(base / f"shard-{i}" / TEST_DURATIONS_NAME,
                                {f"tests/t.py::test_{i}": float(i)}, "about", "shard")
        else:
            shard_files(RECORDED, len(children), base)
        return [Finished(c, code, 1.0) for c, code in zip(children, self.codes, strict=True)]


def test_the_shards_results_are_merged_in_the_runs_folder(
        guest: GuestRecorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    shards = RecordedShards([0, 0])
    monkeypatch.setattr(jobs, "run_parallel", shards)
    base = tmp_path / "run-jobs"
    code = main.main(["matrix", "--mode", "vm", "--jobs", "2", "--out", str(base),
                      "--junit", str(tmp_path / "all.xml")])
    assert code == 0 and guest.requests == []  # the shards boot the guests, not this
    assert len(shards.children) == 2
    table = (base / "table.txt").read_text()
    assert "merged from 2 results files" in table
    for i in (1, 2):  # each shard's own table stays in its own folder
        assert (base / f"shard-{i}" / "table.txt").is_file()
        assert f"shard-{i}/results.jsonl" in table
    assert (base / "summary.html").is_file()
    assert (tmp_path / "all.xml").read_bytes() == (base / "junit.xml").read_bytes()
    out = capsys.readouterr().out
    assert "shard 1/2: exit 0 after 1.0 s" in out


def test_a_failed_shard_fails_the_run(guest: GuestRecorder, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    monkeypatch.setattr(jobs, "run_parallel", RecordedShards([0, 124]))
    assert main.main(["matrix", "--mode", "vm", "--jobs", "2", "--out",
                      str(tmp_path / "r")]) == 124


def test_the_suites_shards_durations_are_merged(guest: GuestRecorder,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "run_parallel", RecordedShards([0, 1], suite=True))
    assert main.main(["test", "--mode", "vm", "--jobs", "2", "--", "-k", "x"]) == 1
    [base] = [p for p in launch.RESULTS_DIR.iterdir() if p.name.startswith("test-")]
    assert read_durations(base / TEST_DURATIONS_NAME) == {"tests/t.py::test_1": 1.0,
                                                          "tests/t.py::test_2": 2.0}
    doc = json.loads((base / TEST_DURATIONS_NAME).read_text())
    assert "rxe-power test --jobs 2" in doc["sources"][-1]


SHARD_CHILD = """
import subprocess, sys
from harness.cli import shard_job
import signal
if sys.argv[1] == "handler":
    signal.signal(signal.SIGTERM, shard_job.end_my_group)
kid = subprocess.Popen(["sleep", "300"])
print(kid.pid, flush=True)
kid.wait()
"""


@pytest.mark.parametrize("handler", [True, False])
def test_sigterm_to_a_shard_ends_its_children_too(handler: bool) -> None:
    """Outside a guest (the suite's host part), SIGTERM to a shard ends its children with
    it; the control: without the handler the child outlives the shard."""
    shard = subprocess.Popen([sys.executable, "-c", SHARD_CHILD,
                              "handler" if handler else "none"], cwd=PACKAGES_ROOT,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert shard.stdout is not None
    kid = int(shard.stdout.readline())
    try:
        shard.send_signal(signal.SIGTERM)
        shard.wait(timeout=10)
        end = time.monotonic() + (5.0 if handler else 1.0)  # the control: it stays
        while _alive(kid) and time.monotonic() < end:
            time.sleep(0.05)
        assert _alive(kid) is not handler
    finally:
        if _alive(kid):
            os.kill(kid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

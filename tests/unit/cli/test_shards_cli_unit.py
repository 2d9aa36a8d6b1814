"""`--shard I/N` on run, matrix, stress and test: refused before any VM boots when bad (the
problem and the fix on stderr), handed to the guest (and to both parts of the suite) when
good. Pure logic: the VM runner and the host part's pytest are replaced by recorders."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.cli import launch, main, operations, suite
from harness.core.shards import Shard
from tests.helpers.guest_recorder import GuestRecorder


@pytest.mark.parametrize("argv, problem", [
    (["matrix", "--shard", "3/2"], "shard 3 of 2 does not exist"),
    (["run", "--shard", "1/0"], "0 shards"),
    (["run", "--shard", "12/12"], "the run has 11 scenarios, fewer than 12 shards"),
    (["matrix", "--transition", "link-flap", "--policy", "graceful", "--shard", "3/3"],
     "the run has 2 scenarios, fewer than 3 shards, so shard 3 has nothing to run"),
    (["stress", "--cycles", "3", "--shard", "1/4"], "3 cycles cannot be split into 4"),
    (["stress", "--shard", "one/two"], "is not of the form I/N"),
    (["test", "--shard", "0/3"], "shard 0 of 3 does not exist"),
    (["test", "--", "-k", "x", "--shard=4/3"], "shard 4 of 3 does not exist"),
    (["test", "--shard", "1/2", "--", "--shard", "2/2"], "differ"),
])
def test_a_bad_shard_is_refused_before_the_vm_boots(
        guest: GuestRecorder, capsys: pytest.CaptureFixture[str], argv: list[str],
        problem: str) -> None:
    assert main.main([argv[0], "--mode", "vm", *argv[1:]]) == main.HARNESS_ERROR_EXIT
    assert guest.requests == []  # no boot
    err = capsys.readouterr().err
    assert problem in err and "fix:" in err and "--shard" in err


def test_a_matrix_shard_goes_to_the_guest_and_says_what_it_runs(
        guest: GuestRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main.main(["matrix", "--mode", "vm", "--transition", "link-flap", "--policy",
                      "graceful,fail-fast", "--shard", "2/2", "--out", str(tmp_path / "o")])
    assert code == operations.RESULTS_MISSING_EXIT  # the recorder wrote no results
    [inv] = guest.invocations()
    assert inv.job.shard == Shard(2, 2)  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "shard 2/2: 2 of the run's 4 scenarios" in out


def test_a_test_shard_goes_to_both_parts(guest: GuestRecorder, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    host: list[list[str]] = []

    def host_part(argv: list[str], *a: object, **kw: object) -> subprocess.CompletedProcess[str]:
        host.append(list(argv))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(suite, "run_bounded", host_part)
    assert main.main(["test", "--mode", "vm", "--shard", "2/3", "--", "-k", "x"]) == 0
    [h] = host
    [g] = guest.invocations()
    for argv in (h, list(g.job.pytest_args)):  # type: ignore[attr-defined]
        assert argv[argv.index("--shard") + 1] == "2/3" and argv.count("--shard") == 1
        assert "-k" in argv


def test_the_durations_file_is_no_test_path_of_the_guest(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`rxe-power test -- --record-durations tests/durations.json`: the file is the option's
    value, not a test path, so the guest still collects tests/rxe (else it collected the
    JSON file and ran no rxe test). The control: the same existing file given bare is a path."""
    (tmp_path / suite.RXE_TESTS).mkdir(parents=True)
    (tmp_path / "tests" / "durations.json").write_text('{"seconds": {}}')
    monkeypatch.chdir(tmp_path)
    for option in ("--record-durations", "--shard-durations"):
        assert suite.guest_paths(["--shard", "1/2", option, "tests/durations.json"]) == \
            [suite.RXE_TESTS]
    assert suite.guest_paths(["--shard", "1/2", "tests/durations.json"]) == []


def test_every_test_run_records_its_durations_in_its_results_folder(
        guest: GuestRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both parts add their tests' seconds to RESULTS/test-durations.json (a file to commit
    as tests/durations.json), unless the caller records somewhere already."""
    host: list[list[str]] = []

    def host_part(argv: list[str], *a: object, **kw: object) -> subprocess.CompletedProcess[str]:
        host.append(list(argv))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(suite, "run_bounded", host_part)
    assert main.main(["test", "--mode", "vm", "--", "-k", "x"]) == 0
    want = str(launch.RESULTS_DIR.absolute() / "test-durations.json")
    invs = guest.invocations()  # the guest's pytest arguments: its invocation's job
    for argv in (host[0], list(invs[0].job.pytest_args)):  # type: ignore[attr-defined]
        assert argv[argv.index("--record-durations") + 1] == want
        assert argv.count("--record-durations") == 1
    assert main.main(["test", "--mode", "vm", "--", "--record-durations=mine.json"]) == 0
    invs = guest.invocations()
    for argv in (host[1], list(invs[1].job.pytest_args)):  # type: ignore[attr-defined]
        assert "--record-durations" not in argv and "--record-durations=mine.json" in argv

"""One Invocation per command (harness.cli.invocation): built once on the host, handed to
the guest as a file in the results folder and read back there unchanged, refused when the
file is not one the host wrote for the guest's root to trust. Pure logic: the VM runner
is a recorder (no guest boots)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from harness.cli import guest as guest_cli
from harness.cli import main, operations
from harness.cli.bench_command import BenchJob
from harness.cli.invocation import (
    MAX_INVOCATION_BYTES,
    Invocation,
    Job,
    read_invocation,
    write_invocation,
)
from harness.cli.maintenance import CheckJob
from harness.cli.power_commands import TransitionJob
from harness.cli.results_commands import MatrixJob, StressJob
from harness.cli.suite import TestJob
from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.printer import NULL
from harness.core.settings import Mode, RemovalMode
from harness.core.shards import Shard
from harness.run.bench.spec import BenchSpec
from harness.run.lanes import parse_policies
from harness.run.matrix import MatrixSpec
from harness.run.stress import StressSpec
from harness.system.provenance import LaunchFacts, SourceTree
from power.plan import OnVeto, Ordering
from power.result import TransitionRequest
from tests.helpers.guest_recorder import GuestRecorder

REPO = Path(__file__).resolve().parents[3]
GUEST_CHILD_TIMEOUT_S = 60.0  # a Python child importing the CLI (~2 s here)
TREE = SourceTree("0" * 40, False, "")
JOBS: list[Job] = [
    MatrixJob(MatrixSpec(("standby", "link-flap"), (Ordering.HCA_FIRST,),
                         parse_policies(("graceful", "nvme-rdma:fast-fail")), ("send",),
                         True, 50, 20.0, 2, 150, OnVeto.WAIT, kernel_transitions=("standby",),
                         settle_ms=500).validate(), Shard(2, 3), Path("/r/junit.xml"), True),
    MatrixJob(MatrixSpec().validate()),
    StressJob(StressSpec(3, "link-flap", Ordering.HCA_FIRST, maxfail=1, keep_ledgers=True)
              .validate(), Shard(1, 2)),
    BenchJob(BenchSpec(sizes=(64,), scale=0.05, sections=("cycle",)).validate()),
    BenchJob(BenchSpec().validate(), {"loadavg": [0.5, 0.4, 0.3], "nproc": 2,
                                      "qemu_pids": [], "other_qemu_pids": []}),
    CheckJob(),
    TransitionJob(TransitionRequest("standby", hold_ms=200).resolved(), Path("results/t.json")),
    TestJob(("-k", "x y", "--removal", "block", "tests/rxe/test_a.py")),
]


def an_invocation(tmp_path: Path, job: Job | None = None, **change: Any) -> Invocation:
    inv = Invocation("check", "rxe-power check --mode vm", job or CheckJob(), Mode.VM,
                     "no rdma_rxe here: using the VM", RemovalMode.DISASSOCIATE,
                     "default: our rdma_rxe is built for 6.1.0", tmp_path / "results", 600.0,
                     TREE)
    return replace(inv, **change)


# --- built once, from the command line --------------------------------------------------

def test_a_matrix_invocation_holds_every_choice_of_the_command(
        guest: GuestRecorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["run", "--mode", "vm", "--removal", "block", "--transition", "link-flap",
            "--policy", "graceful", "--count", "7", "--timeout-s", "99", "--out", str(out)]
    main.main(argv)
    [inv] = guest.invocations()
    assert (inv.command, inv.mode, inv.removal) == ("run", Mode.VM, RemovalMode.BLOCK)
    assert inv.command_line == "rxe-power " + " ".join(argv)
    assert inv.results == out and inv.timeout_s == 99.0
    assert inv.removal_reason == "from command-line option --removal"
    assert isinstance(inv.job, MatrixJob) and inv.job.report  # `run` draws it on the host
    assert inv.job.spec.transitions == ("link-flap",) and inv.job.spec.count == 7
    assert [p.text for p in inv.job.spec.policies] == ["graceful"]
    [req] = guest.requests
    assert req.log_path == out / "vm-console.log"  # everything in the results folder
    assert inv.record_path == out / "invocation.json" and inv.record_path.is_file()
    assert (out / "vm-console.log.json").is_file()
    said = capsys.readouterr().out  # each choice said once, with its reason
    assert said.count(f"rxe-power run: mode vm ({inv.mode_reason}); 2 scenarios; results in "
                      f"{out}") == 1  # link-flap's two orderings
    assert said.count("removal mode block (from command-line option --removal)") == 1


def test_the_guest_gets_the_invocation_not_the_options(guest: GuestRecorder,
                                                       tmp_path: Path) -> None:
    """The guest's command names only the file and its owner; the removal mode and the
    launch record are in the file, not in the forwarded environment."""
    os.environ["RXE_POWER_REMOVAL"] = "block"
    try:
        main.main(["check", "--mode", "vm", "--removal", "block"])
    finally:
        del os.environ["RXE_POWER_REMOVAL"]
    [req] = guest.requests
    at = req.command.index(operations.GUEST_MODULE)
    assert req.command[at + 1:] == [str(guest.invocations()[0].record_path), "--owner-uid",
                                    str(os.geteuid())]
    assert not set(req.env) & operations.NOT_FORWARDED
    assert "check" not in req.command and "--mode" not in req.command


def test_test_splits_in_the_job_and_hands_the_removal_to_pytest(
        guest: GuestRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    host: list[list[str]] = []

    def host_part(argv: list[str], *a: object, **kw: object) -> Any:
        host.append(list(argv))
        return type("Done", (), {"returncode": 0})()

    from harness.cli import suite
    monkeypatch.setattr(suite, "run_bounded", host_part)
    assert main.main(["test", "--mode", "vm", "--removal", "block", "--", "-m", "slow",
                      "-q"]) == 0
    [inv] = guest.invocations()
    assert isinstance(inv.job, TestJob)
    assert inv.job.pytest_args[:2] == ("-m", "(slow) and rxe")
    assert inv.removal is RemovalMode.BLOCK and inv.log_path.name == "vm-test-console.log"
    assert suite.removal_args(inv) == ["--removal", "block"]
    [h] = host
    assert h[h.index("--removal") + 1] == "block" and "(slow) and not rxe" in h


# --- to the file and back ---------------------------------------------------------------

@pytest.mark.parametrize("job", JOBS, ids=lambda j: type(j).__name__)
def test_every_job_survives_the_file(tmp_path: Path, job: Job) -> None:
    inv = an_invocation(tmp_path, job)
    back = read_invocation(write_invocation(inv), os.geteuid(), guest_cli.JOBS)
    assert back == inv


def test_no_removal_and_its_record(tmp_path: Path) -> None:
    inv = an_invocation(tmp_path, TestJob(()), removal=None, removal_reason="")
    back = read_invocation(write_invocation(inv), os.geteuid(), guest_cli.JOBS)
    assert back.removal is None and back == inv
    facts = LaunchFacts.from_json(json.loads(json.dumps(back.launch_facts().to_json())))
    assert facts == LaunchFacts(Mode.VM, inv.mode_reason, TREE, inv.command_line, "", None)


def test_every_job_kind_is_in_the_guests_table() -> None:
    """One table from kind to type, every Job subclass in it once (a new command's job
    not in it could not run in the guest)."""
    ours = [cls for cls in Job.__subclasses__() if cls.__module__.startswith("harness.")]
    assert {cls.KIND for cls in ours} == set(guest_cli.JOBS) and len(ours) == len(guest_cli.JOBS)
    assert all(guest_cli.JOBS[cls.KIND] is cls for cls in ours)


# --- a hostile file ---------------------------------------------------------------------

def _written(tmp_path: Path) -> Path:
    return write_invocation(an_invocation(tmp_path))


def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    real = _written(tmp_path)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    read_invocation(real, os.geteuid(), guest_cli.JOBS)  # the control: the file itself
    with pytest.raises(RxePowerError, match="is a symbolic link: refusing") as exc:
        read_invocation(link, os.geteuid(), guest_cli.JOBS)
    assert re.search(r"\[ELOOP \d+\]", str(exc.value)) and exc.value.fix


def test_a_file_others_may_write_is_refused(tmp_path: Path) -> None:
    path = _written(tmp_path)
    for mode in (0o664, 0o646):
        path.chmod(mode)
        with pytest.raises(RxePowerError, match=f"writable by others \\(mode {mode:o}\\)"):
            read_invocation(path, os.geteuid(), guest_cli.JOBS)
    path.chmod(0o644)
    read_invocation(path, os.geteuid(), guest_cli.JOBS)


def test_a_file_of_someone_else_is_refused(tmp_path: Path) -> None:
    """Neither root's nor the caller's: as root the file is given away, else the caller
    is said to be someone else."""
    path = _written(tmp_path)
    if os.geteuid() == 0:
        os.chown(path, 4242, 4242)
        owner = 1000
    else:
        owner = os.geteuid() + 1
    with pytest.raises(RxePowerError, match=r"is owned by uid \d+, not root or uid"):
        read_invocation(path, owner, guest_cli.JOBS)
    read_invocation(path, os.stat(path).st_uid, guest_cli.JOBS)  # its owner: accepted


def test_a_hard_link_a_fifo_and_a_huge_file_are_refused(tmp_path: Path) -> None:
    path = _written(tmp_path)
    os.link(path, tmp_path / "second-name")
    with pytest.raises(RxePowerError, match="has 2 links"):
        read_invocation(path, os.geteuid(), guest_cli.JOBS)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    with pytest.raises(RxePowerError, match="is not a plain file"):
        read_invocation(fifo, os.geteuid(), guest_cli.JOBS)
    huge = tmp_path / "huge.json"
    huge.write_text(" " * (MAX_INVOCATION_BYTES + 1))
    huge.chmod(0o644)
    with pytest.raises(RxePowerError, match="over MAX_INVOCATION_BYTES"):
        read_invocation(huge, os.geteuid(), guest_cli.JOBS)


def _edited(tmp_path: Path, change: dict[str, Any], job: dict[str, Any] | None = None) -> Path:
    path = _written(tmp_path)
    d = json.loads(path.read_text())
    d.update(change)
    d["job"].update(job or {})
    path.unlink()
    path.write_text(json.dumps(d))
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("change, job, problem", [
    ({"schema": 2}, None, "invocation.schema is '2'"),
    ({"mode": "auto"}, None, "invocation.mode is auto"),
    ({"mode": "cloud"}, None, "invocation.mode is 'cloud'"),
    ({"removal": "maybe"}, None, "invocation.removal is 'maybe'"),
    ({"results": "results"}, None, "is not an absolute path"),
    ({"timeout_s": -1}, None, "invocation.timeout_s -1"),
    ({"timeout_s": True}, None, "invocation.timeout_s True"),
    ({}, {"kind": "shell"}, "invocation.job.kind 'shell' is none of"),
    ({"job": {"kind": "matrix"}}, None, "invocation.job (matrix) is not one rxe-power wrote"),
    ({"job": {"kind": "test", "pytest_args": "-k x"}}, None, "not a list of strings"),
    ({"job": {"kind": "transition", "request": {"name": "nap"}, "result": "/r"}}, None,
     "unknown transition 'nap'"),
])
def test_a_file_rxe_power_did_not_write_is_refused(tmp_path: Path, change: dict[str, Any],
                                                   job: dict[str, Any] | None,
                                                   problem: str) -> None:
    path = _edited(tmp_path, change, job)
    with pytest.raises(RxePowerError) as exc:
        read_invocation(path, os.geteuid(), guest_cli.JOBS)
    assert problem in str(exc.value), str(exc.value)


def test_the_guest_runs_nothing_of_a_refused_file(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _written(tmp_path)
    path.chmod(0o666)
    assert guest_cli.main([str(path), "--owner-uid", str(os.geteuid())]) == \
        guest_cli.HARNESS_ERROR_EXIT
    err = capsys.readouterr().err
    assert "writable by others" in err and "fix:" in err


def test_the_guests_way_in_runs_as_a_child_of_ours(tmp_path: Path) -> None:
    """The guest's exact command (operations.guest_argv: python -P -S, our import path)
    starts harness.cli.guest and refuses the file it may not trust, running nothing."""
    path = _written(tmp_path)
    path.chmod(0o666)
    res = subprocess.run(operations.guest_argv(path), capture_output=True, text=True,
                         timeout=GUEST_CHILD_TIMEOUT_S, check=False, cwd=tmp_path)
    assert res.returncode == guest_cli.HARNESS_ERROR_EXIT, res.stderr
    assert f"the invocation file {path} is writable by others" in res.stderr


# --- in the guest: run as decided on the host -------------------------------------------

@dataclass(frozen=True)
class _Seen(Job):
    """A job that only records what the guest ran it with."""

    KIND = "check"  # stands in for check's entry of the table
    LOADS_MODULE = False
    USES_TOPOLOGY = False

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Seen:
        return cls()

    def run_here(self, inv: Invocation, out: Any) -> int:
        seen.append((inv, settings.launch_facts()))
        return 7


seen: list[tuple[Invocation, dict[str, Any] | None]] = []


def test_the_guest_runs_the_invocation_as_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing chosen again: the removal mode of the file, whatever RXE_POWER_REMOVAL says
    there; its provenance record (the results header's) is the invocation's."""
    monkeypatch.setattr(guest_cli, "JOBS", {"check": _Seen})
    monkeypatch.setenv("RXE_POWER_REMOVAL", "block")
    monkeypatch.delenv(settings.LAUNCH_ENV, raising=False)
    inv = an_invocation(tmp_path, _Seen())
    seen.clear()
    assert guest_cli.main([str(write_invocation(inv)), "--owner-uid",
                           str(os.geteuid())], out=NULL) == 7
    [(ran, facts)] = seen
    assert ran == inv and ran.removal is RemovalMode.DISASSOCIATE
    assert facts is not None and LaunchFacts.from_json(facts) == inv.launch_facts()


# --- one place ----------------------------------------------------------------------------

def test_one_place_decides_where_a_command_runs() -> None:
    """In the CLI only invocation.py chooses the mode, only operations.py boots a guest or
    builds the guest's command line, and no command asks for the VM mode (invocation.py
    says what the guest loads, removal.py whose kernel the module is for; doctor's modules
    are left out: they say which mode a run would use, they run nothing)."""
    where: dict[str, list[str]] = {}
    for path in sorted((REPO / "harness" / "cli").glob("*.py")):
        if path.name.startswith("doctor"):
            continue
        text = path.read_text()
        for pattern in (r"choose_mode\(", r"run_in_vm\(", r"python_child\(GUEST_MODULE",
                        r"is (not )?Mode\.VM"):
            if re.search(pattern, text):
                where.setdefault(pattern, []).append(path.name)
    assert where == {r"choose_mode\(": ["invocation.py", "launch.py"],
                     r"run_in_vm\(": ["operations.py"],
                     r"python_child\(GUEST_MODULE": ["operations.py"],
                     # jobs.py: --jobs N > 1 is refused outside VM mode (its shards are VM
                     # invocations, each decided by invoke); peer_option.py: --peer guest
                     # is refused natively (it needs two guest kernels); split_run.py: a
                     # run is split by placement only in the VM mode (each part is a VM
                     # invocation, decided by invoke)
                     r"is (not )?Mode\.VM": ["invocation.py", "jobs.py", "peer_option.py",
                                              "removal.py", "split_run.py"]}

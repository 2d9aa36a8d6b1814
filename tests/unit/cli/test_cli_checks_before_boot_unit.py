"""The CLI's checks before a VM boots (issue 17: defects 1, 3, 4, 7, 16), its messages,
the run lock, and what cleanup/doctor make of a live VM run's entries. Pure logic: the
VM runner is replaced by a recorder (no guest boots), the state file lives in tmp_path."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import doctor, launch, main, operations
from harness.core import proc, runlock, state
from harness.core.errors import RxePowerError
from harness.core.printer import Printer
from harness.topology import cleanup as cleanup_mod
from harness.topology import lifecycle
from tests.helpers.guest_recorder import GuestRecorder

LOCK_HOLDER_READY_TIMEOUT_S = 10.0  # the child that holds the lock has written itself down


@pytest.fixture
def state_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state file (and the run lock next to it) in tmp_path; the caller counts as
    root (nothing here touches the system: the topology steps are replaced or empty)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    path = tmp_path / "topology.json"
    monkeypatch.setenv("RXE_POWER_STATE", str(path))
    monkeypatch.setattr(state, "STATE_PATH", path)
    monkeypatch.setattr(lifecycle, "STATE_PATH", path)
    monkeypatch.setattr(proc, "RUN_DIR", tmp_path)
    return path


# --- 7: every environment value is checked before any VM boots --------------------------

@pytest.mark.parametrize("var,value", [("RXE_POWER_LOCAL_ADDR", "999.1.1.1"),
                                       ("RXE_POWER_REQUIRE_RXE", "maybe"),
                                       ("RXE_POWER_PEER_NETDEV", "x" * 40)])
def test_bad_topology_environment_refused_before_the_vm_boots(
        guest: GuestRecorder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    assert main.main(["check", "--mode", "vm"]) == main.HARNESS_ERROR_EXIT
    assert guest.requests == []  # no boot
    assert var in capsys.readouterr().err


# --- 16: messages that fit --------------------------------------------------------------

def test_vm_usage_says_rxe_power_vm(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main.main(["vm"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: rxe-power vm" in err and "harness.vm" not in err


def test_bad_mode_names_the_option_that_exists(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["test", "--mode", "bogus"]) == main.HARNESS_ERROR_EXIT
    err = capsys.readouterr().err
    assert "--mode" in err and "--rxe-mode" not in err


@pytest.mark.parametrize("command", ["teardown", "cleanup", "recover"])
def test_non_root_is_refused_with_what_needs_root(
        state_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        command: str) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    restored: list[object] = []
    monkeypatch.setattr(lifecycle, "restore_local_side", lambda *a, **k: restored.append(a))
    assert main.main([command]) == main.HARNESS_ERROR_EXIT
    err = capsys.readouterr().err
    assert "needs root" in err and "building" not in err
    assert f"sudo rxe-power {command}" in err
    assert restored == []  # recover refused before touching anything


def test_show_as_non_root_gives_the_fix(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    def no_topology(cfg: object) -> object:
        raise RxePowerError("RDMA device 'rxe0' not found", "build the topology first")

    from harness.topology import command_line
    monkeypatch.setattr(command_line, "discover", no_topology)
    assert main.main(["show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rxe-power: error:") and "sudo rxe-power show" in err


# --- 1: results outside the working directory reach the host ----------------------------

def test_results_outside_the_cwd_are_shared_with_the_guest(
        guest: GuestRecorder, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "transition.json"  # not under the cwd
    (tmp_path / "cwd").mkdir()
    os.chdir(tmp_path / "cwd")
    code = main.main(["transition", "link-flap", "--mode", "vm", "--json", str(elsewhere)])
    (req,) = guest.requests
    assert elsewhere.parent.is_dir()  # created on the host before the boot
    assert elsewhere.parent in req.rw_dirs and Path.cwd() in req.rw_dirs
    assert code == operations.RESULTS_MISSING_EXIT  # the guest said 0 and wrote nothing


def test_a_results_folder_outside_the_cwd_is_shared(
        guest: GuestRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RXE_POWER_RESULTS (the folder of logs and check's report) elsewhere."""
    elsewhere = tmp_path / "var" / "results"
    monkeypatch.setattr(launch, "RESULTS_DIR", elsewhere)
    (tmp_path / "cwd").mkdir()
    os.chdir(tmp_path / "cwd")
    main.main(["check", "--mode", "vm"])
    (req,) = guest.requests
    assert elsewhere in req.rw_dirs and elsewhere.is_dir()


def test_a_runs_console_log_lands_in_its_results_folder(
        guest: GuestRecorder, tmp_path: Path) -> None:
    """matrix (and run, stress, bench) keep the guest's console log, and the runner's record
    of it, in the run's own folder; a command without one keeps it in RESULTS_DIR."""
    out = tmp_path / "out"
    main.main(["matrix", "--mode", "vm", "--transition", "link-flap", "--out", str(out)])
    (req,) = guest.requests
    assert req.log_path == out / "vm-console.log"
    assert (out / "vm-console.log.json").is_file()
    main.main(["check", "--mode", "vm"])
    assert guest.requests[1].log_path == launch.RESULTS_DIR / "vm-check-console.log"


def test_exit_0_without_the_promised_results_is_an_error(
        guest: GuestRecorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main.main(["matrix", "--mode", "vm", "--transition", "link-flap",
                      "--out", str(out)])
    assert code != 0 and guest.requests
    assert "results.jsonl" in capsys.readouterr().err


def test_rw_dirs_nest_under_the_cwd_once(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    dirs = launch.guest_rw_dirs([cwd / "results", tmp_path / "a" / "b", tmp_path / "a"], cwd)
    assert dirs == [cwd, tmp_path / "a"]


# --- 3: one run at a time ---------------------------------------------------------------

def _hold_lock_in_child(lock: Path) -> subprocess.Popen[str]:
    code = ("import sys, time\nfrom pathlib import Path\n"
            "from harness.core.runlock import run_lock\n"
            f"with run_lock('rxe-power matrix --transition standby', Path({str(lock)!r})):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_run_is_refused_naming_the_first(state_path: Path) -> None:
    lock = runlock.lock_path(state_path)
    child = _hold_lock_in_child(lock)
    try:
        with pytest.raises(runlock.RunBusy) as exc, runlock.run_lock("rxe-power run", lock):
            pass
        assert (f"another rxe-power run (pid {child.pid}, rxe-power matrix --transition "
                "standby) is active") in str(exc.value)
        assert runlock.holder(lock) == runlock.Holder(child.pid,
                                                       "rxe-power matrix --transition standby")
    finally:
        child.kill()
        child.wait(timeout=LOCK_HOLDER_READY_TIMEOUT_S)
    with runlock.run_lock("rxe-power run", lock):  # the kernel released it with the holder
        assert runlock.holder(lock) is None


def test_cleanup_never_touches_the_topology_under_a_live_run(
        state_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    touched: list[str] = []
    monkeypatch.setattr(cleanup_mod, "teardown", lambda **k: touched.append("teardown") or [])
    monkeypatch.setattr(lifecycle, "restore_local_side", lambda *a, **k: touched.append("r"))
    child = _hold_lock_in_child(runlock.lock_path(state_path))
    try:
        assert main.main(["cleanup"]) == main.HARNESS_ERROR_EXIT
    finally:
        child.kill()
        child.wait(timeout=LOCK_HOLDER_READY_TIMEOUT_S)
    assert touched == []
    assert f"another rxe-power run (pid {child.pid}" in capsys.readouterr().err


def test_native_commands_hold_the_lock_for_the_whole_command(
        state_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_recover(args: argparse.Namespace, out: Printer) -> int:
        code = ("from harness.core.runlock import holder, lock_path\n"
                "print(holder(lock_path()))")
        seen.append(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True, check=True, timeout=30).stdout.strip())
        return 0

    monkeypatch.setattr(main.power_commands, "cmd_recover", fake_recover)
    assert main.main(["recover"]) == 0
    assert seen == [f"Holder(pid={os.getpid()}, command='rxe-power recover')"]


# --- 4: a live VM run's process entry is not a topology ---------------------------------

def _record_live_vm_run(path: Path) -> None:
    st = state.StateFile.load(path)
    st.record("process", pid=os.getpid(), start=state.process_start(os.getpid()),
              role="vm (vng)", group=True)


def test_cleanup_leaves_a_live_vm_run_alone_and_succeeds(
        state_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _record_live_vm_run(state_path)
    monkeypatch.setattr(lifecycle, "restore_local_side",
                        lambda *a, **k: pytest.fail("restored the local side of no topology"))
    assert main.main(["cleanup"]) == 0
    out = capsys.readouterr().out
    assert "putting the local side back" not in out
    assert "left to it" in out
    assert state.StateFile.load(state_path).processes()  # the live run's entry stays


def test_doctor_does_not_call_a_live_vm_run_a_leftover(state_path: Path) -> None:
    _record_live_vm_run(state_path)
    finding = doctor.check_state_file(state_path, netdevs=set, rdma_devs=set)
    assert "leftover" not in finding.detail and finding.status is doctor.Status.OK, finding

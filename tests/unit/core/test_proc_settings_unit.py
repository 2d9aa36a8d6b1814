"""The one stop procedure (core.proc) and the environment-only settings: any host."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core import proc, settings
from harness.core.errors import SettingError

CHILD_EXIT_TIMEOUT_S = 10.0


def _child(code: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", f"{code}; print('ready', flush=True); "
                          "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_stop_escalates_to_sigkill_and_spares_a_reused_pid() -> None:
    polite = _child("pass")
    stubborn = _child("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    bystander = _child("pass")  # recorded with a wrong start time: a reused pid
    try:
        refs = [proc.ProcessRef.now(p.pid) for p in (polite, stubborn)]
        assert all(r is not None for r in refs)
        wrong = proc.ProcessRef(bystander.pid, start=1.0)
        t0 = time.monotonic()
        out = proc.stop_processes([r for r in refs if r] + [wrong], grace_s=0.5)
        assert out == {polite.pid: proc.Stopped.SIGTERM, stubborn.pid: proc.Stopped.SIGKILL,
                       bystander.pid: proc.Stopped.ALREADY_GONE}
        assert time.monotonic() - t0 < 0.5 + proc.GONE_TIMEOUT_S
        assert bystander.poll() is None  # never signalled
        assert polite.wait(5) == -15 and stubborn.wait(5) == -9
    finally:
        for p in (polite, stubborn, bystander):
            p.kill()
            p.wait()


def test_stop_child_lets_a_child_exit_by_itself() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    assert proc.stop_child(child, exit_wait_s=CHILD_EXIT_TIMEOUT_S) is proc.Stopped.EXITED
    assert child.returncode == 0


def test_env_readers_name_the_variable_on_a_bad_value() -> None:
    env = {settings.BENCH_HOST_ENV: "[1, 2]", settings.RESULTS_ENV: " out"}
    with pytest.raises(SettingError, match=settings.BENCH_HOST_ENV):
        settings.bench_host(env)
    with pytest.raises(SettingError, match=settings.RESULTS_ENV):
        settings.results_dir(env)


def test_env_readers_defaults_and_values() -> None:
    assert settings.results_dir({}) == Path("results")
    assert settings.results_dir({settings.RESULTS_ENV: ""}) == Path("results")  # empty: unset
    assert settings.state_path({}) == Path("/run/rxe-power/topology.json")
    assert settings.clients_dir({settings.CLIENTS_DIR_ENV: "/tmp/c"}) == Path("/tmp/c")
    assert settings.in_vm({settings.IN_VM_ENV: "1"}) and not settings.in_vm({})
    assert not settings.in_vm({settings.IN_VM_ENV: "yes"})  # only the runner's "1"
    assert settings.bench_host({settings.BENCH_HOST_ENV: '{"nproc": 2}'}) == {"nproc": 2}
    assert settings.runtime_dir({}) is None
    assert settings.vm_accel_override({settings.VM_ACCEL_ENV: "tcg"}) == "tcg"
    env = {"RXE_POWER_MODE": "vm", "HOME": "/root", "RXE_POWER_X": "1"}
    assert settings.own_environment(env) == {"RXE_POWER_MODE": "vm", "RXE_POWER_X": "1"}


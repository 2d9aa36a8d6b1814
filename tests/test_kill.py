"""A harness SIGKILLed at several points leaves a state that cleanup, or the next run, removes.

The killed harness is a real `python -m harness.cli` child running a matrix or a
stress on the session's topology. SIGKILL hits only that process (as `kill -9 PID`
would): its client workers, its peer agent, its async event reader and a blocked
`rdma link delete` live on. Everything they are is in the state file, with the
start time of each process, so cleanup ends exactly those and puts the local side
back (the session, a live owner, keeps its topology).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import cli, topology
from harness.state import StateFile, process_start

pytestmark = pytest.mark.rxe
KILL_POINT_TIMEOUT_S = 90.0  # until the child reaches the point where it is killed
POLL_S = 0.05


def child_processes(pid: int) -> list[dict]:
    """Processes the killed harness recorded (it owns them)."""
    return [e for e in StateFile.load().processes() if e["owner"]["pid"] == pid]


def workers_started(pid: int, cfg: topology.TopologyConfig) -> bool:
    return any(e["role"].startswith("client worker") for e in child_processes(pid))


def delete_blocked(pid: int, cfg: topology.TopologyConfig) -> bool:
    return bool(topology.pending_deletes(cfg.local_dev))


def device_gone(pid: int, cfg: topology.TopologyConfig) -> bool:
    return workers_started(pid, cfg) and topology.port_state(cfg.local_dev) is None \
        and not topology.pending_deletes(cfg.local_dev)


POINTS: dict[str, tuple[list[str], Callable[[int, topology.TopologyConfig], bool]]] = {
    # while its client workers start up
    "workers-started": (["stress", "--cycles", "3", "--policy", "graceful"], workers_started),
    # mid-transition: naive holds rxe0, the delete is blocked in the kernel
    "delete-blocked": (["matrix", "--transition", "standby", "--ordering", "clients-first",
                        "--policy", "naive", "--on-veto", "wait"], delete_blocked),
    # mid-transition: the local device is gone (standby's hold, a long one)
    "device-gone": (["stress", "--cycles", "3", "--policy", "graceful", "--hold-ms", "4000"],
                    device_gone),
}


def run_and_kill(argv: list[str], point: Callable[[int, topology.TopologyConfig], bool],
                 cfg: topology.TopologyConfig, out: Path) -> tuple[int, list[dict]]:
    log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115 - closed below
    child = subprocess.Popen([sys.executable, "-m", "harness.cli", *argv, "--mode", "native",
                              "--count", "400", "--rate", "40", "--out", str(out)],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + KILL_POINT_TIMEOUT_S
        while not point(child.pid, cfg):
            assert child.poll() is None, f"the harness ended before the kill point: {argv}"
            assert time.monotonic() < end, f"kill point not reached in {KILL_POINT_TIMEOUT_S} s"
            time.sleep(POLL_S)
        left = child_processes(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    return child.pid, left


def assert_clean(pid: int, left: list[dict], cfg: topology.TopologyConfig) -> None:
    assert all(process_start(e["pid"]) != e["start"] for e in left), left
    assert not [e for e in StateFile.load().created if e["owner"]["pid"] == pid]
    assert not topology.pending_deletes(cfg.local_dev)
    topo = topology.discover(cfg)
    assert topo.local.state == topo.peer.state == "ACTIVE"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("point", list(POINTS))
def test_cleanup_after_sigkill(point: str, rxe_config, rxe_topology, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    argv, reached = POINTS[point]
    pid, left = run_and_kill(argv, reached, rxe_config, tmp_path / "run")
    roles = sorted(e["role"] for e in left)
    assert any(r.startswith("peer agent") for r in roles), roles
    assert any(process_start(e["pid"]) == e["start"] for e in left)  # orphans live on
    assert cli.main(["cleanup"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "a live rxe-power process" in out  # the session's topology is kept
    assert_clean(pid, left, rxe_config)
    assert (tmp_path / "run" / "results.jsonl").exists()  # what ran is kept


@pytest.mark.timeout(240)
def test_next_run_cleans_up_by_itself(rxe_config, rxe_topology, tmp_path: Path) -> None:
    """No cleanup command: the next setup (as every run starts) ends the orphans, waits for
    the blocked delete and repairs the local side."""
    argv, reached = POINTS["delete-blocked"]
    pid, left = run_and_kill(argv, reached, rxe_config, tmp_path / "run")
    _topo, built = topology.setup(rxe_config, log=print)
    assert not built  # the session owns the topology, and keeps it
    assert_clean(pid, left, rxe_config)

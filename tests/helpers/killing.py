"""Run a real harness child and SIGKILL it at a chosen point (tests/rxe/test_kill.py and
tests/rxe/test_ownership.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from harness.core.proc import python_child
from harness.core.state import StateFile
from harness.topology import devices
from harness.topology.config import TopologyConfig

KILL_POINT_TIMEOUT_S = 90.0  # until the child reaches the point where it is killed
POLL_S = 0.05


def child_processes(pid: int) -> list[dict]:
    """Processes the killed harness recorded (it owns them)."""
    return [e for e in StateFile.load().processes() if e["owner"]["pid"] == pid]


def workers_started(pid: int, cfg: TopologyConfig) -> bool:
    return any(e["role"].startswith("client worker") for e in child_processes(pid))


def delete_blocked(pid: int, cfg: TopologyConfig) -> bool:
    return bool(devices.pending_deletes(cfg.local_dev))


def device_gone(pid: int, cfg: TopologyConfig) -> bool:
    return workers_started(pid, cfg) and devices.port_state(cfg.local_dev) is None \
        and not devices.pending_deletes(cfg.local_dev)


POINTS: dict[str, tuple[list[str], Callable[[int, TopologyConfig], bool]]] = {
    # while its client workers start up
    "workers-started": (["stress", "--cycles", "3", "--policy", "graceful"], workers_started),
    # mid-transition: naive holds rxe0, the delete is blocked in the kernel
    "delete-blocked": (["matrix", "--transition", "standby", "--ordering", "clients-first",
                        "--policy", "naive", "--on-veto", "wait"], delete_blocked),
    # mid-transition: the local device is gone (standby's hold, a long one)
    "device-gone": (["stress", "--cycles", "3", "--policy", "graceful", "--hold-ms", "4000"],
                    device_gone),
}


def run_and_kill(argv: list[str], point: Callable[[int, TopologyConfig], bool],
                 cfg: TopologyConfig, out: Path) -> tuple[int, list[dict]]:
    log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115 - closed below
    child = subprocess.Popen([*python_child("harness.cli", *argv), "--mode", "native",
                              "--count", "200", "--rate", "40", "--out", str(out)],
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

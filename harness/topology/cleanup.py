"""Remove what a killed run left behind, from the state file only.

    reap_stale(log)        processes and directories whose owner is dead: ended / removed
                           (every setup starts with this)
    cleanup(cfg, log)      `rxe-power cleanup`: reap_stale, wait for blocked deletes,
                           then remove the topology, or repair it if a live run owns it

A process is ours only if its pid *and* start time match the state file entry, so a
pid the kernel reused for something else is never signalled. Nothing that is not in
the state file is touched: a foreign process that holds one of our devices is named,
not killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from harness.core.state import StateFile, alive, process_start

KILL_GRACE_S = 3.0  # SIGTERM -> SIGKILL
GONE_TIMEOUT_S = 3.0  # SIGKILL -> gone
PENDING_DELETE_TIMEOUT_S = 15.0
POLL_S = 0.05  # polling interval of the bounded waits above
RUN_DIR = Path("/run/rxe-power")


def _gone(pid: int, start: float, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while process_start(pid) == start:
        if time.monotonic() >= end:
            return False
        time.sleep(POLL_S)
    return True


def end_process(entry: dict, log: Callable[[str], None]) -> str | None:
    """SIGTERM, then SIGKILL, the recorded process (its group if it leads one).
    Returns a problem, or None once it is gone (or was never there)."""
    pid, start = int(entry["pid"]), entry["start"]
    if process_start(pid) != start:
        return None  # gone, or the pid now belongs to someone else
    send = (lambda sig: os.killpg(pid, sig)) if entry.get("group") else \
        (lambda sig: os.kill(pid, sig))
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, GONE_TIMEOUT_S)):
        try:
            send(sig)
        except ProcessLookupError:
            return None
        if _gone(pid, start, wait_s):
            log(f"ended {entry['role']} pid {pid} ({sig.name})")
            return None
    return (f"{entry['role']} pid {pid} survived SIGKILL for {GONE_TIMEOUT_S:g} s "
            "(uninterruptible in the kernel?)")


def reap_stale(log: Callable[[str], None] = print, state_path: Path | None = None) -> list[str]:
    """End every recorded process, and remove every recorded directory, whose owner is
    dead. Returns the problems left (a process that would not die)."""
    state = StateFile.load(state_path)
    problems = []
    for entry in state.created:
        if entry["kind"] not in ("process", "dir") or alive(entry.get("owner")):
            continue
        if entry["kind"] == "process":
            problem = end_process(entry, log)
            if problem:
                problems.append(problem)
                continue
        else:
            path = Path(entry["path"])
            if path.is_relative_to(RUN_DIR):
                shutil.rmtree(path, ignore_errors=True)
                log(f"removed {path}")
        state.forget(**entry)
    return problems


def wait_pending_deletes(devs: list[str], timeout_s: float = PENDING_DELETE_TIMEOUT_S,
                         ) -> list[str]:
    """Wait (bounded) for `rdma link delete` of our devices that were blocked by holders."""
    from harness.system.holders import find_holders
    from harness.topology import pending_deletes

    end = time.monotonic() + timeout_s
    while (pending := {d: pending_deletes(d) for d in devs if pending_deletes(d)}) \
            and time.monotonic() < end:
        time.sleep(POLL_S)
    return [f"the delete of {dev} (pid {', '.join(map(str, pids))}) is still blocked by "
            f"{'; '.join(h.describe() for h in find_holders(dev)) or 'an unknown holder'}: "
            "not ours, so not ended; close it and run cleanup again"
            for dev, pids in pending.items()]


def remove_kernel_objects(log: Callable[[str], None] = print,
                          state_path: Path | None = None) -> list[str]:
    """The kernel clients' objects (nvme controllers, nvmet items, null_blk disks, the
    prohibit route, a lowered sysctl) whose owner is dead, newest first: before the
    topology, whose device the controllers use. Returns the problems left."""
    from harness.core.errors import RxePowerError
    from harness.system import kernelobjs

    state = StateFile.load(state_path)
    problems = []
    for entry in reversed(state.created):
        if entry["kind"] not in kernelobjs.KINDS or alive(entry.get("owner")):
            continue
        try:
            kernelobjs.undo(entry, log)
            state.forget(**entry)
        except RxePowerError as exc:
            problems.append(f"{entry['kind']} {entry}: {exc}")
    return problems


def cleanup(cfg: object, log: Callable[[str], None] = print) -> list[str]:
    """Everything a dead run left: its processes, blocked deletes, and the topology (if no
    live process owns it; else only the local side is put back whole)."""
    from harness import topology

    topology.require_root()
    problems = reap_stale(log)
    problems += remove_kernel_objects(log)
    state = StateFile.load()
    devs = [e["name"] for e in state.created if e["kind"] == "rdma_link"]
    problems += wait_pending_deletes(devs)
    if problems:
        return problems
    owners = {e["owner"]["pid"] for e in StateFile.load().created if alive(e.get("owner"))}
    if owners:
        log(f"a live rxe-power process (pid {', '.join(map(str, sorted(owners)))}) uses the "
            "topology: putting the local side back, not removing it")
        return topology.restore_local_side(cfg, log=log)
    return topology.teardown(log=log)

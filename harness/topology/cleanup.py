"""`rxe-power cleanup`: remove what a killed run left behind, from the state file only.

    cleanup(cfg, out)   under the run lock (core.runlock): end the processes whose
                        owner is dead (core.proc.reap_stale), wait for blocked deletes,
                        then remove the topology (a live owner's: only repair its
                        local side)

Nothing that is not in the state file is touched: a foreign process that holds one of
our devices is named, not killed.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.core.errors import RxePowerError
from harness.core.printer import NULL, Printer
from harness.core.proc import reap_stale
from harness.core.runlock import run_lock
from harness.core.state import StateFile, alive
from harness.system import kernelobjs
from harness.system.holders import find_holders
from harness.topology.config import TopologyConfig
from harness.topology.devices import pending_deletes
from harness.topology.lifecycle import require_root, restore_local_side, teardown

PENDING_DELETE_TIMEOUT_S = 15.0
POLL_S = 0.05  # polling interval of the bounded wait above


def wait_pending_deletes(devs: list[str], timeout_s: float = PENDING_DELETE_TIMEOUT_S,
                         ) -> list[str]:
    """Wait (bounded) for `rdma link delete` of our devices that were blocked by holders."""
    end = time.monotonic() + timeout_s
    while (pending := {d: pids for d in devs if (pids := pending_deletes(d))}) \
            and time.monotonic() < end:
        time.sleep(POLL_S)
    return [f"the delete of {dev} (pid {', '.join(map(str, pids))}) is still blocked by "
            f"{'; '.join(h.describe() for h in find_holders(dev)) or 'an unknown holder'}: "
            "not ours, so not ended; close it and run cleanup again"
            for dev, pids in pending.items()]


def remove_kernel_objects(out: Printer = NULL,
                          state_path: Path | None = None) -> list[str]:
    """The kernel clients' objects (nvme controllers, nvmet items, null_blk disks, the
    prohibit route, a lowered sysctl) whose owner is dead, newest first: before the
    topology, whose device the controllers use. Returns the problems left."""
    state = StateFile.load(state_path)
    problems: list[str] = []
    for entry in reversed(state.created):
        if entry["kind"] not in kernelobjs.KINDS or alive(entry.get("owner")):
            continue
        try:
            kernelobjs.undo(entry, out)
            state.forget(**entry)
        except RxePowerError as exc:
            problems.append(f"{entry['kind']} {entry}: {exc}")
    return problems


def cleanup(cfg: TopologyConfig, out: Printer = NULL) -> list[str]:
    """Everything a dead run left: its processes, blocked deletes, and the topology. Under
    the run lock: refused (RunBusy) while a run is active. A topology that a live process
    owns without the lock (a test session) is not removed; only its local side is put
    back whole."""
    require_root("cleanup needs root (it ends the processes a dead run left and removes the "
                 "topology it built)", "rxe-power cleanup")
    with run_lock("rxe-power cleanup"):
        return _cleanup(cfg, out)


def _cleanup(cfg: TopologyConfig, out: Printer) -> list[str]:
    problems = reap_stale(out)
    state = StateFile.load()
    malformed = state.problems  # reported (cleanup fails), skipped: the rest goes on
    devs = [e["name"] for e in state.created if e["kind"] == "rdma_link"]
    problems = [p for p in problems if p not in malformed] + wait_pending_deletes(devs)
    problems += remove_kernel_objects(out)
    if problems:
        return malformed + problems
    state = StateFile.load()
    # only the topology's owners count: a live run's own entries (its processes, e.g. the
    # guest of a VM run, and its folders) are its business, not a topology to put back.
    # Such an owner holds no run lock (that was refused above): e.g. a test session that
    # built the topology; a killed run may have left its local side down: put it back.
    owners = {e["owner"]["pid"] for e in state.topology_entries() if alive(e.get("owner"))}
    if owners:
        out(f"a live rxe-power process (pid {', '.join(map(str, sorted(owners)))}) owns the "
            "topology: putting the local side back, not removing it")
        return malformed + restore_local_side(cfg, out=out)
    live = [e for e in state.processes() if alive(e.get("owner"))]
    for e in live:
        out(f"{e.get('role', 'process')} pid {e['pid']} belongs to the live rxe-power process "
            f"pid {e['owner']['pid']}: left to it")
    return malformed + teardown(out=out)

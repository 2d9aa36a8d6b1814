"""`rxe-power cleanup`: remove what a killed run left behind, from the state file only.

    cleanup(cfg, log)   end the processes whose owner is dead (core.proc.reap_stale),
                        wait for blocked deletes, then remove the topology, or repair
                        its local side if a live run owns it

Nothing that is not in the state file is touched: a foreign process that holds one of
our devices is named, not killed.
"""

from __future__ import annotations

import time

from harness.core.proc import Log, reap_stale
from harness.core.state import StateFile, alive
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


def cleanup(cfg: TopologyConfig, log: Log = print) -> list[str]:
    """Everything a dead run left: its processes, blocked deletes, and the topology (if no
    live process owns it; else only the local side is put back whole)."""
    require_root()
    problems = reap_stale(log)
    state = StateFile.load()
    malformed = state.problems  # reported (cleanup fails), skipped: the rest goes on
    devs = [e["name"] for e in state.created if e["kind"] == "rdma_link"]
    problems = [p for p in problems if p not in malformed] + wait_pending_deletes(devs)
    if problems:
        return malformed + problems
    owners = {e["owner"]["pid"] for e in StateFile.load().created if alive(e.get("owner"))}
    if owners:
        log(f"a live rxe-power process (pid {', '.join(map(str, sorted(owners)))}) uses the "
            "topology: putting the local side back, not removing it")
        return malformed + restore_local_side(cfg, log=log)
    return malformed + teardown(log=log)

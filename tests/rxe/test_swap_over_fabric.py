"""Swap on the fabric, on real rxe: the guest's only swap area on an nvme-rdma namespace
(nvmet-rdma on rxe1, a null_blk disk), a process paging to it under a cgroup memory limit,
one transition while pages go out and come in (clients/kernel/swap_scenario.py).

Each test prints the process's fate, every page's fate, the paging counts during the
transition and the kernel's log; which behaviour happened is checked against evidence
that is not the scenario's own account (the kernel log read again, the controller's
states, the cgroup's counts), and anything else fails. Everything of ours (swap area,
cgroup, controller, target) must be gone afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from clients.kernel.swap_scenario import SwapResult, SwapScenario, run_swap
from harness.core.state import StateFile
from harness.system import kernelobjs as ko
from harness.system.paging_objs import CGROUP_ROOT, OUR_CGROUP_PREFIX, swaps
from harness.system.provenance_collect import collect
from harness.workload.page_ledger import PageFate, ProcessFate
from power import kmsg
from power.plan import Ordering
from tests.helpers.kernel_needs import NVME_RDMA_MODULES

pytestmark = pytest.mark.kernel_modules(*NVME_RDMA_MODULES)

# admin_timeout 5 s: the held delete's shutdown waits this out (the kernel's 60 s held the
# sleep 93 s in the guest: docs/kernel-clients.md)
POLICY = "nvme-rdma:ctrl_loss_tmo=30:reconnect_delay=1:fast_io_fail_tmo=0:admin_timeout=5"
SCENARIO_TIMEOUT_S = 400.0


def record(res: SwapResult, results_dir: Path, name: str) -> Path:
    """The row as a results file with what made it (docs/measurements takes it whole)."""
    out = results_dir / "swap" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "kind": "swap-over-fabric", "command": f"rxe-power test -- -k {name}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fault_model": "userspace removal (rdma link delete/add), nobody frozen",
        "peer_placement": "same-kernel", "provenance": collect().to_json(),
        "result": res.to_json()}, indent=1))
    return out


def show(res: SwapResult) -> None:
    print(f"{res.scenario['transition']} {res.scenario['ordering']}: {res.status.value} "
          f"process {res.fate.to_json()} pages {res.pages.to_json()} paging {res.paging} "
          f"cgroup {res.cgroup_events} settled {res.settled} findings {res.findings}")


def nothing_of_ours_left(but_the_dead_area: bool = False) -> None:
    assert not [a for a in swaps() if "nvme" in a.path
                and not (but_the_dead_area and a.deleted)], swaps()
    assert not [p.name for p in CGROUP_ROOT.iterdir() if p.name.startswith(OUR_CGROUP_PREFIX)]
    assert not [c for c in ko.nvme_ctrls() if ko.OUR_PREFIX in c.subsysnqn]
    kinds = [e["kind"] for e in StateFile.load().created if e["kind"].startswith("paging_")
             or e["kind"] in ("nvme_ctrl", "nvmet_subsys", "nullb")]
    assert not kinds, f"state file still lists {kinds}"


def kernel_lines(res: SwapResult, *needles: str) -> list[str]:
    after = int(res.kernel["marker"]["after_seq"])
    return [r.message for r in kmsg.read_records() if r.seq > after
            and any(n in r.message for n in needles)]


@pytest.mark.may_leave_kernel_state
@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_standby_hca_first_takes_the_swap_away(power_shim, rxe_config, results_dir) -> None:
    """rxe0 goes with the swap area's pages on the peer. Two behaviours were measured,
    told apart by the controller's fate and checked against the kernel's own tables:
    - `recovered`: a swap write met the dead port first, error recovery took the
      controller off rxe0 so its removal found nothing to delete, and the controller was
      LIVE again after; the swap I/O failed meanwhile (fast_io_fail_tmo=0): the process
      died on a failed page-in, its pages lost (bad); the area was taken off.
    - `deleted`: nothing met the dead port first, nvme_rdma_remove_one deleted the
      controller (the delete held the sleep), the namespace went under the swap area and
      no swapoff can reach it any more (the kernel keeps `/dev/nvme0n1 (deleted)` in
      /proc/swaps until reboot): the row is broken and says what was left.
    Either way the process did not survive with its pages; anything else fails."""
    res = run_swap(power_shim.shim, rxe_config,
                   SwapScenario("standby", Ordering.HCA_FIRST, POLICY, hold_ms=300))
    show(res)
    print("results file:", record(res, results_dir, "swap-nvme-rdma-standby-hca-first"))
    assert res.fate.process is not ProcessFate.ALIVE and res.pages.fates[PageFate.LOST], \
        (res.fate, res.pages)
    assert kernel_lines(res, "swap-device"), res.kernel  # the kernel's own swap errors
    left = [a for a in swaps() if a.deleted and "nvme" in a.path]
    if res.settled["state"] == "live":
        behaviour = "recovered"
        assert res.status.value == "bad" and not res.teardown_left, res.findings
        nothing_of_ours_left()
    else:
        behaviour = "deleted"
        assert res.settled["state"] == "absent" and res.hang is not None, res.settled
        assert res.status.value == "broken" and len(left) == 1, (res.findings, swaps())
        assert any(left[0].path in t for t in res.teardown_left), res.teardown_left
        # the row said it; the state file must not send every later cleanup after an area
        # no swapoff can reach (the guest ends with this suite)
        state = StateFile.load()
        for e in state.created:
            if e["kind"] == "paging_swap":
                state.forget(**e)
        nothing_of_ours_left(but_the_dead_area=True)
    print("behaviour:", behaviour, "left:", left)

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


def nothing_of_ours_left() -> None:
    assert not [a for a in swaps() if "nvme" in a.path], swaps()
    assert not [p.name for p in CGROUP_ROOT.iterdir() if p.name.startswith(OUR_CGROUP_PREFIX)]
    assert not [c for c in ko.nvme_ctrls() if ko.OUR_PREFIX in c.subsysnqn]
    kinds = [e["kind"] for e in StateFile.load().created if e["kind"].startswith("paging_")
             or e["kind"] in ("nvme_ctrl", "nvmet_subsys", "nullb")]
    assert not kinds, f"state file still lists {kinds}"


def kernel_lines(res: SwapResult, *needles: str) -> list[str]:
    after = int(res.kernel["marker"]["after_seq"])
    return [r.message for r in kmsg.read_records() if r.seq > after
            and any(n in r.message for n in needles)]


@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_standby_hca_first_takes_the_swap_away(power_shim, rxe_config, results_dir) -> None:
    """rxe0 goes with the swap area's pages on the peer: nvme_rdma_remove_one deletes the
    controller, the namespace goes, and a page-in of a page that was out cannot be read.
    Known behaviours, each checked against the kernel's own log and the cgroup's counts:
    `died` (the process ends on a failed page-in: SIGBUS or killed, its pages lost, the
    kernel logged swap read errors), `survived` (no page of it was out when the area
    went: every page verified and the controller came back)."""
    res = run_swap(power_shim.shim, rxe_config,
                   SwapScenario("standby", Ordering.HCA_FIRST, POLICY, hold_ms=300))
    show(res)
    print("results file:", record(res, results_dir, "swap-nvme-rdma-standby-hca-first"))
    assert res.status.value != "missed", res.findings
    if res.fate.process is ProcessFate.ALIVE and res.pages.fates[PageFate.LOST] == 0 and \
            res.pages.fates[PageFate.CORRUPTED] == 0:
        behaviour = "survived"
        assert res.settled["state"] == "live", res.settled
    else:
        behaviour = "died"
        assert res.status.value == "bad", res.findings
        assert res.fate.process is not ProcessFate.ALIVE or res.pages.fates[PageFate.LOST]
        assert kernel_lines(res, "swap-device", "I/O error", "Removing ctrl"), res.kernel
    print("behaviour:", behaviour, "kernel:", kernel_lines(res, "swap", "nvme", "oom",
                                                            "Out of memory", "SIGBUS"))
    nothing_of_ours_left()


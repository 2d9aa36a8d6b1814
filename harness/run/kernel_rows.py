"""Kernel clients in the matrix: a policy named `nvme-rdma...` runs the nvme-rdma
scenario (clients.kernel.nvme_scenario) instead of a userspace worker, and its result
becomes one table row.

    is_kernel_policy("nvme-rdma:fast-fail") -> True
    result = run_kernel(shim, cfg, scenario, spec)      # the NvmeResult JSON
    rows = kernel_rows(scenario_json, result)            # one Row

How the row reads (the table's columns are the verbs ledger's): `ok` completed-ok,
`f2app` failed-to-app, `lost` acknowledged writes not found on the target; the peer
columns are the target's store read on the peer side: `once` intact, `bad` corrupted,
`miss` lost. Late and stuck I/O, the controller's fate, detection time and the devices
of the connections are in the findings.
"""

from __future__ import annotations

from typing import Any

from clients.kernel.blockio import DriverSpec
from clients.kernel.nvme_host import parse_policy
from clients.kernel.nvme_scenario import NvmeScenario, run_nvme
from harness.run.kernel_lane import kernel_lane
from harness.run.rows import Row, RowStatus

KERNEL_PREFIXES = ("nvme-rdma",)
# The I/O runs until the controller settled after the transition (plus a little), so the
# count is only a cap: at least this many; at most this rate (the matrix's own count and
# rate are sized for the verbs clients: 120 at 60/s is 2 s)
KERNEL_MIN_COUNT = 800
KERNEL_MAX_RATE_PER_S = 40.0


def is_kernel_policy(policy: str) -> bool:
    return policy.split(":", 1)[0] in KERNEL_PREFIXES


def validate(policy: str) -> None:
    parse_policy(policy)  # SettingError names the presets and the raw form


def run_kernel(shim: Any, cfg: Any, scenario: Any, count: int, rate_per_s: float,
               depth: int, hold_ms: int | None) -> dict[str, Any]:
    sc = NvmeScenario(scenario.transition, scenario.ordering, scenario.policies[0], hold_ms,
                      DriverSpec(count=max(count, KERNEL_MIN_COUNT), depth=depth,
                                 rate_per_s=min(rate_per_s, KERNEL_MAX_RATE_PER_S)))
    result = run_nvme(shim, cfg, sc).to_json()
    return with_lane(scenario.policies[0], result)


def with_lane(policy: str, result: dict[str, Any]) -> dict[str, Any]:
    """The result with its timeline lane (`clients`) and the key that marks a kernel
    client's result (`kernel_client`: its row was judged when it ran and is stored)."""
    return result | {"clients": [kernel_lane(policy, result).to_json()],
                     "kernel_client": policy}


def kernel_rows(scenario: dict[str, Any], result: dict[str, Any]) -> list[Row]:
    lg = result["ledger"]
    out = lg["outcomes"]
    t = result["transition"]
    counts = {"completed-ok": out.get("completed-ok", 0),
              "failed-to-app": out.get("failed-to-app", 0),
              "lost": len(lg["lost_seqs"])}
    peer = {"delivered-once": lg["target"].get("intact", 0),
            "corrupted": lg["target"].get("corrupted", 0),
            "missing": lg["target"].get("lost", 0)}
    notes = [f"{out.get('completed-late', 0)} late, {out.get('stuck', 0)} stuck",
             f"controller {'survived' if result['survived'] else 'gone'}",
             "detect " + ("-" if result["detect_ms"] is None else f"{result['detect_ms']:.0f} ms")]
    live = result.get("settled", {}).get("ctrl_live_after_back_ms")
    if live is not None:
        notes.append(f"controller live {live:.0f} ms after the device returned")
    if lg["errnos"]:
        notes.append("errno " + ", ".join(f"{k} x{v}" for k, v in lg["errnos"].items()))
    devs = sorted({f"{c['phase']}:{c['dev']}" for c in result["connections"]})
    notes.append("connections " + " ".join(devs))
    row = Row(scenario["id"], scenario["transition"], scenario["ordering"],
              scenario["policies"][0], scenario["mix"], t["verdict"], counts, peer,
              "", result["recover_ms"], findings=[*result["findings"], *notes],
              status=RowStatus(result["status"]))
    return [row]

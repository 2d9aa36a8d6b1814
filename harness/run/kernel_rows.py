"""Kernel clients in the matrix: a policy named `nvme-rdma...` or `nfs-rdma...` runs that
kernel client's scenario (clients.kernel.nvme_scenario, clients.kernel.nfs_scenario)
instead of a userspace worker, and its result becomes one table row. One table, KINDS,
says per policy prefix how to validate, run and describe it.

    is_kernel_policy("nfs-rdma:hard") -> True
    result = run_kernel(shim, cfg, scenario, ...)      # the result's JSON (same shape)
    rows = kernel_rows(scenario_json, result)           # one Row

How the row reads (the table's columns are the verbs ledger's): `ok` completed-ok,
`late` completed-late (waited across the transition, then succeeded), `f2app`
failed-to-app, `lost` acknowledged writes not found on the target; the peer
columns are the target's store read on the peer side (the nvmet null_blk disk, the
exported tmpfs): `once` intact, `bad` corrupted, `miss` lost. Stuck I/O, the
controller's or mount's fate, detection time and the devices of the connections are in
the findings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clients.kernel import nfs_client, nfs_scenario, nvme_host, nvme_scenario
from clients.kernel.blockio import DriverSpec
from harness.core.errors import SettingError
from harness.run.kernel_lane import kernel_lane
from harness.run.rows import Row
from harness.workload.coverage import Coverage
from harness.workload.findings import RowStatus

# The I/O runs until the client settled after the transition (plus a little), so the
# count is only a cap: at least this many; at most this rate (the matrix's own count and
# rate are sized for the verbs clients: 120 at 60/s is 2 s)
KERNEL_MIN_COUNT = 800
KERNEL_MAX_RATE_PER_S = 40.0


def _nvme_run(shim: Any, cfg: Any, sc: Any, drv: DriverSpec,
              hold_ms: int | None) -> dict[str, Any]:
    return nvme_scenario.run_nvme(shim, cfg, nvme_scenario.NvmeScenario(
        sc.transition, sc.ordering, sc.policies[0], hold_ms, drv)).to_json()


def _nfs_run(shim: Any, cfg: Any, sc: Any, drv: DriverSpec,
             hold_ms: int | None) -> dict[str, Any]:
    return nfs_scenario.run_nfs(shim, cfg, nfs_scenario.NfsScenario(
        sc.transition, sc.ordering, sc.policies[0], hold_ms, drv)).to_json()


def _nvme_notes(result: dict[str, Any]) -> list[str]:
    out = [f"controller {'survived' if result['survived'] else 'gone'}"]
    live = result.get("settled", {}).get("ctrl_live_after_back_ms")
    if live is not None:
        out.append(f"controller live {live:.0f} ms after the device returned")
    return out


def _nfs_notes(result: dict[str, Any]) -> list[str]:
    out = [f"mount {'survived' if result['survived'] else 'did not survive'}"]
    again = result.get("settled", {}).get("connected_after_back_ms")
    if again is not None:
        out.append(f"transport connected {again:.0f} ms after the device returned")
    counts = [x["connect_count"] for x in result.get("xprt_states", [])
              if x.get("connect_count") is not None]
    if counts:
        out.append(f"xprt connects {min(counts)}->{max(counts)} (mountstats)")
    return out


@dataclass(frozen=True)
class KernelKind:
    validate: Callable[[str], object]  # SettingError names the presets and the raw form
    run: Callable[[Any, Any, Any, DriverSpec, int | None], dict[str, Any]]
    notes: Callable[[dict[str, Any]], list[str]]  # the client's own fate, for the row


KINDS: dict[str, KernelKind] = {
    "nvme-rdma": KernelKind(nvme_host.parse_policy, _nvme_run, _nvme_notes),
    "nfs-rdma": KernelKind(nfs_client.parse_policy, _nfs_run, _nfs_notes),
}
KERNEL_PREFIXES = tuple(KINDS)


def kind_of(policy: str) -> KernelKind | None:
    return KINDS.get(policy.split(":", 1)[0])


def is_kernel_policy(policy: str) -> bool:
    return kind_of(policy) is not None


class KernelWedge:
    """Which kernel clients this kernel can no longer run: a scenario whose teardown could
    not remove what it made (`teardown_left`: a controller whose delete the kernel holds)
    leaves the kernel in no state for another scenario of that client (measured: every
    later nvme connect waited out its 60 s bound). Later scenarios of that client are not
    run; their rows say why."""

    def __init__(self) -> None:
        self.left: dict[str, str] = {}  # policy prefix -> what was left, by which scenario

    def note(self, scenario_id: str, policy: str, result: dict[str, Any]) -> None:
        left = result.get("teardown_left") or []
        if left:
            self.left.setdefault(policy.split(":", 1)[0],
                                 f"{scenario_id} left {'; '.join(map(str, left))}")

    def blocks(self, policy: str) -> str:
        """Why a scenario of `policy` is not run ("" when it can run)."""
        why = self.left.get(policy.split(":", 1)[0])
        return (f"not run: {why}; no scenario of this kernel client can be set up until "
                "that is gone (`rxe-power cleanup`, else a reboot of the guest)") if why else ""


def validate(policy: str) -> None:
    kind = kind_of(policy)
    if kind is None:
        raise SettingError(f"{policy!r} is not a kernel-client policy",
                           f"name one of {', '.join(KERNEL_PREFIXES)}, with its options")
    kind.validate(policy)


def run_kernel(shim: Any, cfg: Any, scenario: Any, count: int, rate_per_s: float,
               depth: int, hold_ms: int | None) -> dict[str, Any]:
    kind = kind_of(scenario.policies[0])
    assert kind is not None, scenario.policies
    drv = DriverSpec(count=max(count, KERNEL_MIN_COUNT), depth=depth,
                     rate_per_s=min(rate_per_s, KERNEL_MAX_RATE_PER_S))
    return with_lane(scenario.policies[0], kind.run(shim, cfg, scenario, drv, hold_ms))


def with_lane(policy: str, result: dict[str, Any]) -> dict[str, Any]:
    """The result with its timeline lane (`clients`) and the key that marks a kernel
    client's result (`kernel_client`: its row was judged when it ran and is stored)."""
    return result | {"clients": [kernel_lane(policy, result).to_json()],
                     "kernel_client": policy}


def kernel_rows(scenario: dict[str, Any], result: dict[str, Any]) -> list[Row]:
    kind = kind_of(scenario["policies"][0])
    assert kind is not None, scenario["policies"]
    lg = result["ledger"]
    out = lg["outcomes"]
    t = result["transition"]
    counts = {"completed-ok": out.get("completed-ok", 0),
              "completed-late": out.get("completed-late", 0),
              "failed-to-app": out.get("failed-to-app", 0),
              "lost": len(lg["lost_seqs"])}
    peer = {"delivered-once": lg["target"].get("intact", 0),
            "corrupted": lg["target"].get("corrupted", 0),
            "missing": lg["target"].get("lost", 0)}
    notes = [f"{out.get('completed-late', 0)} late, {out.get('stuck', 0)} stuck",
             *kind.notes(result),
             "detect " + ("-" if result["detect_ms"] is None else f"{result['detect_ms']:.0f} ms")]
    if lg["errnos"]:
        notes.append("errno " + ", ".join(f"{k} x{v}" for k, v in lg["errnos"].items()))
    devs = sorted({f"{c['phase']}:{c['dev']}" for c in result["connections"]})
    notes.append("connections " + " ".join(devs))
    row = Row(scenario["id"], scenario["transition"], scenario["ordering"],
              scenario["policies"][0], scenario["mix"], t["verdict"], counts, peer,
              "", result["recover_ms"], findings=[*result["findings"], *notes],
              status=RowStatus(result["status"]),
              coverage=Coverage.from_json(result["coverage"]) if result.get("coverage")
              else None)
    return [row]

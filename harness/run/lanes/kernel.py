"""The kernel-client lane: a policy named `nvme-rdma...` or `nfs-rdma...` runs that
kernel client's scenario (clients.kernel.nvme_scenario, clients.kernel.nfs_scenario: each
a Ulp run by the one flow of clients.kernel.ulp_run) instead of a userspace worker, and its
result becomes one table row. One table, KINDS, says per ULP (a PolicyRef's name) how to
validate, run and describe it and what its result's own record is; a new ULP is its
client module plus an entry there.

    ref = parse_policy("nfs-rdma:hard")                 # KERNEL, name "nfs-rdma"
    res = run_kernel(shim, cfg, scenario, ...)         # KernelResult: the ULP's result, typed
    res.rows(scenario.key()); res.to_json()            # one Row; the record's `result`

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
from clients.kernel.nfs_server import ServerConfig
from clients.kernel.nvmet_target import TargetConfig
from clients.kernel.peer_service_client import PeerServiceClient
from clients.kernel.ulp_result import UlpResult
from harness.core.errors import RxePowerError
from harness.run.kernel_lane import kernel_lane
from harness.run.lanes.base import LaneContext, LaneKind, PolicyRef, RunSpec, Scenario
from harness.run.records import ScenarioKey
from harness.run.rows import Row
from harness.workload.coverage import Coverage
from harness.workload.findings import RowStatus

# The I/O runs until the client settled after the transition (plus a little), so the
# count is only a cap: at least this many; at most this rate (the matrix's own count and
# rate are sized for the verbs clients: 120 at 60/s is 2 s)
KERNEL_MIN_COUNT = 800
KERNEL_MAX_RATE_PER_S = 40.0


def _nvme_run(shim: Any, cfg: Any, sc: Scenario, drv: DriverSpec, hold_ms: int | None,
              services: PeerServiceClient | None) -> UlpResult[Any]:
    """In one kernel: the target here, and the guard route against the loopback around
    the wire. With the peer in its own guest: the target made there through its service,
    and no guard (no loopback to guard against: the peer's address is not this kernel's)."""
    nsc = nvme_scenario.NvmeScenario(sc.transition, sc.ordering, sc.policies[0].text,
                                     hold_ms, drv, guard=services is None)
    target = (services.nvmet_target(TargetConfig(addr=cfg.peer_addr, size_mib=nsc.size_mib))
              if services is not None else None)
    return nvme_scenario.run_nvme(shim, cfg, nsc, target=target)


def _nfs_run(shim: Any, cfg: Any, sc: Scenario, drv: DriverSpec, hold_ms: int | None,
             services: PeerServiceClient | None) -> UlpResult[Any]:
    """As _nvme_run: the server (nfsd) here or in the peer's kernel, the guard only here."""
    nsc = nfs_scenario.NfsScenario(sc.transition, sc.ordering, sc.policies[0].text, hold_ms,
                                   drv, guard=services is None)
    server = (services.nfs_server(ServerConfig(client_addr=cfg.local_addr,
                                               size_mib=nsc.size_mib))
              if services is not None else None)
    return nfs_scenario.run_nfs(shim, cfg, nsc, server=server)


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
    # the ULP's own option parser, given the whole name (its presets are whole names);
    # SettingError names the presets and the raw form
    validate: Callable[[str], object]
    run: Callable[[Any, Any, Scenario, DriverSpec, int | None, Any], UlpResult[Any]]
    notes: Callable[[dict[str, Any]], list[str]]  # the client's own fate, for the row
    own: type  # its result's own record (read back: UlpResult.from_json(d, own))


KINDS: dict[str, KernelKind] = {
    "nvme-rdma": KernelKind(nvme_host.parse_policy, _nvme_run, _nvme_notes,
                            nvme_scenario.CtrlRecord),
    "nfs-rdma": KernelKind(nfs_client.parse_policy, _nfs_run, _nfs_notes,
                           nfs_scenario.MountRecord),
}


class KernelWedge:
    """Which kernel clients this kernel can no longer run: a scenario whose teardown could
    not remove what it made (`teardown_left`: a controller whose delete the kernel holds)
    leaves the kernel in no state for another scenario of that client (measured: every
    later nvme connect waited out its 60 s bound). Later scenarios of that client are not
    run; their rows say why."""

    def __init__(self) -> None:
        self.left: dict[str, str] = {}  # ULP -> what was left, by which scenario

    def note(self, scenario_id: str, ref: PolicyRef, left: list[str]) -> None:
        """`left`: what the scenario's teardown could not remove (UlpResult)."""
        if left:
            self.left.setdefault(ref.name, f"{scenario_id} left {'; '.join(map(str, left))}")

    def blocks(self, ref: PolicyRef) -> str:
        """Why a scenario of `ref` is not run ("" when it can run)."""
        why = self.left.get(ref.name)
        return (f"not run: {why}; no scenario of this kernel client can be set up until "
                "that is gone (`rxe-power cleanup`, else a reboot of the guest)") if why else ""


def run_kernel(shim: Any, cfg: Any, scenario: Scenario, count: int, rate_per_s: float,
               depth: int, hold_ms: int | None,
               services: PeerServiceClient | None = None) -> KernelResult:
    """`services`: the peer guest's service when the peer is in its own kernel (the
    ULP's server is made there); None: in this kernel."""
    ref = scenario.policies[0]
    drv = DriverSpec(count=max(count, KERNEL_MIN_COUNT), depth=depth,
                     rate_per_s=min(rate_per_s, KERNEL_MAX_RATE_PER_S))
    return KernelResult(ref, KINDS[ref.name].run(shim, cfg, scenario, drv, hold_ms, services))


def with_lane(policy: str, result: dict[str, Any]) -> dict[str, Any]:
    """The result with its timeline lane (`clients`) and the key that marks a kernel
    client's result (`kernel_client`: its row was judged when it ran and is stored)."""
    return result | {"clients": [kernel_lane(policy, result).to_json()],
                     "kernel_client": policy}


def kernel_rows(scenario: dict[str, Any], result: dict[str, Any], ref: PolicyRef) -> list[Row]:
    """The kernel client's row (its status and findings were judged when it ran)."""
    kind = KINDS[ref.name]
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


class KernelLane:
    kind = LaneKind.KERNEL

    def __init__(self) -> None:
        self.wedge = KernelWedge()  # for this run's later scenarios

    def claims(self, text: str) -> bool:
        return text.partition(":")[0] in KINDS

    def parse(self, text: str) -> PolicyRef:
        name, _, options = text.partition(":")
        return PolicyRef(LaneKind.KERNEL, name, options, text)

    def validate(self, ref: PolicyRef, spec: RunSpec) -> None:
        KINDS[ref.name].validate(ref.text)

    def groups(self, refs: tuple[PolicyRef, ...], spec: RunSpec,
               transition: str) -> list[tuple[PolicyRef, ...]]:
        """Each kernel client in its own transition (in spec.kernel_transitions only, if
        it names any)."""
        if spec.kernel_transitions and transition not in spec.kernel_transitions:
            return []
        return [(r,) for r in refs]

    def run(self, ctx: LaneContext, sc: Scenario) -> KernelResult:
        ref = sc.policies[0]
        why = self.wedge.blocks(ref)
        if why:
            raise RxePowerError(why)
        res = run_kernel(ctx.shim, ctx.cfg, sc, ctx.spec.count, ctx.spec.rate_per_s,
                         ctx.spec.queue_depth, ctx.spec.hold_ms, ctx.services)
        self.wedge.note(sc.id, ref, res.result.teardown_left)
        return res

    def result_from_json(self, d: dict[str, Any], schema: int) -> KernelResult:
        return KernelResult.from_json(self.parse(str(d["kernel_client"])), d)


class KernelResult:
    """A kernel client's scenario result: the ULP's result (clients.kernel.ulp_result,
    typed) and the policy it ran. Its JSON is the ULP result's with the timeline lane
    (`clients`) and `kernel_client`; its row is made from that JSON, the form the report
    reads back."""

    def __init__(self, ref: PolicyRef, result: UlpResult[Any]) -> None:
        self.ref, self.result = ref, result
        self._json: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, ref: PolicyRef, d: dict[str, Any]) -> KernelResult:
        return cls(ref, UlpResult.from_json(d, KINDS[ref.name].own))

    def rows(self, sc: ScenarioKey) -> list[Row]:
        return kernel_rows({"id": sc.id, "transition": sc.transition, "ordering": sc.ordering,
                            "policies": list(sc.policies), "mix": sc.mix},
                           self.to_json(), self.ref)

    def to_json(self) -> dict[str, Any]:
        if self._json is None:
            self._json = with_lane(self.ref.text, self.result.to_json())
        return self._json

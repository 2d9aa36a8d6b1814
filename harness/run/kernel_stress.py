"""rxe-power stress with kernel clients: every cycle runs each kernel client's scenario
(harness/run/lanes/kernel.py: target, controller or mount, I/O with its ledger, one
transition, the target's store read on the peer side, everything of ours removed), and
then checks what a stress cycle checks:

- the kernel client's row is clean: every I/O has an outcome, every acknowledged write
  is intact on the target, nothing stuck, no held delete, nothing in the kernel log
  (a row that is bad or broken fails the cycle with its findings);
- the controller process's fds, RSS and threads against the figures after cycle 1;
- the kernel's RDMA resources (`rdma -j res`) equal to those after cycle 1: a kernel
  client's QPs, CQs, MRs and PDs that outlive its teardown are a leak.

The cycle record has the same fields as a userspace cycle's (harness/run/stress.py), one
`clients` entry per kernel client; a failed cycle keeps the kernel results.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from harness.run.lanes.base import Scenario
from harness.run.lanes.kernel import KernelWedge, run_kernel
from harness.run.records import CycleClient
from harness.run.scenario_result import ClientEnd
from harness.run.stress_checks import (
    CycleChecks,
    CycleOutcome,
    Usage,
    usage_json,
)
from harness.run.stress_holders import HolderExplainer, RunParts
from harness.system.rdma_res import res_by_holder
from harness.workload.findings import RowStatus
from power.plan import get_transition

if TYPE_CHECKING:
    from harness.run.stress import StressSpec
    from harness.topology.config import Topology, TopologyConfig
    from power.shim import Shim


class KernelStress:
    """The live state of a stress run of kernel clients: baselines and series."""

    def __init__(self, spec: StressSpec, topo: Topology, cfg: TopologyConfig,
                 shim: Shim) -> None:
        self.spec, self.topo, self.cfg, self.shim = spec, topo, cfg, shim
        ordering = spec.ordering or next(iter(get_transition(spec.transition).steps))
        self.scenarios = [Scenario(spec.transition, ordering, (p,), spec.mix)
                          for p in spec.policies]
        self.checks = CycleChecks((topo.local.dev, topo.peer.dev))
        self.wedge = KernelWedge()
        # a kernel client's objects are the kernel's (`rdma res` names its module)
        self.explainer = HolderExplainer(
            lambda: RunParts({os.getpid(): "controller"}), res_by_holder)

    @property
    def series(self) -> dict[str, list[float]]:
        return self.checks.series

    def start(self) -> None:
        """Nothing lives across cycles: each cycle sets its kernel clients up and down."""

    def close(self) -> None:
        """Each cycle removed what it made (its teardown raises if it could not)."""

    def cycle(self, n: int) -> tuple[CycleOutcome, dict[str, Any]]:
        t0 = time.monotonic()
        failures: list[str] = []
        clients, hits, results, verdicts, total_ms = [], [], [], [], 0.0
        for sc in self.scenarios:
            ref = sc.policies[0]
            why = self.wedge.blocks(ref)
            if why:  # an earlier cycle left what the kernel would not let go
                failures.append(f"{ref}: {why}")
                continue
            res = run_kernel(self.shim, self.cfg, sc, self.spec.count, self.spec.rate_per_s,
                             self.spec.queue_depth, self.spec.hold_ms)
            self.wedge.note(f"cycle {n}", ref, res.result.teardown_left)
            results.append(res.to_json())
            row = res.rows(sc.key())[0]
            if row.status is not RowStatus.CLEAN:
                failures.append(f"{row.policy}: {row.status.value}: "
                                + ("; ".join(row.findings) or "no findings"))
            ulp = res.result
            clients.append(CycleClient(row.policy, row.policy, dict(ulp.ledger.outcomes),
                                       len(ulp.ledger.unaccounted), ClientEnd.COMPLETED, "",
                                       ulp.recover_ms).to_json())
            hits += list(ulp.kernel.get("hits") or [])
            verdicts.append(ulp.transition["verdict"])
            total_ms += float(ulp.transition.get("total_ms") or 0.0)
        usage = {"controller": Usage.of(os.getpid())}
        self.explainer.new_check()
        checked = self.checks.check(n, usage, self.explainer)
        if self.explainer.base is None:
            self.explainer.take_base()
        failures += checked.failures
        self.checks.add("transition_ms", round(total_ms, 3))
        out = CycleOutcome(n, not failures, failures, round(time.monotonic() - t0, 3))
        body = {"cycle": n, "ok": out.ok, "failures": failures, "notes": checked.notes,
                "seconds": out.seconds, "verdict": "/".join(dict.fromkeys(verdicts)),
                "transition_ms": round(total_ms, 3), "clients": clients,
                "usage": usage_json(usage), "rdma_res": checked.rdma_res,
                "kernel_hits": hits}
        if self.explainer.now is not None:  # a device differed: who held what, per part
            body["rdma_res_by_part"] = self.explainer.now
        if not out.ok or self.spec.keep_ledgers:
            body["results"] = results
        return out, body

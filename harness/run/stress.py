"""rxe-power stress: one transition, cycle after cycle, under live clients, with leak checks.

The client workers live through every cycle (one process, one open device, a fresh
QP generation and ledger per cycle), as a long-running ULP lives through many
sleeps. After every cycle:

- the ledger invariant: every request of every client has an outcome, no worker died
  on its own (a worker the shim terminated for holding the device is respawned);
- each worker's, the peer agent's and the controller's open fds, RSS and threads
  (psutil) against the figure after the first cycle, within a slack (a figure that
  stays up is reported once);
- the kernel's RDMA resources (`rdma -j res`: QPs, CQs, MRs, PDs per device) equal to
  those after the first cycle; a difference names who holds it (harness.run.stress_holders)
  and is reported once, at the cycle it began;
- the kernel log after the cycle's marker clean (the shim's scan).

A failed check fails the cycle; `maxfail` failed cycles stop the run. Ctrl-C stops
after recording what ran. Every cycle is a `cycle` record in results.jsonl (fsynced):
its delete (how long, who held the device, the kernel's view if it blocked), each
client's async events (DEVICE_FATAL), the usage per process (with its pid) and `rdma res`.
The final `summary` gives each figure's first, last and max and its trend, and the run's
findings: every change of a device's objects with the cycle it began, and each process's
RSS growth per cycle against RSS_GROWTH_BOUND_KB_PER_CYCLE (harness.run.stress_findings).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core import settings
from harness.core.bounds import MAX_CYCLES, check_number
from harness.core.errors import RxePowerError, SettingError
from harness.core.printer import Printer
from harness.core.shards import ShardPlan
from harness.run.client_worker import ClientWorker
from harness.run.kernel_stress import KernelStress
from harness.run.lanes import parse_policies
from harness.run.lanes.base import LaneKind, PolicyRef
from harness.run.matrix import OP_MIXES, MatrixSpec
from harness.run.records import CycleClient
from harness.run.resultsfile import RecordKind
from harness.run.scenario import run_round, safe_name, spawn_workers
from harness.run.scenario_result import ClientEnd
from harness.run.session import ResultsHeader, RunSession
from harness.run.stress_checks import (
    CycleChecks,
    CycleOutcome,
    Usage,
    summarize,
    usage_json,
)
from harness.run.stress_holders import PEER_AGENT, HolderExplainer, RunParts
from harness.run.stress_text import async_events, render_summary, veto_note
from harness.system.provenance_text import describe
from harness.system.rdma_res import res_by_holder
from harness.topology.config import TopologyConfig
from harness.topology.lifecycle import restore_local_side
from harness.workload.ledger import WorkloadSpec
from harness.workload.spec import Arrivals, WorkloadEnd, resumed_cap
from power.plan import OnVeto, Ordering, get_transition, parse_on_veto, parse_ordering
from power.result import TransitionRequest, Verdict

if TYPE_CHECKING:  # types only: the controller objects a stress run is made of
    from harness.peer.controller import PeerAgent
    from harness.topology.config import Topology
    from power.shim import Shim

@dataclass(frozen=True)
class StressSpec:
    cycles: int = 20
    transition: str = "standby"
    ordering: Ordering | None = None  # None: the transition's first
    policies: tuple[PolicyRef, ...] = parse_policies(("fail-fast", "queue-replay", "graceful"))
    mix: str = "mixed"
    count: int = 60
    rate_per_s: float = 60.0
    queue_depth: int = 4
    hold_ms: int = 100
    on_veto: OnVeto = OnVeto.FORCE
    maxfail: int = 0  # 0: never stop early
    keep_ledgers: bool = False  # every cycle's full result (large), not only failed ones
    arrivals: Arrivals = Arrivals.OPEN  # as the matrix's (harness.workload.spec.Arrivals)
    end: WorkloadEnd = WorkloadEnd.RESUMED  # as the matrix's: every cycle meets its workload
    settle_ms: int = 1000

    def validate(self) -> StressSpec:
        check_number("--cycles", self.cycles, 1, MAX_CYCLES, "cycles", "MAX_CYCLES")
        check_number("--maxfail", self.maxfail, 0, MAX_CYCLES, "cycles (0: no limit)",
                     "MAX_CYCLES")
        tr = get_transition(self.transition)
        if self.ordering is not None:
            tr.plan(self.ordering)
        MatrixSpec((self.transition,), (), self.policies, (self.mix,), True, self.count,
                   self.rate_per_s, self.queue_depth, self.hold_ms, self.on_veto,
                   arrivals=self.arrivals, end=self.end, settle_ms=self.settle_ms).validate()
        kernel = [p.text for p in self.policies if p.lane is LaneKind.KERNEL]
        if kernel and len(kernel) != len(self.policies):
            raise SettingError(f"--policy {','.join(map(str, self.policies))} mixes kernel "
                               f"clients ({','.join(kernel)}) with userspace policies",
                               "stress them in two runs: a cycle of kernel clients runs "
                               "each in its own transition, userspace workers share one")
        return self

    @property
    def kernel(self) -> bool:
        """Kernel clients (harness/run/kernel_stress.py), not userspace workers."""
        return any(p.lane is LaneKind.KERNEL for p in self.policies)

    def workload(self) -> WorkloadSpec:
        count = self.count if self.end is WorkloadEnd.COUNT \
            else resumed_cap(self.rate_per_s, self.count)
        return WorkloadSpec(ops=OP_MIXES[self.mix], count=count,
                            rate_per_s=self.rate_per_s, queue_depth=self.queue_depth,
                            arrivals=self.arrivals, end=self.end, settle_ms=self.settle_ms)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ordering"] = self.ordering.value if self.ordering else None
        d["policies"] = [p.text for p in self.policies]
        d["on_veto"] = self.on_veto.value
        d["arrivals"] = self.arrivals.value
        d["end"] = self.end.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StressSpec:
        """The spec `to_json` wrote (the CLI hands it to the guest so)."""
        return cls(d["cycles"], d["transition"],
                   parse_ordering(d["ordering"]) if d["ordering"] else None,
                   parse_policies(d["policies"]), d["mix"], d["count"], d["rate_per_s"],
                   d["queue_depth"], d["hold_ms"], parse_on_veto(d["on_veto"]), d["maxfail"],
                   d["keep_ledgers"], Arrivals(d["arrivals"]), WorkloadEnd(d["end"]),
                   d["settle_ms"])


class Stress:
    """The live state of a stress run: workers, baselines, series."""

    def __init__(self, spec: StressSpec, topo: Topology, agent: PeerAgent, shim: Shim,
                 log_dir: Path) -> None:
        self.spec, self.topo, self.agent, self.shim = spec, topo, agent, shim
        self.log_dir = log_dir
        self.workers: list[ClientWorker] = []
        self.checks = CycleChecks((topo.local.dev, topo.peer.dev))
        self.pids: dict[int, str] = {}  # every pid the run's processes had -> their part
        self.gone: dict[str, str] = {}  # this cycle's workers that are not running, and why
        self.explainer = HolderExplainer(self.parts, res_by_holder)
        self.cycles_run = 0  # a shard's first cycle is numbered as in the whole run

    @property
    def series(self) -> dict[str, list[float]]:
        return self.checks.series

    def names(self) -> list[str]:
        return [f"{safe_name(p.name)}-{i}" for i, p in enumerate(self.spec.policies)]

    def start(self) -> None:
        self.workers = spawn_workers([p.name for p in self.spec.policies], self.spec.workload(),
                                     self.topo.local, self.agent, self.shim.notifier.clients_dir,
                                     self.log_dir, self.names())
        self.pids |= {w.pid: w.name for w in self.workers}
        self.pids |= {os.getpid(): "controller", self.agent.proc.pid: PEER_AGENT}

    def processes(self) -> dict[str, int]:
        """The run's live processes whose usage is checked: workers, agent, controller."""
        out = {w.name: w.pid for w in self.workers if w.proc.poll() is None}
        if self.agent.proc.poll() is None:
            out["peer-agent"] = self.agent.proc.pid
        out["controller"] = os.getpid()
        return out

    def parts(self) -> RunParts:
        """Who is who now (for naming the holders of a device's objects)."""
        names = dict(self.pids)
        if self.shim.reader_pid is not None:
            names[self.shim.reader_pid] = "the shim's async event reader"
        try:
            held = self.agent.request("holders")
        except RxePowerError as exc:
            held = {"error": exc.problem}
        return RunParts(names, dict(self.gone), self.agent.proc.pid, held)

    def close(self) -> None:
        for w in self.workers:
            w.close()

    def _respawn_dead(self, notes: list[str]) -> None:
        for i, w in enumerate(self.workers):
            if w.proc.poll() is None:
                continue
            w.close()
            self.workers[i] = spawn_workers([w.policy], self.spec.workload(), self.topo.local,
                                            self.agent, self.shim.notifier.clients_dir,
                                            self.log_dir, [w.name])[0]
            self.checks.forget(w.name)  # a new process: a new baseline
            self.pids[self.workers[i].pid] = w.name
            notes.append(f"{w.name} respawned (pid {self.workers[i].pid})")

    def cycle(self, n: int) -> tuple[CycleOutcome, dict[str, Any]]:
        t0 = time.monotonic()
        notes: list[str] = []
        failures: list[str] = []
        self.cycles_run += 1
        if self.cycles_run > 1:
            self._respawn_dead(notes)
            for w in self.workers:
                if w.proc.poll() is None and w.rounds_done:
                    w.new_round(self.spec.workload())
        req = TransitionRequest(self.spec.transition, self.spec.ordering, self.spec.hold_ms,
                                self.spec.on_veto)
        res = run_round(self.shim, self.agent, self.workers, req, probe=False)
        t = res.transition
        if t.verdict not in (Verdict.COMPLETED, Verdict.FORCED):
            failures.append(f"transition {t.verdict.value}: {'; '.join(t.reasons)}")
        pid_of = {w.name: w.pid for w in self.workers}
        self.gone = {}
        for c in res.clients:
            if c.unaccounted:
                failures.append(f"{c.client}: {len(c.unaccounted)} requests unaccounted")
            if c.crashed and c.ended is not ClientEnd.TERMINATED_BY_SHIM:
                failures.append(f"{c.client} crashed: {c.crash}")
            failures += [f"{c.client}: missed: {why}" for why in c.missed]
            if c.crashed:
                self.gone[c.client] = (f"{c.ended.value} in cycle {n} (pid "
                                       f"{pid_of.get(c.client)}); respawned at the next cycle")
        for h in t.kernel.hits if t.kernel else []:
            failures.append(f"kernel log: {h.pattern}: {h.record.message}")
        hits = [h.to_json() for h in t.kernel.hits] if t.kernel else []
        if t.kernel and t.kernel.gap:
            failures.append("kernel log: the ring buffer wrapped past the cycle's marker")
        usage = {name: Usage.of(pid) for name, pid in self.processes().items()}
        self.explainer.new_check()
        checked = self.checks.check(n, usage, self.explainer)
        if self.explainer.base is None:
            self.explainer.take_base()
        failures += checked.failures
        notes += checked.notes
        total_ms = round(t.total_ms, 3)
        self.checks.add("transition_ms", total_ms)
        v = t.veto
        held = len(v.held_at_start) if v else None  # processes holding at delete
        if v is not None:
            self.checks.add("held_at_delete", len(v.held_at_start))
            self.checks.add("delete_ms", round(v.blocked_s * 1000, 1))
            if v.detected:
                notes.append(veto_note(v.blocked_s, v.holders, v.terminated, v.kernel_view))
            elif v.slow:  # the module disassociates: the delete waited for a call in progress
                notes.append(f"slow delete: {v.reason}")
        out = CycleOutcome(n, not failures, failures, round(time.monotonic() - t0, 3), notes)
        clients = [CycleClient(c.client, c.policy, c.counts, len(c.unaccounted), c.ended,
                               c.crash, c.recovery_ms, pid_of.get(c.client),
                               None if c.crashed else async_events(c.events),
                               pid_of.get(c.client) in (v.held_at_start if v else []))
                   .to_json() for c in res.clients]
        body = {"cycle": n, "ok": out.ok, "failures": failures, "notes": notes,
                "seconds": out.seconds, "verdict": t.verdict.value,
                "transition_ms": total_ms, "held_at_delete": held, "clients": clients,
                "usage": usage_json(usage), "rdma_res": checked.rdma_res,
                "kernel_hits": hits}
        if self.explainer.now is not None:  # a device differed: who held what, per part
            body["rdma_res_by_part"] = self.explainer.now
        if v is not None:
            body["delete"] = {"start_s": round(v.start_s, 4), "blocked_s": round(v.blocked_s, 4),
                              "held_at_start": v.held_at_start, "slow": v.slow,
                              "vetoed": v.detected}
            if v.detected or v.slow:  # the whole report, with the kernel's view
                body["veto"] = v.to_json()
        if not out.ok or self.spec.keep_ledgers:
            body["result"] = res.to_json()
        return out, body


def run_stress(spec: StressSpec, cfg: TopologyConfig, out_dir: Path,
               progress: Callable[[CycleOutcome, int, int], None],
               *, out: Printer, plan: ShardPlan | None = None) -> int:
    """0 when every cycle passed, 1 when any failed, 130 when interrupted. With `plan`
    (--shard I/N) only its share of the cycles, numbered as in the whole run."""
    failed = done = 0
    interrupted = False
    numbers = [p + 1 for p in plan.places_in([str(n) for n in range(1, spec.cycles + 1)])] \
        if plan else list(range(1, spec.cycles + 1))
    with RunSession(cfg, out_dir, transitions=(spec.transition,)) as session, \
            session.rig(results=ResultsHeader("stress", spec.to_json(), plan)) as rig:
        results = rig.results
        out("\n".join(describe(session.provenance)))
        stress: Stress | KernelStress = (
            KernelStress(spec, rig.topo, cfg, rig.shim) if spec.kernel
            else Stress(spec, rig.topo, rig.agent, rig.shim, rig.log_dir))
        try:
            stress.start()
            for n in numbers:
                try:
                    outcome, body = stress.cycle(n)
                except RxePowerError as exc:
                    outcome = CycleOutcome(n, False, [f"harness error: {exc}"])
                    body = {"cycle": n, "ok": False, "failures": outcome.failures}
                results.write(RecordKind.CYCLE, body)
                done += 1
                failed += not outcome.ok
                progress(outcome, failed, len(numbers))
                problems = restore_local_side(cfg)
                if problems:
                    out(f"stress stopped: the local side was not restored: {problems}")
                    break
                if spec.maxfail and failed >= spec.maxfail:
                    out(f"stress stopped: {failed} failed cycles (--maxfail "
                        f"{spec.maxfail})")
                    break
        except KeyboardInterrupt:
            interrupted = True
            out(f"\ninterrupted after {done} cycles; the results so far are kept")
            restore_local_side(cfg)
        finally:
            trends = summarize(stress.series)
            found = stress.checks.findings()
            results.write(RecordKind.SUMMARY, {"cycles": done, "failed": failed,
                                           "interrupted": interrupted, "trends": trends,
                                           **found})
            stress.close()
    out("\n".join(["", *render_summary(done, failed, trends, out_dir, found)]))
    return 130 if interrupted else 1 if failed or found["findings"] else 0


class LineProgress:
    """A progress line per cycle (no terminal, or inside the VM)."""

    def __init__(self, total: int, out: Printer) -> None:
        self.t0 = time.monotonic()
        self.total = total
        self.out = out
        self.done = 0  # cycles reported (a shard's cycle numbers start past 1)

    def __call__(self, outcome: CycleOutcome, failed: int, total: int) -> None:
        el = time.monotonic() - self.t0
        self.done += 1
        rate = self.done / el * 60 if el else 0.0
        eta = (total - self.done) / rate * 60 if rate else 0.0
        which = f"{outcome.cycle}/{total}" if outcome.cycle == self.done \
            else f"{outcome.cycle} ({self.done}/{total} of this shard)"
        self.out(f"cycle {which} {'ok' if outcome.ok else 'FAILED'} | "
                  f"failures {failed} | {rate:.1f} cycles/min | ETA {eta:.0f} s"
                  + ("" if outcome.ok else f" | {'; '.join(outcome.failures)[:300]}")
                  + (f" | note: {'; '.join(outcome.notes)[:400]}" if outcome.notes else ""))


class RichProgress:
    """A rich progress bar: cycles done, failures, rate and ETA."""

    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("stress"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("failures {task.fields[failed]}"),
                            TextColumn("{task.fields[rate]:.1f} cycles/min"),
                            TimeElapsedColumn(), TimeRemainingColumn())
        self.task = self.bar.add_task("stress", total=total, failed=0, rate=0.0)
        self.t0 = time.monotonic()
        self.done = 0
        self.bar.start()

    def __call__(self, outcome: CycleOutcome, failed: int, total: int) -> None:
        el = time.monotonic() - self.t0
        self.done += 1
        self.bar.update(self.task, completed=self.done, failed=failed,
                        rate=self.done / el * 60 if el else 0.0)
        if not outcome.ok:
            self.bar.console.print(f"cycle {outcome.cycle} FAILED: "
                                   f"{'; '.join(outcome.failures)}")

    def stop(self) -> None:
        self.bar.stop()


def make_progress(total: int, out: Printer) -> Any:
    """A bar on a terminal; lines to `out` otherwise (CI logs, the VM's console)."""
    import sys

    if sys.stdout.isatty() and not settings.in_vm():
        return RichProgress(total)
    return LineProgress(total, out)

"""The scenario matrix: transitions x orderings x client policies x operation mixes.

    spec = MatrixSpec(transitions=("standby",), policies=("graceful",)).validate()
    for sc in spec.scenarios(): ...                  # what would run, in order
    code = run_matrix(spec, cfg, out_dir, out=out)   # run, writing results.jsonl as it goes
                                                     # (out: a Printer, the progress lines)

The policies are PolicyRefs (harness.run.lanes.parse_policy, at the command line); each
scenario runs one lane's group of them (LANES: userspace workers, a kernel client, an
outside program), and the lane makes its rows.

One scenario is one transition under one client worker per policy. By default each
policy gets its own transition (isolated: one client's behaviour cannot colour
another's row); `together` runs the policies side by side in one transition, as
several ULPs sharing an HCA would. Every scenario's record is on disk (fsynced)
before the next one starts. Rows (one per scenario and policy) carry the
outcome counts, the peer's view, the clean-shutdown verdict as the peer saw it,
the recovery time and the veto, plus a status:

    clean   every request accounted, nothing lost, duplicated, corrupted or vetoed
    bad     the client misbehaved: the findings say how (lost I/O, held the device...)
    broken  the harness could not account for it (unaccounted requests, a worker that
            died on its own, a failed transition, a harness error): a bug to report
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from harness.core.bounds import MAX_HOLD_MS, check_number
from harness.core.errors import RxePowerError, SettingError
from harness.core.files import atomic_write
from harness.core.printer import Printer
from harness.core.settings import PeerPlacement
from harness.core.shards import ShardPlan
from harness.core.xmltext import xml_safe
from harness.run.lanes import new_lanes, parse_policies, parse_policy
from harness.run.lanes.base import LaneContext, PolicyRef
from harness.run.lanes.base import Scenario as Scenario  # (re-exported for its readers)
from harness.run.lanes.userspace import rows_of as rows_of  # (re-exported: tests, report)
from harness.run.outside import CLIENT_EXIT_TIMEOUT_S, OutsideSpec
from harness.run.records import ScenarioKey
from harness.run.resultsfile import RecordKind
from harness.run.rows import Row
from harness.run.session import ResultsHeader, RunSession
from harness.system.provenance_text import describe
from harness.topology.config import TopologyConfig
from harness.workload.findings import RowStatus
from harness.workload.ledger import Op, WorkloadSpec
from harness.workload.spec import Arrivals, WorkloadEnd, resumed_cap
from power.plan import OnVeto, Ordering, get_transition, parse_on_veto, parse_ordering
from power.result import TransitionRequest

OP_MIXES: dict[str, tuple[Op, ...]] = {
    "mixed": (Op.SEND, Op.WRITE, Op.READ, Op.FETCH_ADD),
    "send": (Op.SEND,),
    "write": (Op.WRITE,),
    "read-atomic": (Op.READ, Op.FETCH_ADD),
}
DEFAULT_TRANSITIONS = ("link-flap", "standby", "hibernate", "surprise-removal")
USER_POLICIES = parse_policies(("naive", "fail-fast", "queue-replay", "graceful"))
# `rxe-power run`'s matrix: the four userspace policies side by side in every transition
# and ordering, and one client of each kernel ULP in standby, both orderings: the device
# unregistered and back, with and without notice. On rxe hibernate is standby with a
# longer hold and link-flap never unregisters the device. Surprise-removal of a hard NFS
# mount left its I/O stuck and the mount busy, and the run's end then never came (seen
# once, 26 Nov 2026; not understood yet): `matrix --policy nfs-rdma:hard --transition
# surprise-removal` measures it, the six-minute overview does not. A kernel scenario
# takes 10-30 s in the TCG guest; with the userspace policies one at a time and kernel
# clients in standby and surprise-removal, the default run took 360 s of scenarios.
RUN_POLICIES = (*USER_POLICIES, *parse_policies(("nvme-rdma", "nfs-rdma:hard")))
RUN_KERNEL_TRANSITIONS = ("standby",)


@dataclass(frozen=True)
class MatrixSpec:
    transitions: tuple[str, ...] = DEFAULT_TRANSITIONS
    orderings: tuple[Ordering, ...] = ()  # empty: every ordering each transition offers
    policies: tuple[PolicyRef, ...] = USER_POLICIES  # (harness.run.lanes.parse_policies)
    mixes: tuple[str, ...] = ("mixed",)
    together: bool = False
    count: int = 120
    rate_per_s: float = 60.0
    queue_depth: int = 4
    hold_ms: int = 300
    on_veto: OnVeto = OnVeto.FORCE
    client_cmd: str = ""  # an outside program instead of the policies (harness/run/outside.py)
    server_cmd: str = ""  # its own server on the peer HCA
    client_exit_timeout_s: float = CLIENT_EXIT_TIMEOUT_S  # after the transition, to end
    # open loop: the requests keep arriving at the rate while the device sleeps, so every
    # policy must decide what to do with them (harness.workload.spec.Arrivals)
    arrivals: Arrivals = Arrivals.OPEN
    # kernel clients run only in these transitions (empty: in every selected one)
    kernel_transitions: tuple[str, ...] = ()
    # the userspace workload runs on past the transition and is stopped settle_ms after it
    # (RESUMED: `count` is then a cap, at least the rate x RESUMED_CAP_S), or ends after
    # `count` requests (COUNT: the transition may miss it; the row then says `missed`)
    end: WorkloadEnd = WorkloadEnd.RESUMED
    settle_ms: int = 1000

    def validate(self) -> MatrixSpec:
        for t in (*self.transitions, *self.kernel_transitions):
            get_transition(t)
        if self.client_cmd:  # before its lane is named from it (lane_refs)
            self.outside().validate()
        elif self.server_cmd:
            raise SettingError("--server-cmd without --client-cmd",
                               "give the client program too (--client-cmd)")
        for p in self.policies:
            if not isinstance(p, PolicyRef):
                raise TypeError(f"MatrixSpec.policies holds {p!r}: give PolicyRefs "
                                "(harness.run.lanes.parse_policies)")
        lanes = new_lanes()
        for p in self.lane_refs():
            lanes[p.lane].validate(p, self)
        for m in self.mixes:
            if m not in OP_MIXES:
                raise SettingError(f"unknown operation mix {m!r}",
                                   f"use one of: {', '.join(OP_MIXES)}")
        if not (self.transitions and self.policies and self.mixes):
            raise SettingError("the matrix is empty (no transition, policy or mix)",
                               "select at least one of each")
        check_number("--hold-ms", self.hold_ms, 0, MAX_HOLD_MS, "ms", "MAX_HOLD_MS")
        if not self.scenarios():
            raise SettingError(f"no selected transition offers ordering(s) "
                               f"{[o.value for o in self.orderings]}",
                               "surprise-removal is hca-first only; widen --ordering")
        self.workload("mixed")
        replace(self, end=WorkloadEnd.COUNT).workload("mixed")  # the count itself, too
        return self

    def outside(self) -> OutsideSpec:
        return OutsideSpec(self.client_cmd, self.server_cmd, self.client_exit_timeout_s)

    def lane_refs(self) -> tuple[PolicyRef, ...]:
        """What runs: the policies, or the outside program of --client-cmd instead."""
        return (parse_policy(self.outside().label),) if self.client_cmd else self.policies

    def workload(self, mix: str) -> WorkloadSpec:
        count = self.count if self.end is WorkloadEnd.COUNT \
            else resumed_cap(self.rate_per_s, self.count)
        return WorkloadSpec(ops=OP_MIXES[mix], count=count, rate_per_s=self.rate_per_s,
                            queue_depth=self.queue_depth, arrivals=self.arrivals,
                            end=self.end, settle_ms=self.settle_ms).validate()

    def scenarios(self) -> list[Scenario]:
        """In each transition, ordering and mix: each lane's groups, in the lanes' order
        (harness.run.lanes.LANES)."""
        out = []
        refs = self.lane_refs()
        for t in self.transitions:
            offered = tuple(get_transition(t).steps)
            groups = [g for kind, lane in new_lanes().items()
                      if (mine := tuple(p for p in refs if p.lane is kind))
                      for g in lane.groups(mine, self, t)]
            for o in (o for o in offered if not self.orderings or o in self.orderings):
                for mix in self.mixes:
                    out += [Scenario(t, o, g, mix) for g in groups]
        return out

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["orderings"] = [o.value for o in self.orderings]
        d["policies"] = [p.text for p in self.policies]
        d["on_veto"] = self.on_veto.value
        d["arrivals"] = self.arrivals.value
        d["kernel_transitions"] = list(self.kernel_transitions)
        d["end"] = self.end.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MatrixSpec:
        return cls(tuple(d["transitions"]), tuple(parse_ordering(o) for o in d["orderings"]),
                   parse_policies(d["policies"]), tuple(d["mixes"]), d["together"], d["count"],
                   d["rate_per_s"], d["queue_depth"], d["hold_ms"], parse_on_veto(d["on_veto"]),
                   d.get("client_cmd", ""), d.get("server_cmd", ""),
                   d.get("client_exit_timeout_s", CLIENT_EXIT_TIMEOUT_S),
                   Arrivals(d.get("arrivals", Arrivals.CLOSED.value)),
                   tuple(d.get("kernel_transitions") or ()),
                   # files written before the RESUMED workload ended after `count`
                   WorkloadEnd(d.get("end", WorkloadEnd.COUNT.value)),
                   int(d.get("settle_ms", MatrixSpec.settle_ms)))


def error_rows(scenario: ScenarioKey, error: str) -> list[Row]:
    return [Row(scenario.id, scenario.transition, scenario.ordering, p,
                scenario.mix, "error", findings=[f"harness error: {error}"],
                status=RowStatus.BROKEN) for p in scenario.policies]


# --- the table --------------------------------------------------------------------------------

COLUMNS = (("ok", "completed-ok"), ("late", "completed-late"), ("replay", "replayed-ok"),
           ("rej", "rejected-at-post"), ("err", "completed-error"), ("flush", "flushed"),
           ("f2app", "failed-to-app"), ("aband", "abandoned"), ("lost", "lost"),
           ("killed", "killed-in-flight"))
PEER_COLUMNS = (("once", "delivered-once"), ("dup", "duplicated"), ("bad", "corrupted"),
                ("miss", "missing"))
LEGEND = ("ok completed-ok, late completed after waiting in the client's queue across the "
          "sleep, replay replayed-ok, rej rejected at post, err error completion, flush "
          "flushed, f2app failed to the application, aband posted then abandoned when the "
          "device went (DEVICE_FATAL), lost posted and never completed, killed in flight "
          "when the client was killed; in-flt = requests posted and not completed when the "
          "port went down / when the device was deleted; wait ms = median/max wait of the "
          "late requests; peer: once/dup/bad/miss = delivered once / duplicated / corrupted "
          "/ missing (SEND and WRITE only); recov = resume to first good completion")


def write_table(out_dir: Path, table: list[str]) -> Path:
    """out_dir/table.txt: the rendered table and its legend (never through a symlink)."""
    return atomic_write(out_dir / "table.txt", "\n".join([*table, "", LEGEND]) + "\n")


def render_table(rows: list[Row]) -> list[str]:
    head = (f"{'transition':<17}{'ordering':<14}{'policy':<13}{'mix':<8}{'verdict':<10}"
            + "".join(f"{h:>7}" for h, _ in COLUMNS) + "  peer "
            + "".join(f"{h:>5}" for h, _ in PEER_COLUMNS)
            + f"  {'in-flt':>7} {'away':>5} {'wait ms':>11}"
            + f"  {'peer saw':<14}{'recov ms':>9}  {'status':<7}findings / veto")
    out = [head, "-" * len(head)]
    for r in rows:
        saw = {"orderly disconnect (goodbye)": "goodbye"}.get(r.peer_saw, r.peer_saw)
        rec = f"{r.recovery_ms:.0f}" if r.recovery_ms is not None else "-"
        notes = "; ".join(r.findings + ([f"veto: {r.veto}"] if r.veto else []))
        out.append(f"{r.transition:<17}{r.ordering:<14}{r.policy[:12]:<13}{r.mix[:7]:<8}"
                   f"{r.verdict:<10}" + "".join(f"{r.counts.get(k, 0):>7}" for _, k in COLUMNS)
                   + "       " + "".join(f"{r.peer.get(k, 0):>5}" for _, k in PEER_COLUMNS)
                   + f"  {in_flight_text(r):>7} {away_text(r):>5} {wait_text(r):>11}"
                   + f"  {saw[:13]:<14}{rec:>9}  {r.status.value:<7}{notes}")
    out.append(summary_line(rows))
    return out


def models_text(rows: list[Row]) -> str:
    """Which fault model made the rows, per transition (docs/shim-and-fault-models.md)."""
    seen = {r.transition: r.fault_model.value if r.fault_model else "not recorded"
            for r in rows}
    return "fault models: " + (", ".join(f"{t} {m}" for t, m in seen.items()) or "none")


def summary_line(rows: list[Row]) -> str:
    by = {s: sum(1 for r in rows if r.status is s) for s in RowStatus}
    return (f"{len(rows)} rows: {by[RowStatus.CLEAN]} clean, {by[RowStatus.BAD]} bad (the "
            f"client misbehaved), {by[RowStatus.MISSED]} missed (the transition missed the "
            f"workload: no measurement), {by[RowStatus.BROKEN]} broken (harness could not "
            f"account); {models_text(rows)}")


def away_text(r: Row) -> str:
    """Requests handed over while the device was away ("-": not measured, or no away
    step)."""
    if r.coverage is None or r.coverage.arrived_away is None:
        return "-"
    return str(r.coverage.arrived_away)


def in_flight_text(r: Row) -> str:
    """port/device in-flight counts ("-" where the transition has no such step)."""
    def n(v: int | None) -> str:
        return "-" if v is None else str(v)
    return f"{n(r.in_flight_port)}/{n(r.in_flight_device)}"


def wait_text(r: Row) -> str:
    if r.wait_max_ms is None:
        return "-"
    return f"{r.wait_median_ms:.0f}/{r.wait_max_ms:.0f}"


def junit_xml(rows: list[Row], seconds: dict[str, float]) -> bytes:
    """One testcase per row: bad -> <failure>, broken -> <error>. Every text goes through
    xml_safe: findings carry holder command lines and veto text (any bytes)."""
    x = xml_safe
    suite = ET.Element("testsuite", name="rxe-power matrix", tests=str(len(rows)),
                       failures=str(sum(r.status is RowStatus.BAD for r in rows)),
                       errors=str(sum(r.status.fails_run for r in rows)))
    for r in rows:
        case = ET.SubElement(suite, "testcase",
                             classname=x(f"rxe_power.{r.transition}.{r.ordering}"),
                             name=x(f"{r.policy}[{r.mix}]"),
                             time=f"{seconds.get(r.scenario, 0.0):.3f}")
        if r.status is not RowStatus.CLEAN:
            tag = "failure" if r.status is RowStatus.BAD else "error"
            ET.SubElement(case, tag, type=r.status.value,
                          message=x("; ".join(map(str, r.findings)))).text = x(
                f"{r.scenario}: verdict {r.verdict}; outcomes {r.counts}; peer {r.peer}")
    return bytes(ET.tostring(suite, encoding="utf-8", xml_declaration=True))


# --- running ------------------------------------------------------------------------------------


def run_matrix(spec: MatrixSpec, cfg: TopologyConfig, out_dir: Path, junit: Path | None = None,
               *, out: Printer, plan: ShardPlan | None = None,
               peer: PeerPlacement = PeerPlacement.SAME_KERNEL) -> int:
    """Run every scenario (of `plan`'s shard only, numbered as in the whole matrix: see
    harness.run.shard_plans); 0 when no row is broken, 1 otherwise. Results go to
    out_dir/results.jsonl as they happen; the table to out_dir/table.txt."""
    whole = spec.scenarios()
    places = plan.places_in([sc.id for sc in whole]) if plan else range(len(whole))
    scenarios = [(p + 1, whole[p]) for p in places]
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    interrupted = False
    lanes = new_lanes()  # one of each kind for this run (the kernel lane's wedge)
    with RunSession(cfg, out_dir, transitions=(*spec.transitions, *spec.kernel_transitions),
                    peer=peer) as session:
        topo, cfg = session.topo, session.cfg  # the placement's names (harness.run.placements)
        provenance = describe(session.provenance)
        out(f"matrix: {len(scenarios)} scenarios" + (f" (shard {plan.shard} of {len(whole)})"
                                                     if plan else "")
            + f" on {topo.local.dev} <-> {topo.peer.dev}; results in {session.results_path}")
        out("\n".join(provenance))
        with session.rig(results=ResultsHeader("matrix", spec.to_json(), plan)) as rig:
            results = rig.results
            for k, (i, sc) in enumerate(scenarios, 1):
                t0 = time.monotonic()
                body: dict[str, Any] = {"index": i, "scenario": sc.to_json()}
                req = TransitionRequest(sc.transition, sc.ordering, spec.hold_ms,
                                        spec.on_veto)
                try:
                    ctx = LaneContext(spec, rig.shim, rig, cfg, topo, req,
                                      rig.clients_dir, rig.log_dir / f"{i:03d}", rig.services)
                    res = lanes[sc.lane].run(ctx, sc)
                    body["result"] = res.to_json()
                    new = res.rows(sc.key())
                except KeyboardInterrupt:
                    interrupted = True
                    body["error"] = "interrupted (Ctrl-C)"
                    new = error_rows(sc.key(), body["error"])
                except RxePowerError as exc:
                    body["error"] = str(exc)
                    new = error_rows(sc.key(), str(exc))
                problems = rig.sides.restore(cfg)
                seconds[sc.id] = body["seconds"] = round(time.monotonic() - t0, 3)
                body["rows"] = [r.to_json() for r in new]
                body["not_restored"] = problems
                results.write(RecordKind.SCENARIO, body)
                rows += new
                out(f"[{k}/{len(scenarios)}{f' #{i}' if plan else ''}] {sc.id}: " + ", ".join(
                    f"{r.policy} {r.status.value}" for r in new) + f" ({body['seconds']:.1f} s)")
                if problems or interrupted:
                    out("matrix stopped: " + ("interrupted" if interrupted else
                                              f"the local side was not restored: {problems}"))
                    break
            results.write(RecordKind.SUMMARY, {"rows": len(rows), "interrupted": interrupted,
                                           "by_status": {s.value: sum(r.status is s for r in rows)
                                                         for s in RowStatus}})
    table = render_table(rows)
    write_table(out_dir, [*provenance, "", *table])
    out("\n".join(["", *table, LEGEND]))
    if junit is not None:
        atomic_write(junit, junit_xml(rows, seconds))
        out(f"JUnit XML: {junit}")
    if interrupted:
        return 130
    return 1 if any(r.status.fails_run for r in rows) else 0

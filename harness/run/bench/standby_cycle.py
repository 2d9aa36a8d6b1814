"""The standby cycle part by part over repeated cycles (median, min/max, IQR): quiesce
(suspend notice -> the client's release), port down, delete, hold, re-create, port up,
resume notice -> the clients' reconnect, first successful completion after resume, and
the whole (suspend notice -> the last client's first success)."""

from __future__ import annotations

import json
from typing import Any

from harness.core.files import open_new
from harness.run.bench.record import BenchRecord, machine_load
from harness.run.bench.series import spread
from harness.run.bench.spec import BENCH_TRANSITION
from harness.run.scenario import run_round, spawn_workers
from harness.run.scenario_result import ScenarioResult
from harness.run.session import Rig
from harness.topology.lifecycle import restore_local_side
from harness.workload.ledger import WorkloadSpec
from power.plan import OnVeto, Ordering
from power.result import TransitionRequest, Verdict

CYCLE_RATE = 200.0  # requests per second per client during the standby cycles
CYCLE_PARTS = ("quiesce", "port_down", "delete", "hold", "recreate", "port_up", "reconnect",
               "first_ok", "whole", "shim_total")
CYCLE_PART_TEXT = {
    "quiesce": "quiesce: suspend notice -> last client released",
    "port_down": "port down (carrier off -> port DOWN)",
    "delete": "delete (rdma link delete)",
    "hold": "hold (asleep)",
    "recreate": "re-create (rdma link add -> port present)",
    "port_up": "port up (carrier on -> ACTIVE + RoCEv2 GID)",
    "reconnect": "resume notice -> last client reconnected",
    "first_ok": "resume notice -> last client's first ok",
    "whole": "whole: suspend notice -> last first ok",
    "shim_total": "shim transition (first step -> last step)",
}


def summary_without_ledgers(res: ScenarioResult) -> dict[str, Any]:
    """What the bench reads of a ScenarioResult, without its per-request ledgers (whose
    JSON form costs seconds under emulation for a thousand QPs' worth)."""
    return {"transition": res.transition.to_json(), "ok": res.ok,
            "clients": [{"client": c.client, "policy": c.policy, "crashed": c.crashed,
                         "crash": c.crash, "metrics": c.metrics, "counts": c.counts,
                         "peer_counts": c.peer_counts, "unaccounted": c.unaccounted,
                         "events": c.events, "clean_shutdown": c.clean_shutdown}
                        for c in res.clients]}


def cycle_parts(res: dict[str, Any]) -> dict[str, float]:
    """One standby round (ScenarioResult JSON) in parts, in ms. See CYCLE_PART_TEXT."""
    t = res["transition"]
    steps = {s["step"]: s for s in t["steps"] if s["outcome"] != "skipped"}
    out: dict[str, float] = {}
    for part, step in (("port_down", "port-down"), ("delete", "delete-device"),
                       ("hold", "hold"), ("recreate", "create-device"),
                       ("port_up", "port-up")):
        if step in steps:
            out[part] = steps[step]["ms"]
    sus, res_step = steps.get("notify-suspend"), steps.get("notify-resume")
    released = [a["answered_ns"] for a in t.get("answers", [])
                if a["kind"] == "released" and a.get("answered_ns")]
    resumed = [a["answered_ns"] for a in t.get("answers", [])
               if a["kind"] == "resumed" and a.get("answered_ns")]
    firsts = [c["metrics"].get("first_ok_after_resume_ns") for c in res["clients"]
              if not c["crashed"]]
    if sus and released:
        out["quiesce"] = (max(released) - sus["begin_ns"]) / 1e6
    if res_step and resumed:
        out["reconnect"] = (max(resumed) - res_step["begin_ns"]) / 1e6
    if res_step and firsts and all(firsts):
        out["first_ok"] = (max(firsts) - res_step["begin_ns"]) / 1e6
        if sus:
            out["whole"] = (max(firsts) - sus["begin_ns"]) / 1e6
    out["shim_total"] = t.get("total_ms", 0.0)
    return {k: round(v, 1) for k, v in out.items()}



def measure_standby_cycles(bench: BenchRecord, rig: Rig) -> bool:
    """Standby cycles under a fail-fast and a graceful client (both quiesce on the notice),
    the workers living through the cycles as in stress; every ledger must hold. Bounded by
    CYCLE_SECTION_TIMEOUT_S per cycle, checked before each (a round under way is held to
    its own bounds)."""
    spec = bench.spec
    bound = spec.section_bound("cycle")
    # long enough that both clients still have requests queued when the notice comes, so
    # each has a first successful completion after resume
    wl = WorkloadSpec(count=spec.cycle_count, rate_per_s=CYCLE_RATE, queue_depth=4).validate()
    policies = ["fail-fast", "graceful"]
    timelines = bench.out_dir / "cycle-transitions.jsonl"
    timelines.unlink(missing_ok=True)
    workers = spawn_workers(policies, wl, rig.topo.local, rig.agent, rig.clients_dir,
                            rig.log_dir,
                            [f"bench-cycle-{p}" for p in policies])
    per_cycle: list[dict[str, Any]] = []
    ok = True
    try:
        for n in range(1, spec.cycles + 1):
            bound.check(f"standby cycle {n} of {spec.cycles}, not started "
                        f"({len(per_cycle)} done)")
            if n > 1:
                for w in workers:
                    w.new_round(wl)
            req = TransitionRequest(BENCH_TRANSITION, Ordering.CLIENTS_FIRST, spec.hold_ms,
                                    OnVeto.FORCE)
            res = summary_without_ledgers(run_round(rig.shim, rig.agent, workers, req,
                                                    probe=False))
            parts = cycle_parts(res)
            with open_new(timelines, append=True) as fh:  # each cycle's whole timeline
                fh.write(json.dumps(res["transition"], default=str) + "\n")
            held = res["ok"] and Verdict(res["transition"]["verdict"]) is Verdict.COMPLETED
            ok &= held
            per_cycle.append({"cycle": n, "parts_ms": parts, "verdict":
                              res["transition"]["verdict"], "ledger_ok": res["ok"],
                              "counts": {c["client"]: c["counts"] for c in res["clients"]},
                              "opened": [e for c in res["clients"] for e in c["events"]
                                         if e["event"] == "opened"][-len(policies):]})
            restore_local_side(rig.cfg)
    finally:
        for w in workers:
            w.close()
    summary = {p: spread([c["parts_ms"][p] for c in per_cycle if p in c["parts_ms"]])
               for p in CYCLE_PARTS}
    bench.record("cycle", {"cycles": per_cycle, "summary": summary, "hold_ms": spec.hold_ms,
                           "policies": policies, "load": machine_load()})
    bench.out(f"\nstandby cycle: {spec.cycles} cycles, hold {spec.hold_ms} ms, clients "
              f"{' + '.join(policies)} (clients-first); ms")
    bench.out(f"{'part':<46} {'median':>8} {'min':>8} {'max':>8} {'q1':>8} {'q3':>8}")
    for p in CYCLE_PARTS:
        s = summary[p]
        if s:
            bench.out(f"{CYCLE_PART_TEXT[p]:<46} {s['median']:>8.1f} {s['min']:>8.1f} "
                      f"{s['max']:>8.1f} {s['q1']:>8.1f} {s['q3']:>8.1f}")
    bench.out("every cycle's ledger held" if ok else "a cycle FAILED: see bench.json")
    return ok


"""One standby under many QPs (default 1,024) spread over several workers, the ledger
holding: first connect, the shim's transition, each worker's reconnect of its QPs."""

from __future__ import annotations

import time
from typing import Any

from harness.run.bench.record import BenchRecord, machine_load
from harness.run.bench.series import spread
from harness.run.bench.spec import BENCH_TRANSITION
from harness.run.bench.standby_cycle import cycle_parts, summary_without_ledgers
from harness.run.scenario import run_round, spawn_workers
from harness.run.session import Rig
from harness.topology.lifecycle import restore_local_side
from power.plan import OnVeto, Ordering
from power.result import TransitionRequest, Verdict


def measure_qp_scale(bench: BenchRecord, rig: Rig) -> bool:
    """One standby with spec.qps QPs over spec.qp_workers queue-replay workers; bounded by
    QPS_SECTION_TIMEOUT_S, checked before each step (a step under way is held to its own
    bounds)."""
    spec = bench.spec
    bound = spec.section_bound("qps")
    wl = spec.qp_spec()
    names = [f"bench-qps-{i}" for i in range(spec.qp_workers)]
    t0 = time.monotonic()
    workers = spawn_workers(["queue-replay"] * spec.qp_workers, wl, rig.topo.local, rig.agent,
                            rig.clients_dir, rig.log_dir, names)
    open_s = time.monotonic() - t0
    try:
        bound.check(f"the standby under {spec.qps} QPs, not started (the workers connected "
                    f"in {open_s:.1f} s)")
        req = TransitionRequest(BENCH_TRANSITION, Ordering.CLIENTS_FIRST, spec.hold_ms,
                                OnVeto.FORCE)
        t1 = time.monotonic()
        res = summary_without_ledgers(run_round(rig.shim, rig.agent, workers, req,
                                                probe=False))
        round_s = time.monotonic() - t1
    finally:
        for w in workers:
            w.close()
    restore_local_side(rig.cfg)
    clients = res["clients"]
    total = sum(sum(c["counts"].values()) for c in clients)
    unaccounted = sum(len(c["unaccounted"]) for c in clients)
    crashed = [c["client"] for c in clients if c["crashed"]]
    opened = [e for c in clients for e in c["events"] if e["event"] == "opened"]
    parts = cycle_parts(res)
    rc = spread([e["connect_ms"] for e in opened if e.get("generation", 1) > 1])
    verdict = res["transition"]["verdict"]
    ok = (unaccounted == 0 and not crashed and res["ok"]
          and Verdict(verdict) in (Verdict.COMPLETED, Verdict.FORCED))
    rec: dict[str, Any] = {
        "qps": spec.qps, "workers": spec.qp_workers, "qps_per_worker": wl.qps,
        "requests": total, "unaccounted": unaccounted, "crashed": crashed,
        "verdict": verdict, "open_s": round(open_s, 2),
        "round_s": round(round_s, 2), "parts_ms": parts,
        "reconnect_connect_ms": rc,
        "counts": {c["client"]: c["counts"] for c in clients},
        "peer_counts": {c["client"]: c["peer_counts"] for c in clients},
        "workload": wl.to_json(), "load": machine_load(), "ledger_ok": ok}
    bench.record("qps", rec)
    bench.out(f"\n{spec.qps} QPs: {spec.qp_workers} workers x {wl.qps} QPs, standby "
              f"{verdict}: first connect {open_s:.1f} s; shim transition "
              f"{parts.get('shim_total', 0) / 1000:.1f} s; each worker's reconnect of its "
              f"{wl.qps} QPs {rc.get('median', 0) / 1000:.1f} s median ("
              f"{rc.get('max', 0) / 1000:.1f} s max); whole (notice -> last first ok) "
              f"{parts.get('whole', 0) / 1000:.1f} s; ledger: {total} requests, "
              f"{unaccounted} unaccounted{', crashed: ' + ', '.join(crashed) if crashed else ''}")
    return ok

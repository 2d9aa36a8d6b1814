"""Stress cycles per minute: a short `rxe-power stress` in the bench's results folder."""

from __future__ import annotations

import time

from harness.core.printer import NULL
from harness.run.bench.record import BenchRecord, machine_load
from harness.run.bench.series import spread
from harness.run.lanes import parse_policies
from harness.run.resultsfile import RecordKind, read_results
from harness.run.stress import StressSpec, run_stress
from harness.run.stress_checks import CycleOutcome
from harness.topology.config import TopologyConfig


def measure_stress_rate(bench: BenchRecord, cfg: TopologyConfig) -> bool:
    """A short `rxe-power stress` (the suite's stress: graceful + queue-replay, 40
    requests at 60/s each, standby); cycles per minute over its wall time. Bounded by
    STRESS_SECTION_TIMEOUT_S per cycle, checked after each (a cycle under way is held to
    its own bounds)."""
    spec = StressSpec(cycles=bench.spec.stress_cycles,
                      policies=parse_policies(("graceful", "queue-replay")), count=40).validate()
    bound = bench.spec.section_bound("stress")
    out_dir = bench.out_dir / "stress"

    def after_cycle(outcome: CycleOutcome, failed: int, total: int) -> None:
        if outcome.cycle < total:
            bound.check(f"stress cycles {outcome.cycle + 1}..{total}, not started "
                        f"({failed} of {outcome.cycle} failed so far)")

    t0 = time.monotonic()
    code = run_stress(spec, cfg, out_dir, after_cycle, out=NULL)
    wall = time.monotonic() - t0
    cycles = read_results(out_dir / "results.jsonl").of_kind(RecordKind.CYCLE)
    secs = [c.get("seconds", 0.0) for c in cycles]
    cycle_s, transition_ms = spread(secs), spread([c.get("transition_ms") or 0.0
                                                  for c in cycles])
    rec = {"cycles": len(cycles), "failed": sum(1 for c in cycles if not c["ok"]),
           "wall_s": round(wall, 2), "cycles_per_min": round(60 * len(cycles) / wall, 2),
           "cycle_s": cycle_s, "transition_ms": transition_ms,
           "spec": spec.to_json(), "load": machine_load()}
    bench.record("stress", rec)
    bench.out(f"\nstress: {rec['cycles']} standby cycles ({rec['failed']} failed) in "
              f"{wall:.1f} s: {rec['cycles_per_min']} cycles/min; a cycle "
              f"{cycle_s.get('median', 0):.2f} s median, its transition "
              f"{transition_ms.get('median', 0):.0f} ms median")
    return code == 0

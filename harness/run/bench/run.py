"""`rxe-power bench`'s run: its sections in order on one run session, bench.json
written as the figures come, the targets and the load at the end."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from harness.run.bench.blockio_vs_fio import measure_blockio
from harness.run.bench.client_vs_perftest import measure_latency, measure_throughput
from harness.run.bench.qp_scale import measure_qp_scale
from harness.run.bench.record import (
    BenchRecord,
    header_line,
    load_text,
    machine_load,
    target_lines,
    targets,
)
from harness.run.bench.spec import BenchSpec
from harness.run.bench.standby_cycle import measure_standby_cycles
from harness.run.bench.stress_rate import measure_stress_rate
from harness.run.session import RunSession
from harness.system.provenance_text import describe
from harness.topology.config import TopologyConfig


def run_bench(spec: BenchSpec, cfg: TopologyConfig, out_dir: Path,
              log: Callable[[str], None] = print) -> int:
    """Run the sections of `spec`; 0 when every ledger held (figures are figures: a missed
    target is reported, not an error), 1 otherwise."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = BenchRecord(spec, out_dir, log)
    bench.results = {"spec": spec.to_json(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "kernel": os.uname().release, "load_start": machine_load()}
    ok = True
    with RunSession(cfg, out_dir) as session:
        bench.results["topology"] = session.topo.to_json()
        bench.results["provenance"] = session.provenance.to_json()
        log("\n".join(describe(session.provenance)))
        try:
            log(header_line(bench.results))
            with session.rig(shim=False) as rig:
                if bench.section("throughput"):
                    ok &= measure_throughput(bench, rig)
                if bench.section("latency"):
                    ok &= measure_latency(bench, rig)
                if bench.section("cycle") or bench.section("qps"):
                    rig.open_shim()  # only now: its event reader does not run during the above
                    if bench.section("cycle"):
                        ok &= measure_standby_cycles(bench, rig)
                    if bench.section("qps"):
                        ok &= measure_qp_scale(bench, rig)
            if bench.section("stress"):  # its own session: the topology is still up
                ok &= measure_stress_rate(bench, cfg)
            if bench.section("blockio"):  # a kernel client: no rig of ours holds rxe0
                ok &= measure_blockio(bench, cfg)
        finally:
            bench.results["load_end"] = machine_load()
            bench.results["targets"] = targets(bench.results)
            bench.write()
    log("")
    for line in target_lines(bench.results["targets"]):
        log(line)
    log(f"\nload at the end: {load_text(bench.results['load_end'])}")
    log(f"results: {bench.path}")
    return 0 if ok else 1

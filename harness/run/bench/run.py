"""`rxe-power bench`'s run: its sections in order on one run session, bench.json
written as the figures come, the targets and the load at the end."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from harness.core.errors import BoundExceeded
from harness.core.printer import Printer
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
from harness.run.bench.spec import BENCH_TRANSITION, TRANSITION_SECTIONS, BenchSpec
from harness.run.bench.standby_cycle import measure_standby_cycles
from harness.run.bench.stress_rate import measure_stress_rate
from harness.run.session import RunSession
from harness.system.provenance_text import describe
from harness.topology.config import TopologyConfig
from harness.topology.lifecycle import restore_local_side


def run_section(bench: BenchRecord, name: str, measure: Callable[[], bool],
                cfg: TopologyConfig | None = None) -> bool:
    """One section; a bound that fired in it (its own ..._SECTION_TIMEOUT_S or one of its
    steps') fails the section with what it was waiting for, and the bench goes on with the
    next section (with `cfg`: once the local side is restored, as after any cycle)."""
    try:
        return measure()
    except BoundExceeded as exc:
        bench.results.setdefault("failed_sections", {})[name] = exc.problem
        bench.write()
        bench.out(f"\n{name}: FAILED: {exc.problem}")
        if cfg is not None:
            restore_local_side(cfg)
        return False


def run_bench(spec: BenchSpec, cfg: TopologyConfig, out_dir: Path,
              *, out: Printer) -> int:
    """Run the sections of `spec`; 0 when every run held (no error anywhere, every ledger
    whole, no bound fired: figures are figures, a missed target is reported, not an
    error), 1 otherwise."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = BenchRecord(spec, out_dir, out)
    bench.results = {"spec": spec.to_json(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "kernel": os.uname().release, "load_start": machine_load()}
    ok = True
    makes = (BENCH_TRANSITION,) if TRANSITION_SECTIONS & set(spec.sections) else ()
    with RunSession(cfg, out_dir, transitions=makes) as session:
        bench.results["topology"] = session.topo.to_json()
        bench.results["provenance"] = session.provenance.to_json()
        out("\n".join(describe(session.provenance)))
        try:
            out(header_line(bench.results))
            with session.rig(shim=False) as rig:
                if bench.section("throughput"):
                    ok &= run_section(bench, "throughput",
                                      lambda: measure_throughput(bench, rig))
                if bench.section("latency"):
                    ok &= run_section(bench, "latency", lambda: measure_latency(bench, rig))
                if bench.section("cycle") or bench.section("qps"):
                    rig.open_shim()  # only now: its event reader does not run during the above
                    if bench.section("cycle"):
                        ok &= run_section(bench, "cycle",
                                          lambda: measure_standby_cycles(bench, rig), cfg)
                    if bench.section("qps"):
                        ok &= run_section(bench, "qps", lambda: measure_qp_scale(bench, rig),
                                          cfg)
            if bench.section("stress"):  # its own session: the topology is still up
                ok &= run_section(bench, "stress", lambda: measure_stress_rate(bench, cfg), cfg)
            if bench.section("blockio"):  # a kernel client: no rig of ours holds rxe0
                ok &= run_section(bench, "blockio", lambda: measure_blockio(bench, cfg))
        finally:
            bench.results["load_end"] = machine_load()
            bench.results["targets"] = targets(bench.results)
            bench.write()
    out("")
    out("every run held: no errors, every ledger whole, no bound fired" if ok else
        "FAILED: a run had an error or a bound fired (see the FAILED lines above and "
        "bench.json); its figures are left out")
    for line in target_lines(bench.results["targets"]):
        out(line)
    out(f"\nload at the end: {load_text(bench.results['load_end'])}")
    out(f"results: {bench.path}")
    return 0 if ok else 1

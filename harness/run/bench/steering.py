"""What receive packet steering on the topology's veths does to rxe's retries: the bench's
4 KiB SEND harness run (8,000 messages at queue depth 64), with steering and without,
interleaved (on, off, off, on, ...), rxe's own counters (hw_counters of both devices)
read around each run: out-of-sequence packets, duplicates, sequence NAKs, retries, RNR
NAKs, with the run's throughput and verdict.

    python -m harness.run.bench.steering [--runs 5] [--json PATH]     (as root, rxe)

The topology is built if none is up (and removed after, if built here); steering is put
back on at the end (the topology's default, harness.topology.netdevs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness.core.files import atomic_write
from harness.core.printer import STDOUT, Printer
from harness.run.bench.client_vs_perftest import run_harness_client
from harness.run.bench.provenance import started
from harness.run.bench.spec import BenchSpec
from harness.run.session import RunSession
from harness.system.network import steer_flows
from harness.topology.config import TopologyConfig

SIZE = 4096
COUNTERS = Path("/sys/class/infiniband")
KEYS = ("out_of_seq_request", "duplicate_request", "rcvd_seq_err", "completer_retry_err",
        "send_rnr_err", "rcvd_rnr_err")


def counters(dev: str) -> dict[str, int]:
    d = COUNTERS / dev / "ports" / "1" / "hw_counters"
    return {p.name: int(p.read_text()) for p in sorted(d.iterdir())} if d.is_dir() else {}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def netdevs(cfg: TopologyConfig) -> list[str]:
    return [n for which in ("local", "peer")
            for n in (cfg.side(which).netdev, cfg.side(which).switch_port)]


def main(argv: list[str] | None = None, out: Printer = STDOUT) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.run.bench.steering")
    p.add_argument("--runs", type=int, default=5, help="runs of each kind (>= 3)")
    p.add_argument("--json", type=Path, help="write the results file here")
    p.add_argument("--out", type=Path, default=Path("results/steering"))
    args = p.parse_args(argv)
    if args.runs < 3:
        p.error("--runs must be >= 3")
    begun = started("harness.run.bench.steering",
                    list(argv if argv is not None else sys.argv[1:]))
    cfg = TopologyConfig.from_settings({})
    spec = BenchSpec(sizes=(SIZE,)).validate()
    wl = spec.throughput_spec("SEND", SIZE)
    runs: list[dict[str, Any]] = []
    seen: list[tuple[bool, float, bool, dict[str, int]]] = []  # on, MB/s, failed, counters
    with RunSession(cfg, args.out) as session, session.rig(shim=False) as rig:
        prov = session.provenance
        topo = rig.topo
        try:
            for i in range(args.runs):
                for on in ((True, False) if i % 2 == 0 else (False, True)):
                    for n in netdevs(cfg):
                        steer_flows(n, on)
                    c0, p0 = counters(topo.local.dev), counters(topo.peer.dev)
                    hr = run_harness_client(rig, wl, f"steering-{len(runs)}",
                                            spec.section_bound("throughput"))
                    c1, p1 = counters(topo.local.dev), counters(topo.peer.dev)
                    run = {"index": len(runs), "steering": on, "mib_per_s": hr.mib_per_s,
                           "failure": hr.failure, "counts": hr.counts,
                           "local": delta(c0, c1), "peer": delta(p0, p1)}
                    runs.append(run)
                    both = {**delta(c0, c1), **delta(p0, p1)}
                    seen.append((on, hr.mib_per_s, hr.failure is not None, both))
                    out(f"run {len(runs)} steering {'on ' if on else 'off'}: "
                        f"{hr.mib_per_s} MB/s, {hr.failure or 'held'}; "
                        + ", ".join(f"{k} {both.get(k, 0)}" for k in KEYS))
        finally:
            for n in netdevs(cfg):
                steer_flows(n, True)
    summary: dict[str, Any] = {}
    for on in (True, False):
        rs = [r for r in seen if r[0] is on]
        figures = {"mib_per_s": [r[1] for r in rs],
                   **{k: [float(r[3].get(k, 0)) for r in rs] for k in KEYS}}
        summary["on" if on else "off"] = {
            "runs": len(rs), "failed": sum(1 for r in rs if r[2]),
            **{k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
               for k, v in figures.items()}}
    out(json.dumps(summary, indent=1))
    if args.json:
        doc = {"kind": "rxe-steering", **begun, "finished": time.strftime(
                   "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "provenance": prov.to_json(),
               "workload": wl.to_json(), "summary": summary, "runs": runs}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, json.dumps(doc, indent=1) + "\n")
        out(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

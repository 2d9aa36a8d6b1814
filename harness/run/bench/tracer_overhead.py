"""The verbs tracer's overhead: `ib_send_bw` 4 KiB rxe0 -> rxe1, untraced and traced (both
ends), interleaved with the order alternated (traced, untraced, untraced, traced, ...),
RUNS of each; medians, spread (min, max, quartiles), the ratio of the medians and the
ratio within each adjacent pair (goal: traced / untraced >= GOAL). Every traced run's
logs are counted: a run the tracer did not record is an error, not a figure.

    python -m harness.run.bench.tracer_overhead [--runs 9] [--iters 10000] [--json PATH]
                                                [--hot-paths-only]

First the tracer's hot paths alone (build/tracer/trace_hotpath: the tracer's code over a
fake provider, nanoseconds per traced post and poll and per clock read), then the runs. It
builds the rxe topology if none is up (and removes what it built); in the VM:
`rxe-power vm -- python -m harness.run.bench.tracer_overhead --json ...`. The results
file records what made it (command, date, commit, kernel, clock source, module, perftest).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clients.tracer.traced import (
    ENV_DIR,
    make_trace_dir,
    recorded_work_dir,
    traced_env,
    tracer_library,
)
from harness.core.errors import BoundExceeded, RxePowerError
from harness.core.files import atomic_write
from harness.core.printer import NULL, STDOUT, Printer
from harness.core.proc import kill_bounded, run_bounded
from harness.run.bench.failures import perftest_failure
from harness.run.bench.perftest import BW_COLUMNS, RATE_COLUMN, parse_perftest
from harness.run.bench.provenance import file_sha256, started
from harness.run.bench.series import percentile
from harness.run.session import RunSession
from harness.system.provenance_collect import collect
from harness.system.tcp_ports import free_tcp_port, tcp_listening
from harness.topology.config import Topology, TopologyConfig

GOAL = 0.9
MIN_RUNS = 7  # of each kind: fewer make no honest median under TCG's noise
RUN_TIMEOUT_S = 120.0  # one ib_send_bw client to its end
LISTEN_TIMEOUT_S = 30.0  # the server's port open
SERVER_EXIT_TIMEOUT_S = 30.0  # the server, once its client is done
POLL_S = 0.05
TX_DEPTH = 16
TRACE_REC_BYTES = 64  # clients/tracer/rxe_power_trace.h: TR_REC_SIZE (the header is one)
HOTPATH_CALLS = 200_000  # calls of each kind timed by trace_hotpath
HOTPATH_TIMEOUT_S = 120.0  # its run (about 4 s under TCG)


@dataclass
class Run:
    index: int  # position in the interleaved sequence, from 0
    traced: bool
    mib_per_s: float
    msg_per_s: float
    seconds: float  # the client's wall time, start to exit
    logs: int = 0  # tracer logs written (traced runs: one per process, server and client)
    records: int = 0  # records in them (posts, completions, object events)

    @property
    def valid(self) -> bool:
        """perftest 4.5 sometimes prints 0.00 MB/s for a run that completed (about one run
        in ten under TCG): such a figure is not a measurement and is left out (counted)."""
        return self.mib_per_s > 0


def order(runs: int) -> list[bool]:
    """traced, untraced, untraced, traced, ... (True: traced): each kind goes first in
    every other pair, so a drift of the machine over the session weighs on both alike."""
    out: list[bool] = []
    for i in range(runs):
        out += [True, False] if i % 2 == 0 else [False, True]
    return out


def count_logs(trace: Path) -> tuple[int, int]:
    logs = sorted(trace.glob("rxe-power-trace.*.bin"))
    return len(logs), sum(max(0, f.stat().st_size // TRACE_REC_BYTES - 1) for f in logs)


def one_run(topo: Topology, iters: int, size: int, index: int, trace: Path | None) -> Run:
    port = free_tcp_port()
    env = traced_env(make_trace_dir(trace)) if trace else None
    common = ["-F", "-s", str(size), "-t", str(TX_DEPTH), "-n", str(iters), "-p", str(port)]
    cli_argv = ["ib_send_bw", "-d", topo.local.dev, "-x", str(topo.local.gid_index), *common,
                topo.peer.addr]
    srv = subprocess.Popen(["ib_send_bw", "-d", topo.peer.dev, "-x", str(topo.peer.gid_index),
                            *common], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not tcp_listening(port):
            if time.monotonic() > deadline or srv.poll() is not None:
                raise BoundExceeded("ib_send_bw server listening", "LISTEN_TIMEOUT_S",
                                    LISTEN_TIMEOUT_S, f"its port {port} (server exit "
                                    f"{srv.poll()})")
            time.sleep(POLL_S)  # polling interval of the bounded wait above
        t0 = time.monotonic()
        cli = run_bounded(cli_argv, RUN_TIMEOUT_S, step=shlex.join(cli_argv),
                          bound_name="RUN_TIMEOUT_S", outstanding="the client had not exited",
                          env=env)
        seconds = time.monotonic() - t0
        with contextlib.suppress(subprocess.TimeoutExpired):  # killed below
            srv.wait(SERVER_EXIT_TIMEOUT_S)
    finally:
        kill_bounded(srv)
    text = cli.stdout + cli.stderr
    why = perftest_failure(text, cli.returncode)
    if why:
        raise RxePowerError(f"run {index} ({'traced' if trace else 'untraced'}): {why}",
                            "see the perftest output; is the topology up?")
    row = parse_perftest(text, BW_COLUMNS)[-1]
    run = Run(index, trace is not None, row["BW average[MB/sec]"], row[RATE_COLUMN] * 1e6,
              round(seconds, 3))
    if trace is not None:
        run.logs, run.records = count_logs(trace)
        if run.logs < 2 or run.records < iters:
            raise RxePowerError(f"run {index} was to be traced but the tracer wrote "
                                f"{run.logs} logs with {run.records} records for {iters} "
                                "messages", "is build/tracer/librxe_power_trace.so built "
                                "and loadable (ci/build-tracer.sh)?")
    return run


def hot_paths(work: Path) -> dict[str, Any]:
    """trace_hotpath's figures (ns per call), its log in a private directory under `work`."""
    prog = tracer_library().parent / "trace_hotpath"
    if not prog.is_file():
        raise RxePowerError(f"{prog} is not built", "run: bash ci/build-tracer.sh")
    trace = make_trace_dir(work / "hotpath")
    res = run_bounded([str(prog), str(HOTPATH_CALLS)], HOTPATH_TIMEOUT_S,
                      step=f"{prog} {HOTPATH_CALLS}", bound_name="HOTPATH_TIMEOUT_S",
                      outstanding="it had not exited",
                      env={**os.environ, ENV_DIR: str(trace)})  # (its own copy: no preload)
    for f in trace.iterdir():
        f.unlink()
    if res.returncode != 0:
        raise RxePowerError(f"{prog} exited {res.returncode}: {res.stderr.strip()[-300:]}",
                            "run it by hand to see why")
    figures: dict[str, Any] = json.loads(res.stdout)
    return figures


def spread3(values: list[float]) -> dict[str, float]:
    """median, min, max and quartiles to 3 decimals (ratios; series.spread rounds to 0.1)."""
    if not values:
        return {}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "q1": round(percentile(values, 25), 3),
            "q3": round(percentile(values, 75), 3), "n": len(values)}


def summarize(runs: list[Run]) -> dict[str, Any]:
    plain = [r.mib_per_s for r in runs if not r.traced and r.valid]
    traced = [r.mib_per_s for r in runs if r.traced and r.valid]
    pairs = [(runs[i], runs[i + 1]) for i in range(0, len(runs) - 1, 2)]
    pair_ratios = [(a if a.traced else b).mib_per_s / (b if a.traced else a).mib_per_s
                   for a, b in pairs if a.valid and b.valid]
    ratio = round(statistics.median(traced) / statistics.median(plain), 3) \
        if plain and traced else None
    return {"untraced_mib_per_s": spread3(plain), "traced_mib_per_s": spread3(traced),
            "ratio_of_medians": ratio, "pair_ratio": spread3(pair_ratios),
            "left_out_zero_rate": sum(1 for r in runs if not r.valid), "goal": GOAL,
            "met": ratio is not None and ratio >= GOAL}


def measure(topo: Topology, runs: int, iters: int, size: int,
            out: Printer = NULL) -> list[Run]:
    done: list[Run] = []
    with recorded_work_dir("trace-bench") as work:
        for i, traced in enumerate(order(runs)):
            trace = work / f"run{i}" if traced else None
            run = one_run(topo, iters, size, i, trace)
            done.append(run)
            out(f"run {i + 1}/{2 * runs} {'traced  ' if traced else 'untraced'}: "
                f"{run.mib_per_s:.2f} MB/s, {run.msg_per_s:.0f} msg/s, {run.seconds:.2f} s"
                + (f", {run.records} records in {run.logs} logs" if traced else ""))
            if trace is not None:  # its records are counted: free the guest's memory
                for f in trace.iterdir():
                    f.unlink()
    return done


def main(argv: list[str] | None = None, out: Printer = STDOUT) -> int:
    """`out`: how this program speaks (its edge: made here, handed to measure)."""
    p = argparse.ArgumentParser(prog="python -m harness.run.bench.tracer_overhead")
    p.add_argument("--runs", type=int, default=9, help=f"runs of each kind (>= {MIN_RUNS})")
    p.add_argument("--iters", type=int, default=10000, help="messages per run")
    p.add_argument("--size", type=int, default=4096, help="message size in bytes")
    p.add_argument("--json", type=Path, help="write the results file here")
    p.add_argument("--out", type=Path, default=Path("results/tracer-overhead"),
                   help="the run's folder (topology logs)")
    p.add_argument("--hot-paths-only", action="store_true",
                   help="time the tracer's hot paths only (no rxe, no perftest)")
    args = p.parse_args(argv)
    if args.runs < MIN_RUNS or not 100 <= args.iters <= 1_000_000 or args.size < 1:
        p.error(f"--runs must be >= {MIN_RUNS}, --iters 100..1000000, --size >= 1")
    begun = started("harness.run.bench.tracer_overhead",
                    list(argv if argv is not None else sys.argv[1:]))
    with recorded_work_dir("trace-hotpath") as work:
        hot = hot_paths(work)
    out("tracer hot paths over a fake provider, ns per call: "
        + ", ".join(f"{k} {v}" for k, v in hot.items()))
    if args.hot_paths_only:
        doc = {"kind": "tracer-hot-paths", **begun, "hot_paths": hot,
               "provenance": collect().to_json(),
               "tracer_sha256": file_sha256(tracer_library())}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.json, json.dumps(doc, indent=1) + "\n")
            out(f"results: {args.json}")
        return 0
    with RunSession(TopologyConfig.from_settings({}), args.out) as session:
        topo = session.topo
        prov = session.provenance
        runs = measure(topo, args.runs, args.iters, args.size, out)
    summary = summarize(runs)
    summary["records_per_message"] = round(statistics.median(
        r.records / args.iters for r in runs if r.traced), 3)
    u, t = summary["untraced_mib_per_s"], summary["traced_mib_per_s"]
    out(f"ib_send_bw {args.size} B x {args.iters}, -t {TX_DEPTH}, both ends traced; "
        f"{args.runs} runs of each, interleaved (T U U T ...):\n"
        f"  untraced median {u['median']} MB/s (min {u['min']}, max {u['max']}, IQR "
        f"{u['q1']}-{u['q3']}, n {u['n']})\n"
        f"  traced   median {t['median']} MB/s (min {t['min']}, max {t['max']}, IQR "
        f"{t['q1']}-{t['q3']}, n {t['n']})\n"
        f"  ratio of the medians {summary['ratio_of_medians']} (goal >= {GOAL}: "
        f"{'met' if summary['met'] else 'NOT met'}); per pair: median "
        f"{summary['pair_ratio'].get('median')} (min {summary['pair_ratio'].get('min')}, "
        f"max {summary['pair_ratio'].get('max')}); zero-rate runs left out: "
        f"{summary['left_out_zero_rate']}; tracer records per message (both ends) "
        f"{summary['records_per_message']}")
    if args.json:
        doc = {"kind": "tracer-overhead", **begun, "finished": time.strftime(
                   "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_end": list(os.getloadavg()),
               "provenance": prov.to_json(), "tracer_sha256": file_sha256(tracer_library()),
               "topology": topo.to_json(), "tool": "ib_send_bw", "size": args.size,
               "iters": args.iters,
               "tx_depth": TX_DEPTH, "runs_each": args.runs, "both_ends_traced": True,
               "hot_paths": hot, "summary": summary, "runs": [asdict(r) for r in runs]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, json.dumps(doc, indent=1) + "\n")
        out(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

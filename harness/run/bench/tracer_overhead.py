"""The verbs tracer's overhead: ib_send_bw 4 KiB rxe0 -> rxe1, untraced and traced
(both ends), interleaved, RUNS times each; the ratio of the medians (goal >= 0.9).

    python -m harness.run.bench.tracer_overhead [--runs 5] [--iters 20000]     (needs the topology)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clients.traced import make_trace_dir, recorded_work_dir, traced_env
from harness.core.errors import BoundExceeded, RxePowerError
from harness.run.bench.perftest import BW_COLUMNS, parse_perftest
from harness.system.provenance_collect import collect
from harness.system.tcp_ports import free_tcp_port, tcp_listening
from harness.topology import devices
from harness.topology.config import Topology, TopologyConfig

RUN_TIMEOUT_S = 120.0  # one ib_send_bw pair to its end
LISTEN_TIMEOUT_S = 30.0  # the server's port open
POLL_S = 0.05


@dataclass(frozen=True)
class BenchResult:
    iters: int
    size: int
    plain_mb_s: list[float]
    traced_mb_s: list[float]

    @staticmethod
    def valid(values: list[float]) -> list[float]:
        """perftest 4.5 sometimes prints 0.00 MB/s for a run that completed (seen once in 10
        runs under TCG): such a figure is not a measurement and is left out."""
        return [v for v in values if v > 0]

    @property
    def ratio(self) -> float:
        return statistics.median(self.valid(self.traced_mb_s)) / \
            statistics.median(self.valid(self.plain_mb_s))


def one_run(topo: Topology, iters: int, size: int, trace: Path | None,
            port: int) -> float:
    env = traced_env(make_trace_dir(trace)) if trace else None
    common = ["-F", "-s", str(size), "-t", "16", "-n", str(iters), "-p", str(port)]
    srv = subprocess.Popen(["ib_send_bw", "-d", topo.peer.dev, "-x", str(topo.peer.gid_index),
                            *common], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not tcp_listening(port):
            if time.monotonic() > deadline or srv.poll() is not None:
                raise BoundExceeded("ib_send_bw server listening", "LISTEN_TIMEOUT_S",
                                    LISTEN_TIMEOUT_S, f"server exit {srv.poll()}")
            time.sleep(POLL_S)  # polling interval of a bounded wait
        cli = subprocess.run(["ib_send_bw", "-d", topo.local.dev, "-x",
                              str(topo.local.gid_index), *common, topo.peer.addr], env=env,
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                             check=False)
        if cli.returncode != 0:
            raise RxePowerError(f"ib_send_bw client exit {cli.returncode}: "
                                f"{cli.stderr[-300:]}", "see its output")
        return parse_perftest(cli.stdout, BW_COLUMNS)[-1]["BW average[MB/sec]"]
    finally:
        if srv.poll() is None:
            try:
                srv.wait(RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()


def bench(topo: Topology, runs: int, iters: int, size: int = 4096) -> BenchResult:
    plain: list[float] = []
    traced: list[float] = []
    with recorded_work_dir("trace-bench") as work:
        for i in range(runs):
            plain.append(one_run(topo, iters, size, None, free_tcp_port()))
            traced.append(one_run(topo, iters, size, work / f"run{i}", free_tcp_port()))
            print(f"run {i + 1}/{runs}: untraced {plain[-1]:.2f} MB/s, traced "
                  f"{traced[-1]:.2f} MB/s", flush=True)
    return BenchResult(iters, size, plain, traced)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.run.bench.tracer_overhead")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    topo = devices.discover(TopologyConfig.from_settings({}))
    res = bench(topo, args.runs, args.iters)
    plain, traced = res.valid(res.plain_mb_s), res.valid(res.traced_mb_s)
    print(f"ib_send_bw {res.size} B x {res.iters}: median untraced "
          f"{statistics.median(plain):.2f} MB/s ({len(plain)} valid runs, range "
          f"{min(plain):.2f}-{max(plain):.2f}), traced {statistics.median(traced):.2f} MB/s "
          f"({len(traced)} valid, range {min(traced):.2f}-{max(traced):.2f}), ratio "
          f"{res.ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps({**asdict(res), "ratio": res.ratio,
                                         "provenance": collect().to_json()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

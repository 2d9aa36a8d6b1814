"""`rxe-power bench`: its options and its job (harness.cli.invocation)."""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.cli.invocation import Invocation, Job, invoke
from harness.cli.launch import Subcommands, results_folder, split_csv
from harness.cli.operations import run_invocation
from harness.cli.peer_option import add_peer_option
from harness.cli.removal import add_removal_option
from harness.core import settings
from harness.core.errors import SettingError
from harness.core.files import atomic_write
from harness.core.printer import Printer
from harness.core.settings import SETTINGS
from harness.run.bench.record import BENCH_FILE, host_load
from harness.run.bench.spec import BENCH_VM_TIMEOUT_S, SECTIONS, BenchSpec
from harness.topology.config import TopologyConfig


def add_parser(subparsers: Subcommands) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="the harness client against perftest on the same "
                              "rxe pair; the standby cycle part by part; stress rate; "
                              "1,024 QPs")
    p.add_argument("--sizes", default="64,4096,65536", help="message sizes, comma-separated")
    p.add_argument("--queue-depth", type=int, default=BenchSpec.queue_depth,
                   help="outstanding requests (throughput; perftest -t)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the message counts "
                   "(20000 at <= 256 B, 8000 at <= 8 KiB, else 2000; 0.05 for a quick look)")
    p.add_argument("--lat-iters", type=int, default=BenchSpec.lat_iters,
                   help="requests per latency run")
    p.add_argument("--cycles", type=int, default=BenchSpec.cycles,
                   help="standby cycles for the breakdown")
    p.add_argument("--stress-cycles", type=int, default=BenchSpec.stress_cycles,
                   help="cycles of the stress-rate run")
    p.add_argument("--qps", type=int, default=BenchSpec.qps, help="QPs in the scale run")
    p.add_argument("--qp-workers", type=int, default=BenchSpec.qp_workers,
                   help="workers the scale run's QPs are spread over")
    p.add_argument("--hold-ms", type=int, default=BenchSpec.hold_ms, help="standby hold")
    p.add_argument("--only", action="append", help=f"sections: {','.join(SECTIONS)} "
                   "(default all)")
    p.add_argument("--out", help="the results folder (default results/bench-TIMESTAMP)")
    p.add_argument("--mode", default=None,
                   help=SETTINGS["rxe-mode"].help + " (env RXE_POWER_MODE)")
    add_removal_option(p)
    add_peer_option(p)
    p.add_argument("--timeout-s", type=float, default=BENCH_VM_TIMEOUT_S,
                   help="bound on the whole VM run, in seconds")
    p.set_defaults(func=cmd_bench)
    return p


def bench_spec(args: argparse.Namespace) -> BenchSpec:
    try:
        sizes = tuple(int(s) for s in split_csv([args.sizes]))
    except ValueError:
        raise SettingError(f"--sizes {args.sizes!r} is not a list of integers",
                           "e.g. --sizes 64,4096,65536") from None
    return BenchSpec(sizes, args.queue_depth, args.scale, args.lat_iters, args.cycles,
                     args.stress_cycles, args.qps, args.qp_workers, args.hold_ms,
                     split_csv(args.only) or SECTIONS).validate()


@dataclass(frozen=True)
class BenchJob(Job):
    """`bench`: its sections; in VM mode the host's load before the boot (`host`, measured
    by host_part: the guest's record names it) and after it (added to bench.json here)."""

    KIND = "bench"
    spec: BenchSpec
    host: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.to_json(), "host": self.host}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchJob:
        host = d["host"]
        if host is not None and not isinstance(host, dict):
            raise TypeError("host is not a JSON object")
        return cls(BenchSpec.from_json(d["spec"]).validate(), host)

    def promised(self, inv: Invocation) -> tuple[Path, ...]:
        return (inv.results / BENCH_FILE,)

    def run_here(self, inv: Invocation, out: Printer) -> int:
        # imported here: the bench's modules are the heaviest of the CLI (most commands
        # never need them, and every harness child process starts the CLI)
        from harness.run.bench.run import run_bench

        if self.host is not None:  # for this process's record (machine_load)
            settings.export_bench_host(self.host)
        return run_bench(self.spec, TopologyConfig.from_settings(), inv.results, out=out)

    def host_part(self, inv: Invocation, out: Printer) -> tuple[Job | None, int | None]:
        host = host_load()
        return replace(self, host={**host, "other_qemu_pids": host["qemu_pids"]}), None

    def after_guest(self, inv: Invocation, host_code: int | None, guest_code: int,
                    out: Printer) -> int:
        path = inv.results / BENCH_FILE
        if path.exists():  # the host once the guest was done
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                data["host_after"] = host_load()
                atomic_write(path, json.dumps(data, indent=1, default=str))
        return guest_code


def cmd_bench(args: argparse.Namespace, out: Printer) -> int:
    spec = bench_spec(args)  # bad values fail here, before any VM boots
    inv = invoke(args, BenchJob(spec), results_folder(args, "bench"), out,
                 f"sections {', '.join(spec.sections)}")
    return run_invocation(inv, out)

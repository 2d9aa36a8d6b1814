"""The topology by hand: `check` (bring it up and report a traffic check), `cleanup`
(what a killed run left), `setup`, `teardown` and `show` (on this kernel, as root).
`doctor` has its own module (harness.cli.doctor)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cli import launch
from harness.cli.invocation import Invocation, Job, invoke
from harness.cli.launch import SHORT_COMMAND_VM_TIMEOUT_S, Subcommands
from harness.cli.operations import run_invocation
from harness.cli.removal import add_removal_option
from harness.core.files import atomic_write
from harness.core.printer import NULL, Printer
from harness.peer import traffic
from harness.peer.controller import PeerAgent
from harness.system.provenance_collect import collect
from harness.system.provenance_text import describe
from harness.topology import command_line as topology_command_line
from harness.topology import lifecycle, pingpong
from harness.topology.cleanup import cleanup
from harness.topology.config import TopologyConfig

CHECK_REPORT = "run.json"  # check's report, in the results folder
TOPOLOGY_ACTIONS = {"setup": "up", "teardown": "down", "show": "show"}


def add_check_parser(subparsers: Subcommands, mode_help: str) -> None:
    p = subparsers.add_parser("check", help="bring up rxe0 <-> rxe1 and report a traffic check")
    p.add_argument("--mode", default=None, help=mode_help)
    add_removal_option(p)
    p.add_argument("--timeout-s", type=float, default=SHORT_COMMAND_VM_TIMEOUT_S,
                   help="bound on the whole VM run")
    p.set_defaults(func=cmd_check)


def add_topology_parsers(subparsers: Subcommands) -> None:
    subparsers.add_parser("cleanup", help="remove what a killed run left: its processes, "
                          "blocked deletes, and the topology (refused while a run is active; "
                          "repaired instead if a live test session owns it)",
                          ).set_defaults(func=cmd_cleanup)
    for name in TOPOLOGY_ACTIONS:
        subparsers.add_parser(name, help=f"topology {name} on this kernel").set_defaults(
            func=cmd_topology)


@dataclass(frozen=True)
class CheckJob(Job):
    """`check`: the topology up, a traffic check, its report (run.json) in RESULTS_DIR."""

    KIND = "check"
    LOG_NAME = "vm-check-console.log"
    RECORD_NAME = "check-invocation.json"

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckJob:
        return cls()

    def promised(self, inv: Invocation) -> tuple[Path, ...]:
        return (inv.results / CHECK_REPORT,)

    def run_here(self, inv: Invocation, out: Printer) -> int:
        return run_traffic_report(TopologyConfig.from_settings(), out, inv.results)


def cmd_check(args: argparse.Namespace, out: Printer) -> int:
    return run_invocation(invoke(args, CheckJob(), launch.RESULTS_DIR, out), out)


def run_traffic_report(cfg: TopologyConfig, out: Printer, results: Path) -> int:
    """Bring up the topology, check it with ibv_rc_pingpong and our own traffic, report
    (in the folder `results`: run.json, the peer's logs)."""
    t0 = time.monotonic()
    topo, built = lifecycle.setup(cfg, out)
    try:
        provenance = collect()  # what made this check (run.json's record)
        out("\n".join(describe(provenance)))
        ping = pingpong.pingpong_check(topo)
        out(f"ibv_rc_pingpong {topo.local.dev} <-> {topo.peer.dev}: {ping.iters} iterations, "
            f"{ping.usec_per_iter} usec/iter")
        results.mkdir(parents=True, exist_ok=True)
        with PeerAgent(topo.peer, log_dir=results / "logs") as agent:
            stats = traffic.run_check(topo, agent)
    finally:
        if built:
            lifecycle.teardown(out=NULL)
    out(f"\n{'operation':<12} {'messages':>9} {'bytes':>10} {'seconds':>8} {'MB/s':>7}  verdict")
    for st in stats:
        rate = st.bytes / st.seconds / 1e6 if st.seconds else 0.0
        verdict = "OK" if st.ok else f"FAIL: {'; '.join(st.errors[:3])}"
        out(f"{st.op:<12} {st.messages:>9} {st.bytes:>10} {st.seconds:>8.3f} {rate:>7.2f}  "
            f"{verdict}")
    ok = all(st.ok for st in stats)
    report = {"provenance": provenance.to_json(), "topology": topo.to_json(),
              "pingpong_usec_per_iter": ping.usec_per_iter,
              "operations": [st.to_json() for st in stats], "ok": ok,
              "seconds": time.monotonic() - t0}
    path = results / CHECK_REPORT
    atomic_write(path, json.dumps(report, indent=1))
    out(f"\n{'PASS' if ok else 'FAIL'}: traffic rxe0 <-> rxe1 across the wire; report in {path}")
    return 0 if ok else 1


def cmd_cleanup(args: argparse.Namespace, out: Printer) -> int:
    """What a killed run left (processes, blocked deletes, devices, netdevs, rules)."""
    problems = cleanup(TopologyConfig.from_settings(), out)
    for p in problems:
        out(f"not cleaned: {p}")
    if not problems:
        out("cleanup complete: nothing a dead run left remains")
    return 1 if problems else 0


def cmd_topology(args: argparse.Namespace, out: Printer) -> int:
    return topology_command_line.main([TOPOLOGY_ACTIONS[args.command]], prog="rxe-power",
                                      out=out)

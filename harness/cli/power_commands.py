"""The local HCA's power by hand: `rxe-power transition NAME` (one transition, its
result as JSON) and `rxe-power recover` (put the local side back after a veto or a
failed transition)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cli import launch
from harness.cli.invocation import Invocation, Job, invoke
from harness.cli.launch import SHORT_COMMAND_VM_TIMEOUT_S, Subcommands
from harness.cli.operations import run_invocation
from harness.cli.removal import add_removal_option
from harness.core.printer import NULL, Printer
from harness.system.provenance_collect import collect
from harness.topology import devices, lifecycle
from harness.topology.config import TopologyConfig
from power.plan import get_transition, parse_on_veto, parse_ordering
from power.render import render
from power.result import VERDICT_EXIT, TransitionRequest
from power.shim import Shim


def add_parsers(subparsers: Subcommands, mode_help: str) -> None:
    p = subparsers.add_parser("transition", help="run one power transition of the local HCA")
    p.add_argument("name", help="link-flap, standby, hibernate, surprise-removal or pm-test")
    p.add_argument("--ordering", help="clients-first or hca-first (default: the first the "
                   "transition offers)")
    p.add_argument("--hold-ms", type=int, default=None, help="how long to stay asleep")
    p.add_argument("--on-veto", default="wait", help="wait (report vetoed) or force "
                   "(terminate the holders)")
    p.add_argument("--veto-wait-s", type=float, default=5.0,
                   help="--on-veto wait: how long holders get before the sleep is vetoed")
    p.add_argument("--quiesce-timeout-s", type=float, default=5.0,
                   help="clients-first: the deadline clients get to release the device")
    p.add_argument("--pm-level", default="freezer", help="pm-test: the /sys/power/pm_test level")
    p.add_argument("--json", help="where to write the result (default "
                   "results/transition-NAME.json)")
    p.add_argument("--mode", default=None, help=mode_help)
    add_removal_option(p)
    p.add_argument("--timeout-s", type=float, default=SHORT_COMMAND_VM_TIMEOUT_S,
                   help="bound on the whole VM run")
    p.set_defaults(func=cmd_transition)
    subparsers.add_parser("recover", help="restore the local side (device, netdev, port) "
                          "after a failed or vetoed transition").set_defaults(func=cmd_recover)


@dataclass(frozen=True)
class TransitionJob(Job):
    """`transition`: one request (its values resolved), its result file (its folder is the
    results folder)."""

    KIND = "transition"
    LOG_NAME = "vm-transition-console.log"
    RECORD_NAME = "transition-invocation.json"
    request: TransitionRequest
    result: Path

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request.to_json(), "result": str(self.result)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TransitionJob:
        return cls(TransitionRequest.from_json(d["request"]).resolved(), Path(d["result"]))

    def promised(self, inv: Invocation) -> tuple[Path, ...]:
        return (self.result,)

    def run_here(self, inv: Invocation, out: Printer) -> int:
        cfg = TopologyConfig.from_settings()
        topo, built = lifecycle.setup(cfg, out=NULL)
        if built:
            out(f"built the topology for this run ({topo.local.dev} <-> {topo.peer.dev}); "
                "it is removed afterwards")
        try:
            # what made this result (written with it)
            provenance = collect(faults=(get_transition(self.request.name).fault_model,))
            with Shim(cfg, out=out) as shim:
                result = shim.run(self.request)
        finally:
            if built:
                lifecycle.teardown(out=NULL)
        out("\n".join(render(result)))
        result.write(self.result, provenance=provenance)
        out(f"result: {self.result}")
        return VERDICT_EXIT[result.verdict]


def cmd_transition(args: argparse.Namespace, out: Printer) -> int:
    req = TransitionRequest(
        args.name, parse_ordering(args.ordering) if args.ordering else None, args.hold_ms,
        parse_on_veto(args.on_veto), args.veto_wait_s, args.quiesce_timeout_s,
        args.pm_level).resolved()  # bad values fail here, before any VM boots
    path = result_path(args.json, req.name)
    inv = invoke(args, TransitionJob(req, path), path.parent, out)
    return run_invocation(inv, out)


def result_path(json_arg: str | None, name: str) -> Path:
    """Where a transition's result goes: --json, else results/transition-NAME.json."""
    return Path(json_arg) if json_arg else launch.RESULTS_DIR / f"transition-{name}.json"


def cmd_recover(args: argparse.Namespace, out: Printer) -> int:
    lifecycle.require_root("recover needs root (it re-adds the local rdma link and brings its "
                           "netdev up)", "rxe-power recover")
    cfg = TopologyConfig.from_settings()
    problems = lifecycle.restore_local_side(cfg, out)
    for p in problems:
        out(f"not restored: {p}")
    if not problems:
        topo = devices.discover(cfg)
        out(f"topology whole: {topo.local.dev} {topo.local.state}, {topo.peer.dev} "
            f"{topo.peer.state}")
    return 1 if problems else 0

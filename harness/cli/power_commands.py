"""The local HCA's power by hand: `rxe-power transition NAME` (one transition, its
result as JSON) and `rxe-power recover` (put the local side back after a veto or a
failed transition)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.launch import (
    RESULTS_DIR,
    SHORT_COMMAND_VM_TIMEOUT_S,
    Subcommands,
    launch_mode,
    run_in_guest,
)
from harness.cli.removal import add_removal_option, prepare_removal
from harness.core.printer import NULL, Printer
from harness.core.proc import python_child
from harness.core.settings import Mode
from harness.system.provenance_collect import collect
from harness.topology import devices, lifecycle
from harness.topology.config import TopologyConfig
from power.plan import parse_on_veto, parse_ordering
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


def cmd_transition(args: argparse.Namespace, out: Printer) -> int:
    req = TransitionRequest(
        args.name, parse_ordering(args.ordering) if args.ordering else None, args.hold_ms,
        parse_on_veto(args.on_veto), args.veto_wait_s, args.quiesce_timeout_s,
        args.pm_level).resolved()  # bad values fail here, before any VM boots
    mode, why = launch_mode(args)
    out(f"rxe-power transition: mode {mode.value} ({why})")
    prepare_removal(args, mode, out)
    if mode is Mode.VM:
        argv = [*python_child("harness.cli", "transition", req.name),
                "--ordering", str(req.ordering), "--hold-ms", str(req.hold_ms),
                "--on-veto", str(req.on_veto), "--veto-wait-s", str(req.veto_wait_s),
                "--quiesce-timeout-s", str(req.quiesce_timeout_s), "--pm-level", req.pm_level,
                *(["--json", args.json] if args.json else []), "--mode", "native"]
        return run_in_guest(argv, args.timeout_s, "vm-transition-console.log", out,
                            promised=(result_path(args.json, req.name),))
    cfg = TopologyConfig.from_settings()
    topo, built = lifecycle.setup(cfg, out=NULL)
    if built:
        out(f"built the topology for this run ({topo.local.dev} <-> {topo.peer.dev}); "
            "it is removed afterwards")
    try:
        provenance = collect()  # what made this result (written with it)
        with Shim(cfg, out=out) as shim:
            result = shim.run(req)
    finally:
        if built:
            lifecycle.teardown(out=NULL)
    out("\n".join(render(result)))
    path = result_path(args.json, req.name)
    result.write(path, provenance=provenance)
    out(f"result: {path}")
    return VERDICT_EXIT[result.verdict]


def result_path(json_arg: str | None, name: str) -> Path:
    """Where a transition's result goes: --json, else results/transition-NAME.json."""
    return Path(json_arg) if json_arg else RESULTS_DIR / f"transition-{name}.json"


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

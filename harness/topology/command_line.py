"""`python -m harness.topology up|down|show|verify` (ci/rxe-setup.sh, with the system
python3: standard library only) and `rxe-power setup|teardown|show`.
"""

from __future__ import annotations

import argparse
import json
import os

from harness.core.errors import RxePowerError
from harness.core.printer import STDOUT, Printer
from harness.topology.config import TopologyConfig
from harness.topology.devices import discover
from harness.topology.lifecycle import BUILD, REMOVE, require_root, setup, teardown
from harness.topology.pingpong import pingpong_check

TOPOLOGY_HELP = "Build, show, verify or remove the two-HCA rxe topology (rxe0 <-> rxe1)."


ACTION_COMMANDS = {"up": "setup", "down": "teardown", "show": "show", "verify": "verify"}
NEEDS_ROOT = {"up": BUILD, "down": REMOVE,
              "verify": "verify needs root (it runs traffic between the two HCAs)"}


def main(argv: list[str] | None = None, prog: str = "rxe-setup", out: Printer = STDOUT) -> int:
    """`prog`: how errors name the tool (rxe-power passes `rxe-power`, and its printer);
    with --json stdout carries the topology only, and the progress goes to stderr."""
    ap = argparse.ArgumentParser(prog=prog, description=TOPOLOGY_HELP)
    ap.add_argument("action", choices=["up", "down", "show", "verify"])
    ap.add_argument("--json", action="store_true", help="print the topology as JSON")
    for name in ("rxe-local-dev", "rxe-peer-dev", "rxe-local-netdev", "rxe-peer-netdev",
                 "rxe-local-addr", "rxe-peer-addr"):
        ap.add_argument(f"--{name.removeprefix('rxe-')}", dest=name)
    args = ap.parse_args(argv)
    err = out.to_stderr()
    progress = err if args.json else out
    command = f"{prog} {ACTION_COMMANDS[args.action] if prog == 'rxe-power' else args.action}"
    try:
        if args.action in NEEDS_ROOT:
            require_root(NEEDS_ROOT[args.action], command)
        cfg = TopologyConfig.from_settings(vars(args))
        if args.action == "down":
            problems = teardown(progress)
            return 1 if problems else 0
        if args.action == "up":
            topo, _ = setup(cfg, progress, keep=True)
            res = pingpong_check(topo)
            progress(f"traffic check: ibv_rc_pingpong {topo.local.dev} -> {topo.peer.dev} "
                f"{res.iters} iterations OK, {res.usec_per_iter} usec/iter")
        else:
            topo = discover(cfg)
            if args.action == "verify":
                res = pingpong_check(topo)
                progress(f"traffic check: {res.iters} iterations OK, {res.usec_per_iter} usec/iter")
        if args.json:
            out(json.dumps(topo.to_json(), indent=1))
        elif args.action == "show":
            for ep in (topo.local, topo.peer):
                out(f"{ep.dev}: {ep.netdev} {ep.addr} gid[{ep.gid_index}] {ep.gid} {ep.state}")
        return 0
    except RxePowerError as exc:
        err(f"{prog}: error: {exc}")
        if os.geteuid() != 0 and args.action == "show":
            err(f"  as root it may see more: sudo {command} (the topology is root's: "
                "rxe-power setup as root builds it)")
        return 2


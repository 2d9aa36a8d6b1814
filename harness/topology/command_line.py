"""`python -m harness.topology up|down|show|verify` (ci/rxe-setup.sh, with the system
python3: standard library only) and `rxe-power setup|teardown|show`.
"""

from __future__ import annotations

import argparse
import json
import sys

from harness.core.errors import RxePowerError
from harness.topology.config import TopologyConfig
from harness.topology.devices import discover
from harness.topology.lifecycle import setup, teardown
from harness.topology.pingpong import pingpong_check

TOPOLOGY_HELP = "Build, show, verify or remove the two-HCA rxe topology (rxe0 <-> rxe1)."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rxe-setup", description=TOPOLOGY_HELP)
    ap.add_argument("action", choices=["up", "down", "show", "verify"])
    ap.add_argument("--json", action="store_true", help="print the topology as JSON")
    for name in ("rxe-local-dev", "rxe-peer-dev", "rxe-local-netdev", "rxe-peer-netdev",
                 "rxe-local-addr", "rxe-peer-addr"):
        ap.add_argument(f"--{name.removeprefix('rxe-')}", dest=name)
    args = ap.parse_args(argv)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    try:
        cfg = TopologyConfig.from_settings(vars(args))
        if args.action == "down":
            problems = teardown(log=log)
            return 1 if problems else 0
        if args.action == "up":
            topo, _ = setup(cfg, log=log, keep=True)
            res = pingpong_check(topo)
            log(f"traffic check: ibv_rc_pingpong {topo.local.dev} -> {topo.peer.dev} "
                f"{res.iters} iterations OK, {res.usec_per_iter} usec/iter")
        else:
            topo = discover(cfg)
            if args.action == "verify":
                res = pingpong_check(topo)
                log(f"traffic check: {res.iters} iterations OK, {res.usec_per_iter} usec/iter")
        if args.json:
            print(json.dumps(topo.to_json(), indent=1))
        elif args.action == "show":
            for ep in (topo.local, topo.peer):
                print(f"{ep.dev}: {ep.netdev} {ep.addr} gid[{ep.gid_index}] {ep.gid} {ep.state}")
        return 0
    except RxePowerError as exc:
        print(f"rxe-setup: error: {exc}", file=sys.stderr)
        return 2


"""Run nvme-rdma scenarios by hand (root, on a kernel with rdma_rxe; in the VM with
`python -m harness.vm -- python -m clients.kernel.run_nvme ...`):

    python -m clients.kernel.run_nvme --transition standby --ordering hca-first \\
        --policy nvme-rdma:fast-fail [--count 300] [--rate 40] [--no-guard] [--json FILE]

One line per scenario, and with --json every result as one JSON line (the ledger of
every I/O, controller states, connections and their devices, the transition).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from clients.kernel.blockio import DriverSpec
from clients.kernel.nvme_scenario import NvmeResult, NvmeScenario, run_nvme
from harness.core.errors import RxePowerError
from harness.core.printer import STDOUT, Printer
from harness.topology import lifecycle
from harness.topology.config import TopologyConfig
from harness.workload.block_ledger import IoOutcome
from harness.workload.findings import RowStatus
from power.plan import parse_ordering
from power.shim import Shim


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def row(res: NvmeResult) -> str:
    lg = res.ledger
    sc = res.scenario
    return (f"{sc['transition']:<17} {sc['ordering']:<13} {sc['policy']:<28} "
            f"ok {lg.count(IoOutcome.COMPLETED_OK):>4} "
            f"late {lg.count(IoOutcome.COMPLETED_LATE):>3} "
            f"failed {lg.count(IoOutcome.FAILED_TO_APP):>4} stuck {lg.count(IoOutcome.STUCK):>2} "
            f"lost {len(lg.lost_seqs):>2} corrupt {len(lg.corrupted_seqs):>2} "
            f"acked {lg.acknowledged_writes:>4} survived {'yes' if res.survived else 'no ':<3} "
            f"detect_ms {_ms(res.detect_ms):>6} recover_ms {_ms(res.recover_ms):>6} "
            f"{res.status}" + (f"  {'; '.join(res.findings)}" if res.findings else ""))


def main(argv: list[str] | None = None, out: Printer = STDOUT) -> int:
    ap = argparse.ArgumentParser(prog="run_nvme", description=__doc__.split("\n")[0])
    ap.add_argument("--transition", default="standby")
    ap.add_argument("--ordering", default="hca-first", help="comma list")
    ap.add_argument("--policy", default="nvme-rdma:fast-fail", help="comma list")
    ap.add_argument("--count", type=int, default=800, help="a cap: the I/O stops once the "
                    "controller settled after the transition")
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--hold-ms", type=int, default=None)
    ap.add_argument("--no-guard", action="store_true", help="no prohibit route")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cfg = TopologyConfig.from_settings()
    json_out = open(args.json, "a") if args.json else None  # noqa: SIM115
    rc = 0
    try:
        _topo, built = lifecycle.setup(cfg)
        try:
            with Shim(cfg) as shim:
                for t in args.transition.split(","):
                    for o in args.ordering.split(","):
                        for p in args.policy.split(","):
                            sc = NvmeScenario(t, parse_ordering(o), p, args.hold_ms,
                                              DriverSpec(args.count, args.depth, args.rate),
                                              guard=not args.no_guard)
                            t0 = time.monotonic()
                            try:
                                res = run_nvme(shim, cfg, sc)
                            except RxePowerError as exc:
                                out(f"{t} {o} {p}: error: {exc}")
                                rc = 1
                            else:
                                out(row(res) + f" ({time.monotonic() - t0:.1f} s)")
                                if json_out:
                                    json_out.write(json.dumps(res.to_json()) + "\n")
                                    json_out.flush()
                                rc |= res.status is RowStatus.BROKEN
                            lifecycle.restore_local_side(cfg)
        finally:
            if built:
                lifecycle.teardown()
    except RxePowerError as exc:
        out.to(sys.stderr)(f"run_nvme: error: {exc}")
        return 2
    finally:
        if json_out:
            json_out.close()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

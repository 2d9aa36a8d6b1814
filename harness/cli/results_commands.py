"""The commands that leave a results folder: `run`, `matrix`, `stress`, and `report`
(which draws one).

    rxe-power run    [matrix options]    the default scenario matrix, then its report
    rxe-power matrix [--transition T,..] [--ordering O,..] [--policy P,..] [--mix M,..]
                     [--together] [--junit FILE]
    rxe-power stress --cycles N [--transition T] [--policy P,..] [--maxfail N]
    rxe-power report RESULTS.jsonl|DIR ... [--out DIR] [--allow-mixed-provenance]
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import report
from harness.cli.invocation import Invocation, Job, invoke, mode_of
from harness.cli.jobs import add_jobs_option, jobs_of, run_results_jobs
from harness.cli.launch import Subcommands, results_folder, split_csv
from harness.cli.operations import run_invocation
from harness.cli.peer_option import add_peer_option
from harness.cli.removal import add_removal_option
from harness.cli.shard_option import add_shard_option, shard_of
from harness.cli.split_run import run_split, split_plan
from harness.core.errors import SettingError
from harness.core.printer import Printer
from harness.core.shards import Shard, parse_shard
from harness.run.lanes import parse_policies
from harness.run.matrix import (
    DEFAULT_TRANSITIONS,
    RUN_KERNEL_TRANSITIONS,
    RUN_POLICIES,
    MatrixSpec,
    run_matrix,
)
from harness.run.outside import CLIENT_EXIT_TIMEOUT_S
from harness.run.placements import guest_problem
from harness.run.session import RESULTS_FILE
from harness.run.shard_plans import (
    SCENARIO_DURATIONS,
    describe_plan,
    matrix_plan,
    record_durations,
    stress_plan,
)
from harness.run.stress import StressSpec, make_progress, run_stress
from harness.topology.config import TopologyConfig
from harness.workload.spec import RESUMED_CAP_S, Arrivals, WorkloadEnd
from power.plan import parse_on_veto, parse_ordering

MATRIX_VM_TIMEOUT_S = 3600.0
STRESS_VM_TIMEOUT_S = 6 * 3600.0


def add_parsers(subparsers: Subcommands, mode_help: str) -> None:
    for name, what in (("run", "the main job: the default scenario matrix, then its report "
                         "(table, timeline pictures, HTML) in one results folder"),
                       ("matrix", "run the scenario matrix (transitions x orderings x client "
                        "policies x operation mixes), writing results.jsonl as it goes")):
        p = subparsers.add_parser(name, help=what)
        add_matrix_options(p, mode_help)
        p.set_defaults(func=cmd_matrix)
    p = subparsers.add_parser("stress", help="repeat one transition under live clients, "
                              "checking the ledger, fds, RSS, threads, kernel RDMA resources "
                              "and the kernel log after every cycle")
    add_stress_options(p, mode_help)
    p.set_defaults(func=cmd_stress)
    p = subparsers.add_parser("report", help="table, timeline pictures (PNG) and an HTML "
                              "summary from a results.jsonl")
    p.add_argument("results", nargs="+", help="results.jsonl files written by matrix, run or "
                   "stress, or folders holding them")
    p.add_argument("--out", help="where to write (default: next to the results file)")
    p.add_argument("--no-pictures", action="store_true", help="only the table and HTML")
    p.add_argument("--allow-mixed-provenance", action="store_true",
                   help="report files made by different setups (kernel, rdma_rxe, removal "
                   "mode, versions, commit ...) together; the table and HTML say what differs")
    p.add_argument("--record-durations", metavar="FILE",
                   help="also add the seconds each scenario took to FILE, the durations "
                   "file --shard splits by (the committed one: "
                   f"{SCENARIO_DURATIONS.relative_to(SCENARIO_DURATIONS.parents[2])})")
    p.set_defaults(func=cmd_report)


def matrix_spec(args: argparse.Namespace) -> MatrixSpec:
    """`run` and `matrix` differ only in their defaults: `run` adds a kernel client of each
    ULP (in RUN_KERNEL_TRANSITIONS, unless --kernel-transitions says) and runs the
    userspace policies side by side in each transition (unless --apart)."""
    run = args.command == "run"
    return MatrixSpec(split_csv(args.transition) or DEFAULT_TRANSITIONS,
                      tuple(parse_ordering(o) for o in split_csv(args.ordering)),
                      parse_policies(split_csv(args.policy))
                      or (RUN_POLICIES if run else MatrixSpec.policies),
                      split_csv(args.mix) or ("mixed",),
                      args.together or (run and not args.apart), args.count, args.rate,
                      args.queue_depth, args.hold_ms,
                      parse_on_veto(args.on_veto), args.client_cmd or "",
                      args.server_cmd or "", args.client_exit_timeout_s,
                      parse_arrivals(args.arrivals),
                      split_csv(args.kernel_transitions)
                      or (RUN_KERNEL_TRANSITIONS if run and not args.policy else ()),
                      parse_end(args.end), args.settle_ms).validate()


def parse_arrivals(text: str) -> Arrivals:
    try:
        return Arrivals(text)
    except ValueError:
        raise SettingError(f"unknown --arrivals {text!r}", "use open or closed") from None


def parse_end(text: str) -> WorkloadEnd:
    try:
        return WorkloadEnd(text)
    except ValueError:
        raise SettingError(f"unknown --end {text!r}",
                           f"use one of: {', '.join(e.value for e in WorkloadEnd)}") from None


def _shard_json(shard: Shard | None) -> str | None:
    return None if shard is None else str(shard)


def _shard_from(text: str | None) -> Shard | None:
    return None if text is None else parse_shard(text)


@dataclass(frozen=True)
class MatrixJob(Job):
    """`matrix` and `run`: the scenario matrix (its shard), the JUnit file, and for `run`
    the report drawn on the host afterwards."""

    KIND = "matrix"
    spec: MatrixSpec
    shard: Shard | None = None
    junit: Path | None = None
    report: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.to_json(), "shard": _shard_json(self.shard),
                "junit": str(self.junit) if self.junit else None, "report": self.report}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MatrixJob:
        return cls(MatrixSpec.from_json(d["spec"]).validate(), _shard_from(d["shard"]),
                   Path(d["junit"]) if d["junit"] else None, bool(d["report"]))

    def promised(self, inv: Invocation) -> tuple[Path, ...]:
        return (inv.results / RESULTS_FILE, *((self.junit,) if self.junit else ()))

    def run_here(self, inv: Invocation, out: Printer) -> int:
        return run_matrix(self.spec, TopologyConfig.from_settings(), inv.results, self.junit,
                          out=out, plan=matrix_plan(self.spec, self.shard), peer=inv.peer)

    def peer_guest_problem(self, command: str) -> str | None:
        return guest_problem(self.spec.scenarios())

    def finish(self, inv: Invocation, code: int, out: Printer) -> int:
        if self.report and (inv.results / RESULTS_FILE).exists():
            report.write_report(inv.results / RESULTS_FILE, inv.results, out)
        return code


def cmd_matrix(args: argparse.Namespace, out: Printer) -> int:
    spec = matrix_spec(args)  # bad values fail here, before any VM boots
    split = split_plan(args, spec, mode_of(args))  # --peer guest: each row where it can
    if split is not None:
        return run_split(args, split, MatrixJob, out)
    shard = shard_of(args)
    plan = matrix_plan(spec, shard)  # and a shard with nothing to run
    jobs = jobs_of(args, mode_of(args), shard, len(spec.scenarios()), "scenarios",
                   out)  # and a bad --jobs
    if jobs > 1:
        return run_results_jobs(args, jobs, args.command == "run", out)
    job = MatrixJob(spec, shard, Path(args.junit).absolute() if args.junit else None,
                    args.command == "run")
    inv = invoke(args, job, results_folder(args, "matrix"), out,
                 describe_plan(plan, "scenarios") if plan else
                 f"{len(spec.scenarios())} scenarios")
    return run_invocation(inv, out)


def stress_spec(args: argparse.Namespace) -> StressSpec:
    return StressSpec(args.cycles, args.transition,
                      parse_ordering(args.ordering) if args.ordering else None,
                      parse_policies(split_csv(args.policy)) or StressSpec.policies, args.mix,
                      args.count, args.rate, args.queue_depth, args.hold_ms,
                      parse_on_veto(args.on_veto), args.maxfail,
                      args.keep_ledgers, parse_arrivals(args.arrivals), parse_end(args.end),
                      args.settle_ms).validate()


@dataclass(frozen=True)
class StressJob(Job):
    """`stress`: one transition over and over (its shard of the cycles)."""

    KIND = "stress"
    spec: StressSpec
    shard: Shard | None = None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.to_json(), "shard": _shard_json(self.shard)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StressJob:
        return cls(StressSpec.from_json(d["spec"]).validate(), _shard_from(d["shard"]))

    def promised(self, inv: Invocation) -> tuple[Path, ...]:
        return (inv.results / RESULTS_FILE,)

    def run_here(self, inv: Invocation, out: Printer) -> int:
        plan = stress_plan(self.spec, self.shard)
        progress = make_progress(len(plan.items) if plan else self.spec.cycles, out)
        try:
            return run_stress(self.spec, TopologyConfig.from_settings(), inv.results,
                              progress, out=out, plan=plan)
        finally:
            if hasattr(progress, "stop"):
                progress.stop()


def cmd_stress(args: argparse.Namespace, out: Printer) -> int:
    spec = stress_spec(args)
    shard = shard_of(args)
    plan = stress_plan(spec, shard)
    jobs = jobs_of(args, mode_of(args), shard, spec.cycles, "cycles", out)
    if jobs > 1:
        return run_results_jobs(args, jobs, False, out)
    inv = invoke(args, StressJob(spec, shard), results_folder(args, "stress"), out, (
        describe_plan(plan, "cycles") if plan else f"{spec.cycles} cycles")
        + f" of {spec.transition}")
    return run_invocation(inv, out)


def cmd_report(args: argparse.Namespace, out: Printer) -> int:
    paths = [Path(r) for r in args.results]
    if args.out:
        out_dir = Path(args.out)
    elif len(paths) == 1:
        out_dir = paths[0] if paths[0].is_dir() else paths[0].parent
    else:
        raise SettingError(f"{len(paths)} results given and no --out",
                           "say where the report of several results goes: --out DIR")
    code = report.write_report(paths, out_dir, out, pictures=not args.no_pictures,
                               allow_mixed=args.allow_mixed_provenance)
    if args.record_durations and code == 0:
        record_durations(paths, Path(args.record_durations), shlex.join(["rxe-power", *args.argv]),
                         out)
    return code


def _common(p: argparse.ArgumentParser, mode_help: str, timeout_s: float) -> None:
    p.add_argument("--out", help="the results folder (default results/COMMAND-TIMESTAMP)")
    p.add_argument("--mode", default=None, help=mode_help)
    add_removal_option(p)
    add_peer_option(p)
    p.add_argument("--timeout-s", type=float, default=timeout_s,
                   help="bound on the whole VM run, in seconds")


def _workload_options(p: argparse.ArgumentParser, count: int, hold_ms: int) -> None:
    p.add_argument("--count", type=int, default=count, help="requests per client (--end "
                   "count), or their cap (--end resumed: at least --rate x "
                   f"{RESUMED_CAP_S:g} s)")
    p.add_argument("--rate", type=float, default=60.0,
                   help="requests per second per client (0: as fast as the queue allows)")
    p.add_argument("--queue-depth", type=int, default=4, help="outstanding requests per QP")
    p.add_argument("--hold-ms", type=int, default=hold_ms, help="how long to stay asleep")
    p.add_argument("--on-veto", default="force", help="wait (report the veto) or force "
                   "(terminate the holders, the default)")


def add_matrix_options(p: argparse.ArgumentParser, mode_help: str) -> None:
    p.add_argument("--transition", action="append", help="transitions, comma-separated "
                   "(default link-flap,standby,hibernate,surprise-removal)")
    p.add_argument("--ordering", action="append", help="clients-first and/or hca-first "
                   "(default: every ordering each transition offers)")
    p.add_argument("--policy", action="append", help="client policies: userspace (naive, "
                   "fail-fast, queue-replay, graceful, or module:Class) and kernel clients "
                   "(nvme-rdma[:preset|:key=val...], nfs-rdma:hard|soft|key=val...); "
                   "default: the four userspace ones (run: also nvme-rdma and nfs-rdma:hard)")
    p.add_argument("--kernel-transitions", action="append",
                   help="run kernel clients only in these transitions (default: every "
                   "selected one; run's default matrix: " + ",".join(RUN_KERNEL_TRANSITIONS)
                   + ")")
    p.add_argument("--mix", action="append", help="operation mixes: mixed, send, write, "
                   "read-atomic (default mixed)")
    _arrivals_option(p)
    p.add_argument("--together", action="store_true", help="run the userspace policies side "
                   "by side in one transition instead of one transition each (run's default)")
    p.add_argument("--apart", action="store_true", help="run: one transition per userspace "
                   "policy (matrix's default)")
    _workload_options(p, 120, 300)
    add_shard_option(p, "scenario")
    add_jobs_option(p)
    p.add_argument("--junit", help="also write JUnit XML here (one testcase per row)")
    p.add_argument("--client-cmd", help="an unmodified verbs program (quoted, with "
                   "placeholders {dev} {gid} {addr} {peer_dev} {peer_gid} {peer_addr} {port}) "
                   "run under the verbs tracer instead of the policies")
    p.add_argument("--server-cmd", help="its own server on the peer HCA (same placeholders)")
    p.add_argument("--client-exit-timeout-s", type=float, default=CLIENT_EXIT_TIMEOUT_S,
                   help="after the transition, how long the --client-cmd program gets to "
                   "end by itself before it is stopped (and its row says so)")
    _common(p, mode_help, MATRIX_VM_TIMEOUT_S)


def _arrivals_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arrivals", default=MatrixSpec.arrivals.value,
                   help="open (the default: requests arrive at --rate whatever the device "
                   "does, so they keep coming while it sleeps) or closed (the next request "
                   "comes only when the client can take it)")
    p.add_argument("--end", default=MatrixSpec.end.value,
                   help="resumed (the default: requests keep coming until the transition "
                   "has ended and --settle-ms more, so the transition meets the workload "
                   "whatever the machine's speed; --count is then a cap) or count (the "
                   "workload is --count requests; a transition that comes after the last "
                   "one makes the row `missed`)")
    p.add_argument("--settle-ms", type=int, default=MatrixSpec.settle_ms,
                   help="--end resumed: how long requests keep coming after the transition")


def add_stress_options(p: argparse.ArgumentParser, mode_help: str) -> None:
    p.add_argument("--cycles", type=int, default=20, help="how many transitions")
    p.add_argument("--transition", default="standby", help="the transition to repeat")
    p.add_argument("--ordering", help="clients-first or hca-first (default: the first the "
                   "transition offers)")
    p.add_argument("--policy", action="append", help="client policies (default fail-fast,"
                   "queue-replay,graceful), or module:Class")
    p.add_argument("--mix", default="mixed", help="operation mix")
    _arrivals_option(p)
    p.add_argument("--maxfail", type=int, default=0, help="stop after N failed cycles "
                   "(0: never)")
    p.add_argument("--keep-ledgers", action="store_true",
                   help="keep every cycle's full ledger (default: only failed cycles')")
    _workload_options(p, 60, 100)
    add_shard_option(p, "cycle")
    add_jobs_option(p)
    _common(p, mode_help, STRESS_VM_TIMEOUT_S)

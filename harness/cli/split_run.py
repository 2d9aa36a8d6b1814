"""`run` and `matrix` with `--peer guest` whose scenarios are not all for two kernels: each
row where it is most faithful. The kernel clients the peer guest serves
(harness.run.placements.GUEST_KERNEL_CLIENTS) run with the peer in its own guest kernel
(harness.vm.pair), the rest (the userspace policies, outside programs) in one kernel, as
two invocations one after the other, each in its own folder of the run's results folder,
then merged into one table and report there (harness.cli.jobs.merge_results).

    results/run-.../one-kernel/    the userspace rows: peer same-kernel, and why
    results/run-.../two-kernels/   the kernel-client rows: peer guest
    results/run-.../table.txt      both, merged (report.html, junit.xml)

Each part's provenance records its own placement and reason. A `--peer guest` whose
kernel rows cannot have the pair either (a transition that re-makes the NIC) is not
split: the invocation refuses it, naming why.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, replace

from harness.cli.invocation import Job, invoke
from harness.cli.jobs import first_failure, merge_results
from harness.cli.launch import results_folder
from harness.cli.operations import run_invocation
from harness.core.files import make_dir
from harness.core.printer import Printer
from harness.core.settings import Mode, PeerPlacement, resolve
from harness.run.lanes.base import LaneKind
from harness.run.matrix import MatrixSpec
from harness.run.placements import GUEST_KERNEL_CLIENTS, guest_problem

ONE_KERNEL, TWO_KERNELS = "one-kernel", "two-kernels"  # the parts' folders


@dataclass(frozen=True)
class SplitPlan:
    one_kernel: MatrixSpec  # what runs with the peer in this kernel
    two_kernels: MatrixSpec  # what runs with the peer in its own guest


def split_plan(args: argparse.Namespace, spec: MatrixSpec, mode: Mode) -> SplitPlan | None:
    """The split of a `--peer guest` run whose scenarios mix what two kernels can run and
    what they cannot; None when there is nothing to split (not guest, not the VM, a shard
    or --jobs of its own, every row fits one placement, or the kernel rows cannot have
    the pair: the invocation then decides, or refuses with the reason)."""
    if (resolve("peer", getattr(args, "peer", None), option="--peer").value
            is not PeerPlacement.GUEST or mode is not Mode.VM
            or getattr(args, "shard", None) or getattr(args, "jobs", None) not in (None, "1")
            or spec.client_cmd):
        return None
    two = tuple(p for p in spec.policies
                if p.lane is LaneKind.KERNEL and p.name in GUEST_KERNEL_CLIENTS)
    one = tuple(p for p in spec.policies if p not in two)
    if not two or not one:
        return None
    plan = SplitPlan(replace(spec, policies=one), replace(spec, policies=two))
    if guest_problem(plan.two_kernels.scenarios()) is not None:
        return None
    return plan


def run_split(args: argparse.Namespace, plan: SplitPlan, make_job: type[Job],
              out: Printer) -> int:
    """Both parts, one after the other, then the merge; the first failure's exit code,
    else the merge's. `make_job(spec, None, None, report)`: the command's job."""
    base = make_dir(results_folder(args, args.command))
    say = out.prefixed(f"rxe-power {args.command}: ")
    say(f"--peer guest: the kernel clients ({', '.join(GUEST_KERNEL_CLIENTS)}) with the peer "
        "in its own guest kernel, the other rows in one kernel (they cannot run in two yet); "
        f"two runs, merged in {base}")
    codes = []
    for name, spec, peer, why in (
            (ONE_KERNEL, plan.one_kernel, PeerPlacement.SAME_KERNEL,
             "the rows --peer guest cannot have yet (no verbs agent in the peer guest)"),
            (TWO_KERNELS, plan.two_kernels, PeerPlacement.GUEST,
             "from --peer guest: the kernel clients' rows")):
        part = copy.copy(args)
        part.out = str(base / name)
        job = make_job(spec, None, None, args.command == "run")  # type: ignore[call-arg]
        inv = invoke(part, job, base / name, out, f"{len(spec.scenarios())} scenarios "
                     f"({name})", peer=(peer, why))
        codes.append(run_invocation(inv, out))
    # the parts differ in their placement by design: the merged table says so
    merged = merge_results([base / ONE_KERNEL, base / TWO_KERNELS], base, True, out,
                           allow_mixed=True)
    return first_failure([*codes, merged])

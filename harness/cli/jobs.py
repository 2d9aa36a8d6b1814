"""`--jobs N` on run, matrix, stress and test: the command split into N shards run at once
on this machine, each in its own guest, then one merged report.

    n = jobs_of(args, mode, items=11, what="scenarios", out=out)  # checked before any VM
    if n > 1:                                                     # boots
        done = run_jobs(args, n, base, out)     # [Finished]: the N shards at once
        merge_results(folders(base, n), base, drawn, out)      # run, matrix, stress
        merge_test_durations(folders(base, n), base, out)      # test

Shard I of N is the command itself with `--shard I/N --mode vm` (harness.core.shards
splits it exactly as on N machines), in its own guest: its own kernel, so its own topology,
state file and run lock (the guest's own /run), and its own results folder
(BASE/shard-I, its --out and its RXE_POWER_RESULTS: console log, logs, durations). The
shards run as children of this process (harness.vm.parallel: their output prefixed
`[I/N]`, every one ended if this process ends, even by SIGKILL); then the results
commands' shards are merged by `rxe-power report`'s merge into BASE (table.txt,
junit.xml, summary.html; each shard's own table and timelines stay in its folder), and
the suite's shards' recorded durations into BASE/test-durations.json.

The default (no --jobs, no --shard): one guest per RXE_POWER_VM_CPUS (default 2) of the
cores this process may use, and no more guests than MemAvailable holds
(GUEST_MEMORY_MIB each), nor than the run has items; at least 1 (2 cores: 1). A run on
this kernel (native) has one topology and one run lock: always 1 there.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness import report
from harness.cli import launch
from harness.core import settings
from harness.core.errors import RxePowerError, SettingError
from harness.core.files import atomic_write, make_dir
from harness.core.printer import Printer
from harness.core.proc import python_child
from harness.core.settings import Mode
from harness.core.shards import (
    TEST_DURATIONS_ABOUT,
    TEST_DURATIONS_NAME,
    Shard,
    read_durations,
    write_durations,
)
from harness.system.provenance_collect import parse_meminfo_mib
from harness.vm.parallel import Child, Finished, run_parallel
from harness.vm.runner import GUEST_MEMORY_MIB

MAX_JOBS = 64  # --jobs N: at most this many guests at once
MEMINFO = Path("/proc/meminfo")
# the controller's bound over its shards: each shard's own bounds (--timeout-s: the host
# part and the guest part of the suite, or the guest of a results command) and this much
# more for its start, its report and the end of its guest
JOB_OVERHEAD_TIMEOUT_S = 600.0
JOBS_HELP = ("run the command as N shards (--shard I/N) at once, each in its own guest, then "
             "merge their results into one report; default: one guest per "
             f"{settings.VM_CPUS_ENV} (2) cores that the free memory holds, 1 on a 2-core "
             "machine and in the native mode")
# set by the controller for each shard (--junit: the merge writes the one JUnit XML)
OWN_OPTIONS = ("--jobs", "--mode", "--out", "--shard", "--junit")


def add_jobs_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", metavar="N", help=JOBS_HELP)


def default_jobs(cores: int, vm_cpus: int, available_mib: int | None, items: int | None
                 ) -> tuple[int, str]:
    """How many guests at once this machine takes, and why (the rule above)."""
    by_cores = cores // vm_cpus
    why = f"{cores} cores / {vm_cpus} vCPUs per guest = {by_cores}"
    n = by_cores
    if available_mib is not None:
        by_memory = available_mib // GUEST_MEMORY_MIB
        why += f"; {available_mib} MiB available / {GUEST_MEMORY_MIB} MiB per guest = {by_memory}"
        n = min(n, by_memory)
    if items is not None and items < n:
        n = items
        why += f"; {items} items"
    return max(1, n), why


def machine_jobs(items: int | None) -> tuple[int, str]:
    """default_jobs for this machine and RXE_POWER_VM_CPUS."""
    return default_jobs(len(os.sched_getaffinity(0)), settings.vm_cpus(), _available_mib(),
                        items)


def _available_mib() -> int | None:
    try:
        return parse_meminfo_mib(MEMINFO.read_text(), "MemAvailable")
    except OSError:
        return None


def jobs_of(args: argparse.Namespace, mode: Mode, shard: Shard | None, items: int | None,
            what: str, out: Printer) -> int:
    """The command's number of guests at once: --jobs checked (SettingError naming the
    problem and the fix, before any VM boots), else the machine's default (1 for a run
    given a `shard` of its own)."""
    text = getattr(args, "jobs", None)
    if text is None:
        if mode is not Mode.VM or shard is not None:
            return 1
        return machine_jobs(items)[0]
    fix = f"give --jobs N, a whole number from 1 to MAX_JOBS={MAX_JOBS}"
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_JOBS:
        raise SettingError(f"--jobs {text!r} is not a number of guests from 1 to {MAX_JOBS}",
                           fix)
    n = int(text)
    if n == 1:
        return 1
    if shard is not None:
        raise SettingError(f"--jobs {n} and --shard {shard}: --jobs splits the run into "
                           "shards itself", "give one of them: --jobs N on this machine, or "
                           "--shard I/N on each of N machines")
    if mode is not Mode.VM:
        raise SettingError(f"--jobs {n} runs each shard in its own guest, but the mode is "
                           f"{mode.value}: this kernel has one topology for one run at a time",
                           "use --mode vm (or auto where this kernel has no rdma_rxe), or "
                           "--jobs 1")
    if items is not None and items < n:
        raise SettingError(f"--jobs {n}: the run has {items} {what}, fewer than {n} shards",
                           f"use at most --jobs {items}")
    available = _available_mib()
    if available is not None and n * GUEST_MEMORY_MIB > available:
        most = max(1, available // GUEST_MEMORY_MIB)
        raise SettingError(f"--jobs {n}: {n} guests of {GUEST_MEMORY_MIB} MiB need "
                           f"{n * GUEST_MEMORY_MIB} MiB, this machine has {available} MiB "
                           "available", f"use at most --jobs {most}, or free memory")
    fits, why = machine_jobs(items)
    if n > fits:
        out(f"warning: --jobs {n} is more guests than this machine's cores hold ({why}): "
            "they share the cores and each runs slower")
    return n


def drop_own_options(argv: list[str]) -> list[str]:
    """`argv` (the command's words after its name) without the options the controller sets
    for each shard, given as `--opt VALUE` or `--opt=VALUE`; nothing after `--` is touched
    (the suite's pytest arguments)."""
    kept: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if a == "--":
            return kept + argv[i:]
        if skip:
            skip = False
        elif a in OWN_OPTIONS:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in OWN_OPTIONS)):
            kept.append(a)
    return kept


def shard_children(args: argparse.Namespace, n: int, base: Path) -> list[Child]:
    """The N shards of the command `args`, each with its own results folder under `base`."""
    rest = drop_own_options(args.argv[1:])
    children = []
    for i in range(1, n + 1):
        folder = folders(base, n)[i - 1]
        own = ["--shard", f"{i}/{n}", "--mode", Mode.VM.value]
        if hasattr(args, "out"):
            own += ["--out", str(folder)]
        children.append(Child(f"{i}/{n}", python_child("harness.cli.shard_job", args.command,
                                                        *own, *rest),
                              {settings.RESULTS_ENV: str(folder)}))
    return children


def run_jobs(args: argparse.Namespace, n: int, base: Path, out: Printer) -> list[Finished]:
    """Run the command `args` as `n` shards at once (results under `base`) and say how long
    each took; the caller merges them."""
    say = out.prefixed(f"rxe-power {args.command} --jobs {n}: ")
    say(f"{n} shards at once, each in its own guest; results in {base}/shard-1 .. shard-{n}")
    t0 = time.monotonic()
    done = run_parallel(shard_children(args, n, base), _bound_s(args), out,
                        f"--timeout-s (per part) + JOB_OVERHEAD_TIMEOUT_S="
                        f"{JOB_OVERHEAD_TIMEOUT_S:g}")
    took = time.monotonic() - t0
    for fin in done:
        say(f"shard {fin.child.label}: exit {fin.exit_code} after {fin.seconds:.1f} s"
            + (f" (stopped: {fin.stopped.value})" if fin.stopped else ""))
    say(f"the {n} shards took {took:.1f} s together (the longest "
        f"{max(f.seconds for f in done):.1f} s)")
    return done


def folders(base: Path, n: int) -> list[Path]:
    """The shards' results folders."""
    return [base / f"shard-{i}" for i in range(1, n + 1)]


def _bound_s(args: argparse.Namespace) -> float:
    parts = 2 if args.command == "test" else 1  # the suite: host part, then guest part
    return parts * float(args.timeout_s) + JOB_OVERHEAD_TIMEOUT_S


def first_failure(codes: list[int]) -> int:
    """One exit code for several: the first that is not 0."""
    return next((c for c in codes if c != 0), 0)


def run_results_jobs(args: argparse.Namespace, n: int, drawn: bool, out: Printer) -> int:
    """run, matrix or stress as `n` shards at once, merged: the exit code of the first shard
    that failed, else the merge's. `drawn`: the shards draw their own timelines (`run`).
    --junit FILE gets the merged JUnit XML."""
    base = make_dir(results_base(args, args.command))
    done = run_jobs(args, n, base, out)
    merged = merge_results(folders(base, n), base, drawn, out)
    junit = getattr(args, "junit", None)
    if junit and (base / "junit.xml").is_file():
        atomic_write(Path(junit), (base / "junit.xml").read_bytes())
        out(f"rxe-power {args.command}: the merged JUnit XML also in {junit}")
    return first_failure([f.exit_code for f in done] + [merged])


def merge_results(folders: list[Path], base: Path, drawn: bool, out: Printer,
                  allow_mixed: bool = False) -> int:
    """`rxe-power report` of the shards' folders into `base` (one table, JUnit XML and HTML;
    each shard's section in its own folder). `drawn`: the shards drew their timelines
    already (`run` reports itself), so they are linked, not drawn again."""
    have = [f for f in folders if (f / "results.jsonl").is_file()]
    if not have:
        out(f"rxe-power: no shard left a results file in {base}: nothing to merge")
        return report.NO_RECORDS_EXIT
    try:
        return report.write_report(have, base, out, pictures=not drawn,
                                   allow_mixed=allow_mixed)
    except RxePowerError as exc:
        out.to_stderr()(f"rxe-power: error: the merge of the shards: {exc}")
        return report.NO_RECORDS_EXIT


def merge_test_durations(folders: list[Path], base: Path, out: Printer) -> None:
    """The shards' recorded test durations, in one file in `base` (to commit as
    tests/durations.json)."""
    seconds: dict[str, float] = {}
    for f in folders:
        try:
            seconds |= read_durations(f / TEST_DURATIONS_NAME)
        except RxePowerError as exc:
            out(f"warning: {exc.problem}")
    if not seconds:
        out(f"rxe-power test: no shard recorded a test's duration: no {TEST_DURATIONS_NAME}")
        return
    path = write_durations(base / TEST_DURATIONS_NAME, seconds, TEST_DURATIONS_ABOUT,
                           f"{time.strftime('%Y-%m-%d')}: the {len(folders)} shards of "
                           f"rxe-power test --jobs {len(folders)} ({len(seconds)} tests)")
    out(f"rxe-power test: the seconds of {len(seconds)} tests in {path}")


def results_base(args: argparse.Namespace, stem: str) -> Path:
    """The folder of a --jobs run: --out, else RESULTS_DIR/STEM-TIMESTAMP."""
    out = getattr(args, "out", None)
    if out:
        return Path(out).absolute()
    return (launch.RESULTS_DIR / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()

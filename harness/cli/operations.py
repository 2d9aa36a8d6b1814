"""How an Invocation runs: one operations class per way of running (as the KUnit tool's
LinuxSourceTreeOperations), chosen from its mode, once.

    NativeOperations   this kernel: the run lock, the rdma_rxe of the removal mode, the job
    VmOperations       the guest: the invocation file in the results folder, the boot, the
                       guest's console log and the runner's record of it beside it, the
                       promised results checked on the host

`run_invocation` is what every command calls; the guest runs `python -m harness.cli.guest`
on the file (harness/cli/guest.py), which runs NativeOperations there.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from harness.cli import launch
from harness.cli.invocation import Invocation, write_invocation
from harness.core import settings
from harness.core.files import atomic_write
from harness.core.printer import Printer
from harness.core.proc import python_child
from harness.core.runlock import run_lock
from harness.core.settings import Mode, PeerPlacement
from harness.system import rxe_module
from harness.vm import pair, runner

RESULTS_MISSING_EXIT = 1  # the guest said 0 but a promised result is not on the host
GUEST_MODULE = "harness.cli.guest"  # what the guest runs on the invocation file
PEER_CONSOLE_LOG = "vm-peer-console.log"  # the peer guest's, in the results folder
# not forwarded to the guest: the mode (the guest runs natively), and what the invocation
# file carries (the removal mode as chosen, the launch record, a bench's host load)
NOT_FORWARDED = frozenset({"RXE_POWER_MODE", "RXE_POWER_REMOVAL", settings.LAUNCH_ENV,
                           settings.BENCH_HOST_ENV})


class NativeOperations:
    """Run the invocation in this process, on this kernel."""

    def run(self, inv: Invocation, out: Printer) -> int:
        # this process's provenance (collect()) and its children's read the record here
        settings.export_launch_facts(inv.launch_facts().to_json())
        with _topology_lock(inv):
            if inv.removal is not None and inv.job.LOADS_MODULE:
                report = rxe_module.ensure(inv.removal)
                out(f"rxe-power {inv.command}: {report.line()} ({inv.removal_reason})")
            return inv.job.run_here(inv, out)


@contextlib.contextmanager
def _topology_lock(inv: Invocation) -> Iterator[None]:
    """The run lock around a run that uses the topology here (the guest's own in the guest).
    Not taken by a non-root caller: such a run refuses the topology, it can touch nothing."""
    if not inv.job.USES_TOPOLOGY or os.geteuid() != 0:
        yield
        return
    with run_lock(inv.command_line):
        yield


class VmOperations:
    """Hand the invocation to a guest as a file and boot it (the host part, if the job has
    one, runs here first)."""

    def run(self, inv: Invocation, out: Printer) -> int:
        guest_job, host_code = inv.job.host_part(inv, out)
        if guest_job is None:
            assert host_code is not None, "a job that boots no guest has run a part here"
            return host_code
        code = boot_guest(replace(inv, job=guest_job), out)
        return inv.job.after_guest(inv, host_code, code, out)


def guest_argv(record: Path) -> list[str]:
    """The guest's command: the invocation file, and whose it must be (the guest reads it as
    root: harness.cli.invocation.read_invocation)."""
    return python_child(GUEST_MODULE, str(record), "--owner-uid", str(os.geteuid()))


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def boot_guest(inv: Invocation, out: Printer) -> int:
    """Run `inv` in the guest: its file and the console log (and the runner's record of
    it) in the results folder, shared writable with every folder of a promised file. Exit 0
    without a promised file is turned into an error: a run never passes without the results
    it promised. `out`: the CLI's printer (the guest's own output is copied to the terminal
    as it comes, not through it)."""
    promised = inv.job.promised(inv)
    folders = [launch.RESULTS_DIR, inv.results, *(p.parent for p in promised)]
    rw_dirs = launch.guest_rw_dirs(folders, Path.cwd().absolute())  # creates them
    record = write_invocation(inv)
    env = {k: v for k, v in settings.own_environment().items() if k not in NOT_FORWARDED}
    req = runner.VmRequest(command=guest_argv(record), rw_dirs=rw_dirs,
                           log_path=inv.log_path, timeout_s=inv.timeout_s,
                           cpus=settings.vm_cpus(), env=env)
    before = {p: _mtime_ns(p) for p in promised}
    two = inv.peer is PeerPlacement.GUEST  # the peer in a guest of its own beside
    result = boot_pair(inv, req, out) if two else runner.run_in_vm(req)
    atomic_write(inv.log_path.with_name(f"{inv.log_path.name}.json"),
                 json.dumps(result.to_json(), indent=1, default=str))
    missing = [str(p) for p in promised if _mtime_ns(p) in (None, before[p])]
    if missing and result.exit_code == 0:
        out.to_stderr()(f"rxe-power: error: the guest command exited 0 but left no "
                        f"{', '.join(missing)} on the host\n  fix: see the console log "
                        f"{result.log_path}")
        return RESULTS_MISSING_EXIT
    return result.exit_code


PEER_GUEST_MODULE = "harness.run.pair_peer"  # what the peer guest runs
# the peer guest imports a few modules only: reading them from the shared folder is
# cheaper than unpacking the copy of every Python tree on its one vCPU (measured: the
# copy took 16.9 s there, beside the local guest's own)
PEER_PYTHON_COPY = False


def boot_pair(inv: Invocation, local: runner.VmRequest, out: Printer) -> runner.VmResult:
    """`local` in the local guest beside the peer guest (harness.vm.pair), the peer's
    console log beside the local one; the local guest's result."""
    peer = runner.VmRequest(command=python_child(PEER_GUEST_MODULE), rw_dirs=[],
                            log_path=inv.results / PEER_CONSOLE_LOG, timeout_s=inv.timeout_s,
                            cpus=pair.PEER_CPUS, memory=pair.PEER_MEMORY,
                            python_copy=PEER_PYTHON_COPY)
    res = pair.run_pair(local, peer, peer.log_path)
    out(f"rxe-power {inv.command}: the peer guest "
        + (f"exited {res.peer_exit_code}" if res.peer_exit_code is not None else
           "did not end by itself and was ended") + f" after {res.peer_duration_s:.1f} s; "
        f"its console log {res.peer_log_path}")
    return res.local


OPERATIONS: dict[Mode, type[NativeOperations] | type[VmOperations]] = {
    Mode.NATIVE: NativeOperations, Mode.VM: VmOperations}


def run_invocation(inv: Invocation, out: Printer) -> int:
    """Run `inv` where its mode says, then its job's finish on the host."""
    code = OPERATIONS[inv.mode]().run(inv, out)
    return inv.job.finish(inv, code, out)

"""Where a command runs: this kernel (native) or the VM; its results folder; the argv
it runs again with in the guest. Every command module of the CLI starts here."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path
from typing import TypeAlias

from harness.cli.peer_option import prepare_peer
from harness.cli.removal import prepare_removal
from harness.core import settings
from harness.core.errors import OsCallError, RxePowerError
from harness.core.files import atomic_write, make_dir
from harness.core.printer import Printer
from harness.core.proc import python_child
from harness.core.settings import Mode
from harness.system.provenance_collect import record_launch
from harness.system.rxe_module import rxe_module_loaded
from harness.vm import runner

RESULTS_DIR = settings.results_dir()
# the subparsers of `rxe-power` each command module adds its commands to
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
SHORT_COMMAND_VM_TIMEOUT_S = 600.0  # bound on a VM run of check or transition
RESULTS_MISSING_EXIT = 1  # the guest said 0 but a promised result is not on the host


def native_rxe_available() -> tuple[bool, str]:
    """Can this kernel give us rxe devices? (module loaded, or loadable)."""
    if rxe_module_loaded():
        return True, "rdma_rxe is loaded in the running kernel"
    release = os.uname().release
    mod_dir = Path("/lib/modules") / release
    if not mod_dir.is_dir():
        return False, f"the running kernel {release} has no /lib/modules/{release} (no modules)"
    if not any(mod_dir.rglob("rdma_rxe.ko*")):
        return False, f"the running kernel {release} has no rdma_rxe module"
    return True, f"rdma_rxe is available for the running kernel {release}"


def choose_mode(requested: Mode) -> tuple[Mode, str]:
    ok, why = native_rxe_available()
    if requested is Mode.AUTO:
        return (Mode.NATIVE, why) if ok else (Mode.VM, f"{why}: using the VM")
    if requested is Mode.NATIVE and not ok:
        raise RxePowerError(f"--mode native, but {why}",
                            "use --mode vm (or auto), or install the module "
                            "(Ubuntu: linux-modules-extra-$(uname -r))")
    return requested, why


def launch_mode(args: argparse.Namespace) -> tuple[Mode, str]:
    """choose_mode for the command `args`, the choice recorded for the run's provenance:
    this process's run and the guest read it (RXE_POWER_LAUNCH, with the command line and
    the source tree's commit)."""
    mode, why = choose_mode(args.mode)
    record_launch(mode, why, shlex.join(["rxe-power", *getattr(args, "argv", [args.command])]))
    return mode, why


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in settings.own_environment().items() if k != "RXE_POWER_MODE"}


def guest_rw_dirs(outputs: list[Path], cwd: Path) -> list[Path]:
    """The host folders the guest must write: the cwd, and each folder an output lives in
    that is not under it (the guest's own /tmp, /home ... are throwaway). Each is created
    here first (the guest cannot create a folder in the read-only host root)."""
    dirs = [cwd]
    for out in outputs:
        folder = out.absolute()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OsCallError(f"cannot create the results folder {folder}", exc.errno or 0,
                              "give a folder you may create (--out, --json, --junit, "
                              f"{settings.RESULTS_ENV})") from None
        if not any(folder.is_relative_to(d) for d in dirs):
            dirs = [d for d in dirs if not d.is_relative_to(folder)] + [folder]
    return dirs


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def run_in_guest(argv: list[str], timeout_s: float, log_name: str, out: Printer,
                 promised: tuple[Path, ...] = (), log_dir: Path | None = None) -> int:
    """Run `argv` in the guest; results come back through the shared folders of `promised`
    (files the command must leave) and RESULTS_DIR. Exit 0 without a promised file is
    turned into an error: a run never passes without the results it promised. The
    console log (and its record) goes to `log_dir`, a run's own results folder, when the
    command has one, else to RESULTS_DIR. `out`: the CLI's printer (the guest's own output
    is copied to the terminal as it comes, not through it)."""
    folders = [RESULTS_DIR, *(p.parent for p in promised)]
    logs = log_dir if log_dir is not None else RESULTS_DIR
    req = runner.VmRequest(command=argv, rw_dirs=guest_rw_dirs(folders, Path.cwd().absolute()),
                           log_path=logs / log_name, timeout_s=timeout_s,
                           cpus=settings.vm_cpus(), env=_forwarded_env())
    before = {p: _mtime_ns(p) for p in promised}
    result = runner.run_in_vm(req)
    logs.mkdir(parents=True, exist_ok=True)
    atomic_write(logs / f"{log_name}.json", json.dumps(result.to_json(), indent=1,
                                                       default=str))
    missing = [str(p) for p in promised if _mtime_ns(p) in (None, before[p])]
    if missing and result.exit_code == 0:
        out.to_stderr()(f"rxe-power: error: the guest command exited 0 but left no "
                        f"{', '.join(missing)} on the host\n  fix: see the console log "
                        f"{result.log_path}")
        return RESULTS_MISSING_EXIT
    return result.exit_code


def native_argv(args: argparse.Namespace, out_dir: Path) -> list[str]:
    """This command again, for the VM: --mode native, the out dir fixed, the VM bound gone."""
    argv, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
            continue
        if a in ("--mode", "--timeout-s", "--out"):
            skip = True
            continue
        if a.startswith(("--mode=", "--timeout-s=", "--out=")):
            continue
        argv.append(a)
    return python_child("harness.cli", *argv, "--mode", "native", "--out", str(out_dir))


def start_results_command(args: argparse.Namespace, stem: str, what: str,
                          out: Printer) -> tuple[Path, Mode]:
    """The start of a command that leaves a results folder (matrix, stress, bench): the
    folder, the mode, and one line to `out` saying both and what will run."""
    out_dir = _out_dir(args, stem)
    mode, why = launch_mode(args)
    out(f"rxe-power {args.command}: mode {mode.value} ({why}); {what}; results in {out_dir}")
    prepare_peer(args, mode, out)
    prepare_removal(args, mode, out)
    return out_dir, mode


def _out_dir(args: argparse.Namespace, command: str) -> Path:
    if args.out:  # a file there, or a folder we cannot write: refused before any VM boots
        return make_dir(Path(args.out).absolute())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (RESULTS_DIR / f"{command}-{stamp}").absolute()


def split_csv(raw: list[str] | None) -> tuple[str, ...]:
    return tuple(x.strip() for r in (raw or []) for x in r.split(",") if x.strip())

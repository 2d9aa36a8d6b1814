"""Where a command can run: this kernel (native) or the VM (`choose_mode`), the folders a
guest must write, a command's results folder. Every command module of the CLI starts
here; harness.cli.invocation makes the choices once, harness.cli.operations runs them."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TypeAlias

from harness.core import settings
from harness.core.errors import OsCallError, RxePowerError
from harness.core.files import make_dir
from harness.core.settings import Mode
from harness.system.rxe_module import rxe_module_loaded

RESULTS_DIR = settings.results_dir()
# the subparsers of `rxe-power` each command module adds its commands to
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
SHORT_COMMAND_VM_TIMEOUT_S = 600.0  # bound on a VM run of check or transition


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


def results_folder(args: argparse.Namespace, command: str) -> Path:
    """The results folder of a command that makes one (run, matrix, stress, bench): --out,
    else RESULTS_DIR/COMMAND-TIMESTAMP."""
    if args.out:  # a file there, or a folder we cannot write: refused before any VM boots
        return make_dir(Path(args.out).absolute())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (RESULTS_DIR / f"{command}-{stamp}").absolute()


def split_csv(raw: list[str] | None) -> tuple[str, ...]:
    return tuple(x.strip() for r in (raw or []) for x in r.split(",") if x.strip())

"""Where a command runs: this kernel (native) or the VM; its results folder; the argv
it runs again with in the guest. Every command module of the CLI starts here."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TypeAlias

from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.files import atomic_write, make_dir
from harness.core.settings import Mode
from harness.system.rxe_module import rxe_module_loaded
from harness.vm import runner

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


def _forwarded_env() -> dict[str, str]:
    env = {k: v for k, v in settings.own_environment().items() if k != "RXE_POWER_MODE"}
    env["RXE_POWER_IN_VM"] = "1"
    return env


def run_in_guest(argv: list[str], timeout_s: float, log_name: str) -> int:
    req = runner.VmRequest(command=argv, rw_dirs=[Path.cwd()], log_path=RESULTS_DIR / log_name,
                       timeout_s=timeout_s, env=_forwarded_env())
    result = runner.run_in_vm(req)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS_DIR / f"{log_name}.json", json.dumps(result.to_json(), indent=1,
                                                              default=str))
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
    return [sys.executable, "-m", "harness.cli", *argv, "--mode", "native",
            "--out", str(out_dir)]


def start_results_command(args: argparse.Namespace, stem: str, what: str) -> tuple[Path, Mode]:
    """The start of a command that leaves a results folder (matrix, stress, bench): the
    folder, the mode, and one line saying both and what will run."""
    out_dir = _out_dir(args, stem)
    mode, why = choose_mode(args.mode)
    print(f"rxe-power {args.command}: mode {mode.value} ({why}); {what}; results in {out_dir}",
          flush=True)
    return out_dir, mode


def _out_dir(args: argparse.Namespace, command: str) -> Path:
    if args.out:  # a file there, or a folder we cannot write: refused before any VM boots
        return make_dir(Path(args.out).absolute())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (RESULTS_DIR / f"{command}-{stamp}").absolute()


def split_csv(raw: list[str] | None) -> tuple[str, ...]:
    return tuple(x.strip() for r in (raw or []) for x in r.split(",") if x.strip())

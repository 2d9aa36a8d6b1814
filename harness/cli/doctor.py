"""`rxe-power doctor`: check what the harness needs; say how to fix what is missing.

One Finding (ok / warn / FAIL, detail, fix) per check. The checks take their inputs
(paths, a `which`, a `run`, finder functions) as parameters with real defaults, so
tests/unit/cli/test_doctor_unit.py runs each on any host. Nothing here boots a VM unless
`--probe-kvm` is given. Exit code: 0 without a FAIL, 1 with one.

This module is the command (which checks run, in what order, how they are shown); the
checks live in doctor_host_checks (this host) and doctor_vm_checks (the VM path), the
Finding and the bounded runner in doctor_findings. Their names are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from harness.cli.doctor_findings import (
    Finding,
    Ran,
    Runner,
    Status,
    Which,
    fail,
    ok,
    run_cmd,
    warn,
)
from harness.cli.doctor_host_checks import (
    DOCTOR_CMD_TIMEOUT_S,
    DOCTOR_IMPORT_TIMEOUT_S,
    NATIVE_FIX,
    PACKAGES,
    PYVERBS_FIX,
    PYVERBS_PROBE,
    check_kernel_clients,
    check_native,
    check_package,
    check_pyverbs,
    check_rdma,
    check_root,
    check_state_file,
    check_topology,
    dpkg_version,
    native_probe,
)
from harness.cli.doctor_vm_checks import check_guest_kernel, check_kvm, check_qemu, check_vm_tools
from harness.cli.launch import Subcommands
from harness.core.errors import RxePowerError
from harness.core.printer import Printer
from harness.core.settings import Mode, resolve
from harness.vm import accel as vm_accel
from harness.vm import tools as vm_tools

__all__ = [
    "DOCTOR_CMD_TIMEOUT_S", "DOCTOR_IMPORT_TIMEOUT_S", "NATIVE_FIX", "PACKAGES", "PYVERBS_FIX",
    "PYVERBS_PROBE", "Finding", "Ran", "Runner", "Status", "Which", "add_parser",
    "check_guest_kernel", "check_kernel_clients", "check_kvm", "check_mode", "check_native",
    "check_package", "check_pyverbs", "check_qemu", "check_rdma", "check_root",
    "check_state_file", "check_topology", "check_vm_tools", "cmd_doctor", "dpkg_version",
    "exit_code", "fail", "native_probe", "ok", "render", "run_checks", "run_cmd", "warn",
]


def check_mode(native_ok: bool, native_why: str, vm_ok: bool, vm_why: str,
               requested: str | None = None) -> Finding:
    """Which mode `rxe-power run/test` would use, and whether that path works."""
    try:
        setting = resolve("rxe-mode", requested)
    except RxePowerError as exc:
        return fail("mode", exc.problem, exc.fix)
    mode = setting.value
    if mode is Mode.AUTO:
        mode = Mode.NATIVE if native_ok else Mode.VM
    good, why = (native_ok, native_why) if mode is Mode.NATIVE else (vm_ok, vm_why)
    said = f"mode {mode} ({setting.value} from {setting.source}): {why}"
    if good:
        return ok("mode", f"rxe-power run/test would use {said}")
    if not native_ok and not vm_ok:
        return fail("mode", f"neither path is usable: {native_why}; VM: {vm_why}",
                    f"{NATIVE_FIX}; or fix the VM findings marked FAIL above")
    return fail("mode", f"{said}: not usable", NATIVE_FIX if mode is Mode.NATIVE else
                "fix the VM findings marked FAIL above, or use --mode auto")


def run_checks(probe_kvm: bool = False, mode: str | None = None) -> list[Finding]:
    native = check_native()
    native_ok = native.status is Status.OK
    kernel_f, kernel = check_guest_kernel()
    vm_fs = [check_qemu(), check_vm_tools(), kernel_f,
             check_kvm(kernel, shutil.which(vm_tools.QEMU_BINARY), probe=probe_kvm)]
    failed = [f for f in vm_fs if f.status is Status.FAIL]
    vm_why = failed[0].detail if failed or kernel is None else f"guest kernel {kernel.version}"
    try:
        vm_needed = not native_ok or resolve("rxe-mode", mode).value is Mode.VM
    except RxePowerError:
        vm_needed = True
    if not vm_needed:  # native works: a broken VM path only matters for --mode vm
        vm_fs = [replace(f, status=Status.WARN, detail=f"{f.detail} (only --mode vm needs it)")
                 if f.status is Status.FAIL else f for f in vm_fs]
    return [check_root(), native, *vm_fs, check_rdma(native_ok), check_pyverbs(),
            *(check_package(d, Status(s), u) for d, s, u in PACKAGES),
            check_topology(native_ok, os.geteuid() == 0), check_state_file(),
            check_kernel_clients(Path("/lib/modules", os.uname().release) if native_ok
                                 else kernel.modules_dir if kernel else None),
            check_mode(native_ok, native.detail, not failed, vm_why, mode)]


def render(findings: Sequence[Finding]) -> list[str]:
    """One line per finding (status, name, detail, and the fix if not ok), then a summary."""
    width = max((len(f.name) for f in findings), default=0)
    lines = [f"{f.status!s:<4}  {f.name:<{width}}  {f.detail}"
             + (f"; fix: {f.fix}" if f.fix and f.status is not Status.OK else "")
             for f in findings]
    n = {s: sum(f.status is s for f in findings) for s in Status}
    return [*lines, f"doctor: {n[Status.FAIL]} FAIL, {n[Status.WARN]} warn, {n[Status.OK]} ok"]


def exit_code(findings: Sequence[Finding]) -> int:
    return 1 if any(f.status is Status.FAIL for f in findings) else 0


def cmd_doctor(args: argparse.Namespace, out: Printer) -> int:
    findings = run_checks(getattr(args, "probe_kvm", False), getattr(args, "doctor_mode", None))
    if getattr(args, "json", False):
        out(json.dumps([f.to_json() for f in findings], indent=1))
    else:
        out("\n".join(render(findings)))
    return exit_code(findings)


def add_parser(subparsers: Subcommands) -> argparse.ArgumentParser:
    p = subparsers.add_parser("doctor", help="check what the harness needs; say how to fix it")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.add_argument("--probe-kvm", action="store_true", help="boot the short KVM probe if its "
                   f"verdict is not cached yet (at most {vm_accel.KVM_PROBE_TIMEOUT_S:g} s)")
    # dest is not `mode`: cli.main resolves args.mode itself and would exit 2 on a bad
    # RXE_POWER_MODE, which doctor must report as a finding instead
    p.add_argument("--mode", dest="doctor_mode", default=None,
                   help="judge this mode (auto, native or vm) instead of RXE_POWER_MODE")
    p.set_defaults(func=cmd_doctor)
    return p

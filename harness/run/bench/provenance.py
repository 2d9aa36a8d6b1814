"""What made a measurement: the command, the date, the project's commit (and whether the
tree had changes), the kernel, the machine, the package versions and the loaded rdma_rxe;
recorded at the top of a bench results file (docs/measurements/ keeps them)."""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.proc import run_bounded
from harness.system.rxe_module import classify, module_facts, our_build

REPO = Path(__file__).resolve().parents[3]
PROBE_TIMEOUT_S = 10.0  # one git or dpkg-query call
PACKAGES = ("perftest", "rdma-core", "ibverbs-providers")


def _out(argv: list[str]) -> str | None:
    try:
        res = run_bounded(argv, PROBE_TIMEOUT_S, step=shlex.join(argv),
                          bound_name="PROBE_TIMEOUT_S", outstanding="it had not exited")
    except (RxePowerError, OSError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def commit() -> dict[str, Any]:
    """HEAD of this checkout and whether tracked files differ from it."""
    head = _out(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = _out(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": head, "dirty": None if dirty is None else bool(dirty)}


def package_versions() -> dict[str, str | None]:
    return {p: _out(["dpkg-query", "-W", "-f", "${Version}", p]) for p in PACKAGES}


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def virtualization() -> dict[str, Any]:
    """Where this ran: the firmware's vendor and product (QEMU's say so), the CPU's
    hypervisor flag, and the clock source (under TCG the guest has no usable TSC: hpet,
    whose every read is a trap; clock_gettime then costs microseconds)."""
    flags = next((line.split(":", 1)[1].split() for line in
                  (_read("/proc/cpuinfo") or "").splitlines() if line.startswith("flags")), [])
    return {"sys_vendor": _read("/sys/class/dmi/id/sys_vendor"),
            "product_name": _read("/sys/class/dmi/id/product_name"),
            "hypervisor_flag": "hypervisor" in flags,
            "clocksource": _read("/sys/devices/system/clocksource/clocksource0/"
                                 "current_clocksource"),
            "rxe_power_in_vm": settings.in_vm()}


def provenance(argv: list[str]) -> dict[str, Any]:
    """The fields every bench results file starts with (the module's: rxe_module_now())."""
    u = os.uname()
    return {"command": shlex.join(argv),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **commit(),
            "kernel": u.release, "machine": u.machine, "virtualization": virtualization(),
            "nproc": os.cpu_count(), "load_start": list(os.getloadavg()),
            "packages": package_versions()}


def rxe_module_now() -> dict[str, Any]:
    """The loaded rdma_rxe: stock, ours (the disassociate build) or other, with its
    version, srcversion and taint."""
    facts = module_facts()
    try:
        ours = our_build()
    except RxePowerError:
        ours = None
    return {"kind": classify(facts, ours.srcversion if ours else None).value, **asdict(facts)}

"""What a bench results file records beside its typed provenance
(harness.system.provenance): the command, the date, the virtualization and clock source,
the load when it started; and the sha256 of a file it measured (the tracer)."""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from pathlib import Path
from typing import Any

from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.proc import run_bounded

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


def started(module: str, args: list[str]) -> dict[str, Any]:
    """What a bench results file records when its run starts, beside the run's typed
    provenance (harness.system.provenance: kernel, rdma_rxe, versions, commit, machine),
    which the file carries as `provenance`: the command, the date, where it ran
    (virtualization(): its clock source decides what a clock read costs) and the load."""
    return {"command": f"python -P -m {module} {shlex.join(args)}".strip(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "virtualization": virtualization(), "load_start": list(os.getloadavg())}

"""`rxe-power doctor`'s checks of the VM path: qemu, virtme-ng, a guest kernel with
rdma_rxe, and the accelerator VM runs get (kvm or tcg). Each takes its finder as a
parameter with the real default, so tests run it on any host."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from harness.cli.doctor_findings import Finding, Which, fail, ok, warn
from harness.core import settings
from harness.core.errors import RxePowerError
from harness.vm import accel as vm_accel
from harness.vm import kernel as vm_kernel
from harness.vm import tools as vm_tools


def check_qemu(which: Which = shutil.which) -> Finding:
    if path := which(vm_tools.QEMU_BINARY):
        return ok("qemu", f"{vm_tools.QEMU_BINARY} at {path}")
    return fail("qemu", f"{vm_tools.QEMU_BINARY} is not on PATH", "apt-get install qemu-system-x86")


def check_vm_tools(find: Callable[[], vm_tools.VmTools] = vm_tools.find_vm_tools) -> Finding:
    try:
        tools = find()
    except RxePowerError as exc:
        return fail("virtme-ng", exc.problem, exc.fix)
    return ok("virtme-ng", f"vng at {tools.vng}, static busybox at {tools.busybox}")


def check_guest_kernel(find: Callable[[], vm_kernel.GuestKernel] = vm_kernel.find_guest_kernel,
                       ) -> tuple[Finding, vm_kernel.GuestKernel | None]:
    """The kernel the VM would boot; also returned, for the kvm check."""
    try:
        k = find()
    except RxePowerError as exc:
        return fail("guest kernel", exc.problem, exc.fix), None
    return ok("guest kernel", f"{k.version} ({k.vmlinuz}) has rdma_rxe"), k


def _accel_finding(accel: str, reason: str, cache: Path) -> Finding:
    if accel == "kvm":
        return ok("kvm", f"VM runs use kvm: {reason}")
    fix = (f"unset {vm_accel.ACCEL_ENV} to let rxe-power probe kvm" if reason.startswith("forced")
           else f"nothing required (tcg works, slower); to retry kvm: rm {cache}")
    return warn("kvm", f"VM runs use tcg (slower): {reason}", fix)


def check_kvm(kernel: vm_kernel.GuestKernel | None, qemu: str | None, *,
              dev_kvm: Path = vm_accel.DEV_KVM,
              cache_path: Path | None = None, environ: Mapping[str, str] | None = None,
              probe: bool = False,
              choose: Callable[..., vm_accel.AccelChoice] = vm_accel.choose_accel,
              ) -> Finding:
    """The accelerator VM runs get: from the cache, or (probe=True) choose_accel itself."""
    if kernel is None or qemu is None:
        return warn("kvm", "not checked: needs qemu and a guest kernel", "fix those first")
    cache = cache_path if cache_path is not None else vm_accel.default_accel_cache_path()
    if probe or settings.vm_accel_override(environ):
        try:  # with RXE_POWER_VM_ACCEL set, choose_accel boots nothing
            choice = choose(kernel, qemu=Path(qemu), dev_kvm=dev_kvm, cache_path=cache)
        except RxePowerError as exc:
            return fail("kvm", exc.problem, exc.fix)
        return _accel_finding(choice.accel, choice.reason, cache)
    if not dev_kvm.exists():
        return warn("kvm", f"{dev_kvm} does not exist: VM runs use tcg (slower)",
                    "nothing required; for speed, enable KVM (nested virtualisation)")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return warn("kvm", f"{dev_kvm} is not read-writable by uid {os.geteuid()}: VM runs use "
                    "tcg", "run as root, or join group kvm")
    hit = vm_accel.load_accel_cache(cache).get(vm_accel.accel_cache_key(kernel, Path(qemu)))
    if hit is None:
        return ok("kvm", f"{dev_kvm} present; kvm not probed since boot (the first VM run "
                  "probes it, or: rxe-power doctor --probe-kvm)")
    return _accel_finding(hit["accel"], f"{hit['reason']} [cached in {cache}]", cache)

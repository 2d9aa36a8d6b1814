"""The guest kernel: the newest installed distribution kernel that ships rdma_rxe.

Environment:
    RXE_POWER_VM_KERNEL  path to a vmlinuz to boot instead of the newest one in /boot
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import NoRxe, SettingError
from harness.core.settings import VM_KERNEL_ENV, vm_kernel_override

KERNEL_ENV = VM_KERNEL_ENV
DEFAULT_BOOT_DIR = Path("/boot")
DEFAULT_MODULES_ROOT = Path("/lib/modules")
KERNEL_FIX = (
    "install a distribution kernel that ships rdma_rxe: on Debian "
    "`apt-get install linux-image-amd64`; on Ubuntu "
    "`apt-get install linux-image-generic linux-modules-extra-$(ver)`"
)
RXE_MODULE_NAMES = tuple(f"rdma_rxe.ko{sfx}" for sfx in ("", ".xz", ".zst", ".gz"))
RXE_MODULE_SUBDIR = Path("kernel/drivers/infiniband/sw/rxe")
_VERSION_CHUNK = re.compile(r"\d+|\D+")


@dataclass(frozen=True)
class GuestKernel:
    version: str
    vmlinuz: Path
    modules_dir: Path


def natural_version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing digit runs as numbers: 6.1.0-10 > 6.1.0-9, 6.10 > 6.9."""
    return tuple(
        (1, int(chunk), "") if chunk.isdigit() else (0, 0, chunk)
        for chunk in _VERSION_CHUNK.findall(version)
    )


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Versions in natural order, oldest first."""
    return sorted(versions, key=natural_version_key)


def find_rxe_module(modules_dir: Path) -> Path | None:
    """The rdma_rxe module file (any compression) anywhere below `modules_dir`, or None."""
    if not modules_dir.is_dir():
        return None
    for name in RXE_MODULE_NAMES:  # the usual place first: no tree walk
        candidate = modules_dir / RXE_MODULE_SUBDIR / name
        if candidate.is_file():
            return candidate
    for root, _dirs, files in os.walk(modules_dir):  # does not follow build/ symlinks
        for name in RXE_MODULE_NAMES:
            if name in files:
                return Path(root) / name
    return None


def read_bzimage_version(path: Path) -> str | None:
    """The version string an x86 bzImage carries in its setup header, or None."""
    try:
        with path.open("rb") as f:
            head = f.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            (offset,) = struct.unpack_from("<H", head, 0x20E)
            f.seek(offset + 0x200)
            raw = f.read(256)
    except OSError:
        return None
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
    return text.split()[0] if text else None


def _override_kernel(raw: str, modules_root: Path, source: str) -> GuestKernel:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise SettingError(
            f"{source}={raw!r}: no such file",
            f"point {KERNEL_ENV} at a vmlinuz-<version> file, or unset it to use the "
            f"newest kernel in {DEFAULT_BOOT_DIR} that has rdma_rxe",
        )
    if not os.access(path, os.R_OK):
        raise SettingError(
            f"{source}={raw!r} is not readable by uid {os.geteuid()}",
            f"sudo chmod 0644 {path} (Ubuntu installs kernels 0600), or run as root",
        )
    if path.name.startswith("vmlinuz-"):
        version = path.name.removeprefix("vmlinuz-")
    else:
        version = read_bzimage_version(path) or ""
    if not version:
        raise SettingError(
            f"{source}={raw!r}: cannot tell the kernel version (name is not "
            "vmlinuz-<version> and the file has no bzImage version string)",
            f"point {KERNEL_ENV} at a file named vmlinuz-<version>",
        )
    modules_dir = modules_root / version
    if find_rxe_module(modules_dir) is None:
        raise NoRxe(
            f"{source}={raw!r}: kernel {version} has no rdma_rxe module under {modules_dir}",
            f"unset {KERNEL_ENV}, or {KERNEL_FIX.replace('$(ver)', version)}",
        )
    return GuestKernel(version, path, modules_dir)


def find_guest_kernel(
    boot_dir: Path = DEFAULT_BOOT_DIR,
    modules_root: Path = DEFAULT_MODULES_ROOT,
    override: str | None = None,
) -> GuestKernel:
    """The newest `boot_dir/vmlinuz-<ver>` whose `modules_root/<ver>` has rdma_rxe.

    `override` (default: environment RXE_POWER_VM_KERNEL) names a vmlinuz to use
    instead; it is validated the same way.
    """
    source = "argument override"
    if override is None:
        override = vm_kernel_override()
        source = f"environment variable {KERNEL_ENV}"
    if override is not None:
        return _override_kernel(override, modules_root, source)

    images = {
        p.name.removeprefix("vmlinuz-"): p
        for p in (boot_dir.glob("vmlinuz-*") if boot_dir.is_dir() else [])
        if p.is_file()
    }
    without_rxe: list[str] = []
    unreadable: list[Path] = []
    for version in reversed(sort_versions(images)):
        modules_dir = modules_root / version
        if find_rxe_module(modules_dir) is None:
            without_rxe.append(version)
        elif not os.access(images[version], os.R_OK):
            unreadable.append(images[version])
        else:
            return GuestKernel(version, images[version], modules_dir)

    if unreadable:
        raise NoRxe(
            f"kernel images with rdma_rxe exist but are not readable by uid {os.geteuid()}: "
            + ", ".join(str(p) for p in unreadable),
            f"sudo chmod 0644 {unreadable[0]} (Ubuntu installs kernels 0600), or run as root",
        )
    if without_rxe:
        newest = without_rxe[0]
        raise NoRxe(
            f"no kernel in {boot_dir} has an rdma_rxe module in {modules_root} "
            f"(checked: {', '.join(without_rxe)})",
            f"{KERNEL_FIX.replace('$(ver)', newest)}; or set {KERNEL_ENV} to a vmlinuz",
        )
    raise NoRxe(
        f"no vmlinuz-* kernel image in {boot_dir} to boot in the VM",
        f"{KERNEL_FIX}; or set {KERNEL_ENV} to a vmlinuz",
    )

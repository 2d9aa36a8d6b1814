"""What a system sleep of the test guest needs from our kernel modules.

Two things, both built by ci/build-rxe-disassociate.sh (variant `pm`, the default):

- The guest's shared file systems must stay out of the sleep. The virtme-ng guest has
  no disk: its root is virtio-fs and its writable folders are 9p, each behind a PCI
  virtio transport. Linux 6.1's virtio-fs refuses to suspend (EOPNOTSUPP: the whole
  suspend aborts) and 9p has no freeze/restore (restored, its device is reset with no
  virtqueue: every later 9p request waits forever). rxe_power_fs_keep.ko marks those
  PCI devices so the PM core skips them (`devices=` names them; FsTransport says why).
- The mlx5 order: our rdma_rxe's platform device "rxe_power_pm" unregisters the
  ib_devices named in /sys/module/rdma_rxe/parameters/pm_unregister in the
  device-suspend phase and adds them again at resume. `armed` names them for one sleep
  and empties the parameter afterwards, whatever happens.

Decisions come from sysfs fields (driver links, module parameters), never from text.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import OsCallError, RxePowerError
from harness.system import rxe_module

FS_KEEP_MODULE = "rxe_power_fs_keep"
SYS_MODULES = Path("/sys/module")
SYS_VIRTIO = Path("/sys/bus/virtio/devices")
# virtio drivers of file systems that cannot go through a system sleep in Linux 6.1
UNSLEEPABLE_FS_DRIVERS = ("virtiofs", "9pnet_virtio")
PM_UNREGISTER = SYS_MODULES / rxe_module.MODULE / "parameters" / "pm_unregister"
REBUILD_FIX = (f"build our modules again (as root on the machine that runs the guest: "
               f"{rxe_module.BUILD_SCRIPT}) and run with --removal disassociate")


@dataclass(frozen=True)
class FsTransport:
    """A virtio device of a shared file system, and the PCI device it sits on."""

    virtio: str  # e.g. virtio2
    driver: str  # one of UNSLEEPABLE_FS_DRIVERS
    pci: str  # the parent transport, e.g. 0000:00:03.0


def fs_transports(sys_virtio: Path = SYS_VIRTIO) -> tuple[FsTransport, ...]:
    """The shared file systems' virtio devices whose PCI transports must stay awake."""
    if not sys_virtio.is_dir():
        return ()
    found = []
    for dev in sorted(sys_virtio.iterdir()):
        driver = (dev / "driver").resolve().name if (dev / "driver").exists() else ""
        if driver not in UNSLEEPABLE_FS_DRIVERS:
            continue
        parent = dev.resolve().parent
        if not (parent / "subsystem").resolve().name == "pci":
            raise RxePowerError(f"{dev.name} ({driver}) does not sit on a PCI device "
                                f"({parent}): rxe_power_fs_keep only keeps PCI transports",
                                "boot the guest on a PCI machine (vng without microvm)")
        found.append(FsTransport(dev.name, driver, parent.name))
    return tuple(found)


def fs_keep_path(release: str | None = None) -> Path:
    """rxe_power_fs_keep.ko, next to our rdma_rxe in the cache."""
    return rxe_module.our_build_path(release or os.uname().release).parent / \
        f"{FS_KEEP_MODULE}.ko"


@contextlib.contextmanager
def fs_kept(sys_modules: Path = SYS_MODULES,
            sys_virtio: Path = SYS_VIRTIO) -> Iterator[tuple[FsTransport, ...]]:
    """For the duration, the shared file systems' transports stay out of system sleep
    (rxe_power_fs_keep.ko loaded naming them, unloaded afterwards if loaded here);
    yields them (none outside such a guest: nothing is loaded)."""
    transports = fs_transports(sys_virtio)
    if not transports or (sys_modules / FS_KEEP_MODULE).is_dir():
        yield transports
        return
    path = fs_keep_path()
    if not path.is_file():
        raise RxePowerError(f"{path} does not exist: the guest's shared file systems "
                            f"({', '.join(t.driver for t in transports)}) would not survive "
                            "a device-level sleep", REBUILD_FIX)
    if not rxe_module.safe_path(path):
        raise RxePowerError(f"{path} (or a folder above it) is not root-owned or is "
                            "group/world-writable: refusing to load it",
                            f"remove {path.parent} as root and run {rxe_module.BUILD_SCRIPT}")
    devices = ",".join(sorted({t.pci for t in transports}))
    rxe_module.load_module_file(path, FS_KEEP_MODULE, f"devices={devices}")
    try:
        yield transports
    finally:
        rxe_module.unload_module(FS_KEEP_MODULE)


def can_arm(param: Path = PM_UNREGISTER) -> bool:
    """Does the loaded rdma_rxe have the mlx5-order sleep callbacks (our `pm` build)?"""
    return param.is_file()


@contextlib.contextmanager
def armed(devices: Sequence[str], param: Path = PM_UNREGISTER) -> Iterator[None]:
    """For the duration: the system sleep unregisters `devices` in its device-suspend
    phase and registers them again at resume. The parameter is emptied on the way out
    (a lone newline: the kernel side takes newlines as separators)."""
    if not can_arm(param):
        raise RxePowerError(f"{param} does not exist: the loaded rdma_rxe has no sleep "
                            "callbacks (not our `pm` build)", REBUILD_FIX)
    for name in devices:
        if not name or "," in name or not name.isprintable():
            raise ValueError(f"not an ib_device name: {name!r}")
    try:
        param.write_text(",".join(devices))
    except OSError as exc:
        raise OsCallError(f"cannot write {param}", exc.errno or 0, "run as root") from exc
    try:
        yield
    finally:
        # a newline, not "": an empty write never reaches a sysfs store (measured: the
        # parameter kept "rxe0" and the next sleep unregistered it again)
        param.write_text("\n")

"""The rdma_rxe kernel module: is it loaded, load it (or say how to get it)."""

from __future__ import annotations

import os
from pathlib import Path

from harness.core.errors import NoRxe
from harness.system import command

RXE_MODULE_SYSFS = Path("/sys/module/rdma_rxe")


def rxe_module_loaded() -> bool:
    return RXE_MODULE_SYSFS.is_dir()


def load_rxe_module() -> None:
    if rxe_module_loaded():
        return
    res = command.run(["modprobe", "rdma_rxe"], check=False)
    if res.returncode != 0 or not rxe_module_loaded():
        release = os.uname().release
        raise NoRxe(
            f"the running kernel {release} cannot load rdma_rxe: "
            f"{res.stderr.strip() or 'no module'}",
            "on Ubuntu: apt-get install linux-modules-extra-$(uname -r); "
            "or use the VM mode (rxe-power ... --mode vm, or RXE_POWER_MODE=vm), which boots "
            "a distro kernel that has the module in QEMU",
        )

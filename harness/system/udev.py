"""Wait for udev to finish the events of a device we just made.

A new block device (an nvme-rdma namespace) makes udev run its rules' programs (blkid
and friends read the disk). Beside a busy CPU those reads come late: in CI one read of
blkid's (LBA 1024, one block) was still in flight on the "idle" controller when the
transition began, and the delete waited out nvme_core's I/O timeout (30 s) before its
own shutdown command (nvme_rdma_delete_ctrl -> nvme_shutdown_ctrl). So a scenario that
means to start from a known set of I/O waits for udev's queue to empty first.

    settle()   # bounded by UDEV_SETTLE_TIMEOUT_S; a no-op where no udevd runs
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.core.errors import BoundExceeded
from harness.core.proc import run_bounded

UDEV_SETTLE_TIMEOUT_S = 60.0  # udev's queue empty after a new device (TCG beside a hog)
UDEV_CONTROL = Path("/run/udev/control")  # udevd's socket: it runs
UDEV_QUEUE = Path("/run/udev/queue")  # exists while events are queued (systemd >= 247)


def settle(timeout_s: float = UDEV_SETTLE_TIMEOUT_S) -> bool:
    """Wait until udev has handled every queued event. False: no udevd here (nothing to
    wait for). BoundExceeded when the queue is still busy after the bound."""
    udevadm = shutil.which("udevadm", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if udevadm is None or not UDEV_CONTROL.exists():
        return False
    outstanding = "udev's event queue was not empty (a rule's program still running)"
    # udevadm's own bound a little inside ours, so that it reports before it is killed
    res = run_bounded([udevadm, "settle", f"--timeout={max(1, int(timeout_s) - 2)}"],
                      timeout_s, step="udevadm settle", bound_name="UDEV_SETTLE_TIMEOUT_S",
                      outstanding=outstanding)
    if res.returncode != 0 and UDEV_QUEUE.exists():
        raise BoundExceeded("udevadm settle", "UDEV_SETTLE_TIMEOUT_S", timeout_s,
                            f"{outstanding}: {res.stderr.strip()[:200]}")
    return True

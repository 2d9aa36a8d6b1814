"""Deliberately bad client policies, loaded by the worker as `tests.helpers.bad_clients:X`.

They behave like fail-fast (quiesce, release, reconnect) and add one defect each, so
that `rxe-power stress` has something real to notice.
"""

from __future__ import annotations

from clients.core import ClientCore
from clients.fail_fast import FailFast
from harness.core.device import DeviceInfo

KMSG_LINE = "<3>rdma_rxe: rxe-power test: injected error line from a client\n"


class Leaky(FailFast):
    """Leaks one open file per resume (and 2 MiB of touched memory): fds climb per cycle."""

    name = "leaky"

    def __init__(self) -> None:
        self.kept: list[object] = []

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None:
        self.kept.append(open("/dev/null"))  # noqa: SIM115 - the leak is the point
        self.kept.append(bytes(range(256)) * (8 << 10))
        super().on_resume(core, info)


class KernelNoise(FailFast):
    """On its second resume, writes an error-level line naming rdma_rxe into the kernel
    log through /dev/kmsg (as a misbehaving driver would log), once."""

    name = "kernel-noise"

    def __init__(self) -> None:
        self.resumes = 0

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None:
        self.resumes += 1
        if self.resumes == 2:
            with open("/dev/kmsg", "w") as fh:
                fh.write(KMSG_LINE)
            core.note("wrote to the kernel log")
        super().on_resume(core, info)

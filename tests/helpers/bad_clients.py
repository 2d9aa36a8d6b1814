"""Deliberately bad client policies, loaded by the worker as `tests.helpers.bad_clients:X`.

They behave like fail-fast (quiesce, release, reconnect) and add one defect each, so
that `rxe-power stress` has something real to notice; HoldsTheDevice keeps the device
open across the delete (held deletes, for stress).
"""

from __future__ import annotations

import time

from clients.userspace.core import ClientCore
from clients.userspace.fail_fast import FailFast
from clients.userspace.queue_replay import QueueReplay
from harness.core.device import DeviceInfo
from power.notify import SuspendReply

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


class LeaksPeerQps(FailFast):
    """Asks the peer agent for one more QP on every resume and never destroys it: the peer
    device's objects climb per cycle, held by the agent for this (live) client."""

    name = "leaks-peer-qps"

    def __init__(self) -> None:
        self.peer_qps: list[int] = []

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None:
        rep = core.agent.request("create_qp", 20.0, mr_size=1 << 16, recv_slots=4,
                                 slot_size=4096, write_slots=0)
        self.peer_qps.append(int(rep["qp_id"]))
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


class HoldsTheDevice(QueueReplay):
    """Keeps rxe0 open across the delete (the cooperative policies close it on PORT_ERR):
    on an error it takes its requests back, requeued, and stops posting, but keeps the
    device; on resume it closes the old device and opens the new one. Under --removal
    disassociate every delete must complete with it holding (it gets DEVICE_FATAL); under
    block the shim must end it. For stress runs of held deletes."""

    name = "holds-the-device"

    def stop(self, core: ClientCore, why: str) -> None:
        if core.device is None or not core.admitting:
            return
        core.admitting = False
        n = core.flush_all(requeue=True)
        core.metrics.quiesced_ns = time.monotonic_ns()
        core.metrics.quiesce = core.metrics.quiesce or f"kept the device on {why}: {n} requeued"

    def on_suspend(self, core: ClientCore, deadline_s: float) -> SuspendReply | None:
        core.note("suspend ignored")
        return None

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None:
        core.metrics.resume_ns = time.monotonic_ns()
        if core.device is not None:
            core.release()  # the old device's context (disassociated, or a dead QP's)
        core.open(info)
        core.metrics.reconnects += 1
        core.admitting = True

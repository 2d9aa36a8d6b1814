"""fail-fast: stops at the first error, surfaces it to its caller, reconnects after resume.

On the first error from the verbs layer (or the device vanishing, DEVICE_FATAL,
or a suspend notice) it stops admitting requests, moves its QPs to ERR so every
outstanding request comes back flushed (those are the failures its caller sees;
after DEVICE_FATAL nothing comes back, and it fails them as abandoned), releases
the device, and answers released. With open-loop arrivals it then refuses to its
caller every request that waits or arrives while it has no device. After
resume_complete it reopens the device it is told about and carries on with the
requests not yet posted. If the peer
cannot be reached then (its agent is gone), it releases the device and fails
what is left to its caller with that reason, at once (queue-replay and graceful
inherit this).
"""

from __future__ import annotations

import time

from clients.userspace.connection import PeerUnreachable
from clients.userspace.core import ClientCore
from harness.core.device import DeviceInfo
from power.notify import SuspendReply


class FailFast:
    name = "fail-fast"
    requeue = False

    def stop(self, core: ClientCore, why: str) -> None:
        if core.device is None:
            return
        core.admitting = False
        n = core.flush_all(requeue=self.requeue)
        core.release()
        if not self.requeue:  # open loop: what waits, and what arrives until resume, fails
            core.refuse(f"refused: the client has no device ({why})")
        core.metrics.quiesced_ns = time.monotonic_ns()
        core.metrics.quiesce = core.metrics.quiesce or f"aborted on {why}: {n} flushed"

    def on_suspend(self, core: ClientCore, deadline_s: float) -> SuspendReply | None:
        core.metrics.suspend_ns = time.monotonic_ns()
        self.stop(core, "suspend notice")
        return SuspendReply.release()

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None:
        core.metrics.resume_ns = time.monotonic_ns()
        if core.device is None:
            try:
                core.open(info)
            except PeerUnreachable as exc:
                self.give_up(core, f"reconnect failed: {exc.problem}")
                return
            core.metrics.reconnects += 1
        core.refusing = ""
        core.admitting = True

    def give_up(self, core: ClientCore, why: str) -> None:
        """No QP can be connected again (the peer is gone): let go of the device and
        refuse what is still queued to the application, with the reason, at once, rather
        than wait for a deadline holding the device."""
        core.release()
        core.metrics.quiesce = core.metrics.quiesce or why
        core.metrics.notes.append(why)
        core.note("gave up", reason=why)
        core.refusing = why  # open loop: later arrivals too
        core.fail_queue(why)

    def on_error(self, core: ClientCore, what: str) -> None:
        self.stop(core, what)

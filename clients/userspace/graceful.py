"""graceful: on notice, stop admitting, drain, say goodbye to the peer, release; reconnect.

On suspend_prepare it stops admitting new requests, waits (within the deadline)
for the ones in flight to complete normally, sends the peer an orderly
disconnect (a SEND with the goodbye immediate, since this is a raw-verbs
connection), releases the device and answers released. If the device goes
first (an error, PORT_ERR, or the device vanishing before any notice) it had no
chance to quiesce: it flushes like fail-fast, records that, and waits for the
resume. After resume_complete it reconnects and carries on.
"""

from __future__ import annotations

import time

from clients.userspace.core import ClientCore
from clients.userspace.fail_fast import FailFast
from power.notify import SuspendReply

DRAIN_SHARE = 0.8  # of the notice's deadline, for in-flight requests to finish


class Graceful(FailFast):
    name = "graceful"
    requeue = True  # requests not yet posted are simply held; flushed ones go back in line

    def on_suspend(self, core: ClientCore, deadline_s: float) -> SuspendReply | None:
        core.metrics.suspend_ns = time.monotonic_ns()
        if core.device is None:  # already gone (hca-first): nothing left to quiesce
            return SuspendReply.release()
        drained = core.drain(deadline_s * DRAIN_SHARE)
        if drained and core.goodbye():
            core.metrics.quiesce = "drained, goodbye sent"
        else:
            n = core.flush_all(requeue=True)
            core.metrics.quiesce = f"drain incomplete: {n} flushed"
        core.release()
        core.metrics.quiesced_ns = time.monotonic_ns()
        return SuspendReply.release()

    def on_error(self, core: ClientCore, what: str) -> None:
        if core.device is not None and core.metrics.suspend_ns is None:
            core.metrics.quiesce = f"no chance to quiesce: the device went first ({what})"
        self.stop(core, what)

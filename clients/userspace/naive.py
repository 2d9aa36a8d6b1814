"""naive: keeps posting across the transition and reports what the verbs layer does.

It takes no notice of suspend_prepare (no answer), keeps the device open, and
never reconnects: every request after a failure meets the broken QP and the
ledger shows what verbs made of it (rejected at post, error, flushed). On rxe a
naive client that holds the device blocks a standby: the sleep is vetoed, or the
shim (--on-veto force) terminates it.
"""

from __future__ import annotations

from clients.userspace.core import ClientCore
from harness.core.device import DeviceInfo
from power.notify import SuspendReply


class Naive:
    name = "naive"

    def on_suspend(self, core: ClientCore, deadline_s: float) -> SuspendReply | None:
        core.note("suspend ignored")
        return None

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None:
        core.note("resume ignored")

    def on_error(self, core: ClientCore, what: str) -> None:
        for conn in core.conns.values():
            conn.broken = False  # keep posting into the broken QP: that is the point

"""The mutable state of one transition run of the power shim (power.shim)."""

from __future__ import annotations

import threading
import time
from typing import Any

from power.result import StepRecord, TransitionRequest
from power.timeline import Timeline
from power.veto import VetoReport


class TransitionRun:
    """The mutable state of one transition run."""

    def __init__(self, req: TransitionRequest, tl: Timeline) -> None:
        if req.hold_ms is None:
            raise ValueError("a transition runs a resolved request (TransitionRequest.resolved)")
        self.req = req
        self.hold_ms: int = req.hold_ms
        self.tl = tl
        self.steps: list[StepRecord] = []
        self.answers: list[dict[str, Any]] = []
        self.reasons: list[str] = []
        self.veto: VetoReport | None = None
        self.vetoed = False
        self.forced = False
        self.failed = False
        self.peer_states: list[str] = []
        self.device_after: dict[str, Any] | None = None
        self.events = threading.Condition()  # notified per async event (see wait_event)
        self.seen: list[tuple[str, str, int]] = []  # (dev, event, t_ns)

    def wait_event(self, dev: str, name: str, since_ns: int, timeout_s: float) -> float | None:
        """Seconds until `dev` delivered `name` (stamped after since_ns) to its clients, as
        the async event reader saw it; None if not within timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self.events:
            while True:
                hit = [t for d, n, t in self.seen if d == dev and n == name and t >= since_ns]
                if hit:
                    return (min(hit) - since_ns) / 1e9
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.events.wait(left)

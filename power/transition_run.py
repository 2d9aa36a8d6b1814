"""The mutable state of one transition run of the power shim (power.shim), and its verdict."""

from __future__ import annotations

import threading
import time
from typing import Any

from power.kmsg import KmsgScan
from power.result import StepRecord, TransitionRequest, TransitionResult, Verdict
from power.timeline import EntryKind, Timeline
from power.veto import VetoReport

BAD_PEER_EVENTS = ("PORT_ERR", "DEVICE_FATAL")  # the peer HCA must not see these


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

    def verdict(self, scan: KmsgScan, device_before: dict[str, Any], not_restored: list[str],
                peer_dev: str) -> TransitionResult:
        """The run's result: FAILED when a step failed, the peer HCA `peer_dev` left ACTIVE
        or saw BAD_PEER_EVENTS, the kernel log after the marker has a hit, or the local
        side was not restored (unless vetoed); else VETOED, FORCED or COMPLETED."""
        peer_events = [e for e in self.tl.of_kind(EntryKind.ASYNC_EVENT)
                       if e.source == peer_dev and e.what in BAD_PEER_EVENTS]
        peer_ok = all(s == "ACTIVE" for s in self.peer_states) and not peer_events
        reasons = list(self.reasons)
        if not peer_ok:
            reasons.append(f"the peer HCA {peer_dev} did not stay ACTIVE: states "
                           f"{sorted(set(self.peer_states))}, events "
                           f"{[e.what for e in peer_events]}")
        if not scan.ok:
            reasons.append(f"kernel log after marker {scan.marker.token}: "
                           + ("; ".join(f"{h.pattern}: {h.record.message}" for h in scan.hits)
                              or "records lost (ring buffer wrapped)"))
        reasons += [f"not restored: {p}" for p in not_restored]
        if self.failed or not peer_ok or not scan.ok or (not_restored and not self.vetoed):
            verdict = Verdict.FAILED
        elif self.vetoed:
            verdict = Verdict.VETOED
        elif self.forced:
            verdict = Verdict.FORCED
        else:
            verdict = Verdict.COMPLETED
        return TransitionResult(self.req, verdict, reasons, self.steps, self.tl, self.answers,
                                self.veto, scan, peer_ok, device_before, self.device_after,
                                not_restored)

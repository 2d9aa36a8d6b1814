"""The application's side of a client's hot path: the requests it hands over, the queue
they wait in, and the journal a crash leaves behind.

AppQueue holds the round's requests, their ledger (a Recorder of flat arrays) and the
application queue: closed loop, every request is there from the start; open loop
(spec.arrivals), requests arrive after go() at their own pace, whatever the device is doing,
and while `refusing` is set they are refused to the application at once. Every arrival,
posting, completion and refusal is written to the journal (flush_journal) before anything
can lose it. ClientIoPath (clients.userspace.io_path) posts from the queue and takes the
completions.
"""

from __future__ import annotations

import collections
import time
from typing import IO, Any

from harness.workload.journal import journal_lines, note_line
from harness.workload.recorder import Recorder
from harness.workload.spec import AppRequest, Arrivals, WorkloadSpec

MAX_EVENTS = 2000  # notes kept in memory per round for the timeline (the journal has all)


class AppQueue:
    """The round's requests as the application hands them over (see the module docstring)."""

    def __init__(self, spec: WorkloadSpec, journal: IO[str] | None) -> None:
        self.spec = spec.validate()
        self.requests: list[AppRequest] = spec.requests()
        self.ledger = Recorder(self.requests)
        self.queue: collections.deque[int] = collections.deque()
        self.journal = journal
        self._jpend: list[int] = []  # seq posted (+) or completed (-), not yet journaled
        self._jerr: dict[int, str] = {}  # request -> status of its error completion, pending
        self._jrefused: list[int] = []  # refused to the application, not yet journaled
        self._jarrived = 0  # the arrivals journaled so far
        self.open_loop = False
        self.start_queue()
        self.admitting = True
        self.generation = 0  # the connections' (journaled with each posting)
        self.events: list[dict[str, Any]] = []  # notes other than posting/completion
        self.refusing = ""  # set: requests arriving now are refused to the app (this reason)

    # --- arrivals (spec.arrivals) -----------------------------------------------------------

    def start_queue(self) -> None:
        """The round's application queue: closed loop, every request is there from the
        start and taken when the client can; open loop, requests arrive after go()."""
        self.open_loop = self.spec.arrivals is Arrivals.OPEN
        self.queue = collections.deque() if self.open_loop \
            else collections.deque(range(len(self.requests)))
        self.t0_ns: int | None = None  # go
        self.n_arrived = 0  # open loop: requests [0, n_arrived) have arrived
        self.held_below = 0  # n_arrived at the last reopen (harness.workload.outcomes)
        self._jarrived = 0

    def go(self) -> None:
        """The application starts handing requests over."""
        self.admitting = True
        if self.t0_ns is None:
            self.t0_ns = time.monotonic_ns()
            self.note("go", t0_ns=self.t0_ns, arrivals=self.spec.arrivals.value)

    def arrive(self, now_ns: int) -> None:
        """Open loop: the requests due by `now_ns` arrive, whatever the device is doing;
        each waits in the queue, or is refused at once while `refusing` is set."""
        if not self.open_loop or self.t0_ns is None:
            return
        due = min(self.spec.arrived_by(now_ns - self.t0_ns), len(self.requests))
        t0, spec, ledger = self.t0_ns, self.spec, self.ledger
        for i in range(self.n_arrived, due):
            ledger.arrived(i, t0 + spec.arrival_offset_ns(i))
            if self.refusing:
                ledger.failed_to_app(i, self.refusing)
                self._jrefused.append(i)
            else:
                self.queue.append(i)
        self.n_arrived = max(self.n_arrived, due)

    def stop_arrivals(self) -> dict[str, Any]:
        """The application stops handing requests over (a RESUMED workload, at the
        controller's word): what has arrived by now (open loop) or has been taken (closed
        loop: posted, refused or replayed at least once) is the round's workload; the rest
        never existed for the application and leaves the ledger. `ran_dry`: every request
        of the cap had already been issued, so the workload ended before it was stopped."""
        if self.open_loop:
            self.arrive(time.monotonic_ns())
            issued = self.n_arrived
        else:
            untouched = [i for i in self.queue if not self.ledger.natt[i]
                         and not self.ledger.outcome[i]]
            issued = min(untouched, default=len(self.requests))
            self.queue = collections.deque(i for i in self.queue if i < issued)
        ran_dry = issued >= len(self.requests)
        if not ran_dry:
            self.ledger.truncate(issued)
            self.requests = self.requests[:issued]
        self.note("stopped", upto=issued, ran_dry=ran_dry)
        return {"issued": issued, "ran_dry": ran_dry}

    def refuse(self, reason: str) -> None:
        """Refuse to the application what waits in the queue and, until refusing is
        cleared, what arrives (open loop; closed loop: the queue is left for later)."""
        if not self.open_loop:
            return
        self.arrive(time.monotonic_ns())
        self.refusing = reason
        self.fail_queue(reason)

    def fail_queue(self, reason: str) -> None:
        """Refuse every request still queued to the application."""
        while self.queue:
            i = self.queue.popleft()
            self.ledger.failed_to_app(i, reason)
            self._jrefused.append(i)
        self.flush_journal(reason=reason)

    # --- journal (what a crash leaves behind) -----------------------------------------------

    def note(self, what: str, **detail: Any) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append({"t_ns": time.monotonic_ns(), "event": what, **detail})
        if self.journal is not None:
            self.flush_journal()
            self.journal.write(note_line(time.monotonic_ns(), what, detail))
            self.journal.flush()

    def restart_journal(self, what: str, **detail: Any) -> None:
        """Empty the journal and start it with the note `what`: the rounds before were read
        and accounted, and only the current one is ever read back (a stress run that kept
        them all had its controller read every round again each cycle: it grew by ~0.5 MB
        a cycle, 42 -> 60 MB in 38 cycles)."""
        if self.journal is not None:
            self.flush_journal()
            self.journal.seek(0)
            self.journal.truncate()
        self.note(what, **detail)

    def flush_journal(self, reason: str = "") -> None:
        """Write the arrivals, postings, completions and refusals since the last write, in
        order, in one write: {"event": "posted"|"completed", "detail": {"reqs": [...]}}.
        It runs before every ibv_post_send (the postings are written ahead of the post),
        after every batch of completions and before the worker waits: the journal lives in
        memory the controller shares (a memfd, harness.run.scenario), so what a worker
        killed at any moment leaves there is everything it had posted and every
        completion it had taken (ClientWorker.journal_ledger reads it)."""
        pend, refused = self._jpend, self._jrefused
        arrived = self.n_arrived if self.n_arrived > self._jarrived else 0
        if self.journal is None or not (pend or refused or arrived):
            self._jpend, self._jrefused, self._jerr = [], [], {}
            return
        t_ns = time.monotonic_ns()
        text = note_line(t_ns, "arrived", {"upto": arrived}) if arrived else ""
        if pend:
            text += journal_lines(pend, t_ns, self.generation, self._jerr)
        if refused:  # final outcomes, never posted after: after the runs is in order
            text += note_line(t_ns, "refused", {"reqs": refused, "reason": reason or
                                                self.refusing or "refused"})
        self._jpend, self._jrefused, self._jerr = [], [], {}
        self._jarrived = max(self._jarrived, self.n_arrived)
        self.journal.write(text)
        self.journal.flush()

"""What a traced program's ledger holds (harness.workload.traced_ledger builds it from a
tracer log): its requests (TracedRequest) with their outcomes and what ended each
(EndedBy), its QPs (QpTrack), the findings the ledger names (Finding), and the whole of
one process (ProcessLedger).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

from harness.workload.ledger import Outcome, PeerView
from harness.workload.tracelog import WrOpcode


class EndedBy(StrEnum):
    """What gave a request its outcome (decisions read this field, not `reason`)."""
    COMPLETION = "completion"  # its own completion
    LATER_COMPLETION = "later-completion"  # unsignalled: a later completion on its QP
    POST_FAILED = "post-failed"  # the post call (or ibv_wr_complete/abort) refused it
    COMPLETION_SKIPPED = "completion-skipped"  # signalled, a later one completed first
    PROGRAM_EXITED = "program-exited"  # outstanding at a normal exit
    QP_DESTROYED = "qp-destroyed"  # outstanding when the program destroyed its QP
    QP_NUM_REUSED = "qp-num-reused"  # outstanding when a new QP got its QP's number
    LOG_ENDED = "log-ended"  # outstanding when the log ended: the process was killed


@dataclass
class TracedRequest:
    seq: int  # post order in this process
    qp_num: int
    qp_gen: int  # the how-many-th QP with this number in this process (numbers are reused)
    wr_id: int
    opcode: WrOpcode
    length: int
    signalled: bool
    wr_api: bool  # built with the ibv_qp_ex wr_* API
    posted_ns: int
    receive: bool = False
    imm: int = 0
    outcome: Outcome | None = None
    status: str = ""  # the WC status name, when a completion (or an implied one) ended it
    errno: int | None = None  # rejected at post
    completed_ns: int | None = None
    byte_len: int | None = None
    reason: str = ""
    ended_by: EndedBy | None = None
    peer: PeerView | None = None


@dataclass
class QpTrack:
    qp_num: int
    gen: int
    sig_all: bool
    wr_api_traced: bool
    created_ex: bool
    states: list[str] = field(default_factory=list)
    dest_qp_num: int | None = None
    sq: deque[TracedRequest] = field(default_factory=deque)
    rq: deque[TracedRequest] = field(default_factory=deque)
    receives_done: list[TracedRequest] = field(default_factory=list)
    sends: list[TracedRequest] = field(default_factory=list)  # every send-queue request
    context: int = 0  # the ibv_context it was created on (an address in the process)
    error_status: str = ""  # the first error completion's status since the last reset
    posted_after_error: int = 0


class FindingKind(StrEnum):
    UNMATCHED_COMPLETION = "unmatched-completion"  # a completion no request explains
    FAILED_CALL = "failed-call"  # a verbs call failed (errno)
    ASYNC_EVENT = "async-event"
    NOT_TRACED = "not-traced"  # a part of the program's work the tracer did not see
    LOG_NOT_CLOSED = "log-not-closed"  # the process did not exit normally
    POSTED_AFTER_ERROR = "posted-after-error"  # kept posting on a QP after an error
    # completion without resetting it (the error was ignored)


@dataclass(frozen=True)
class Finding:
    """Something the program did or met that the ledger should name."""
    what: FindingKind
    detail: str
    t_ns: int = 0


@dataclass
class ProcessLedger:
    pid: int
    cmdline: list[str]
    closed: bool  # the process exited normally (the log has its END record)
    requests: list[TracedRequest] = field(default_factory=list)
    qps: list[QpTrack] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # opened, in order
    closes: int = 0
    async_events: list[str] = field(default_factory=list)
    failed_calls: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def sends(self) -> list[TracedRequest]:
        return [r for r in self.requests if not r.receive]

    def receives(self) -> list[TracedRequest]:
        return [r for r in self.requests if r.receive]

    def counts(self, receive: bool = False) -> Counter[str]:
        return Counter(r.outcome.value if r.outcome else "unaccounted"
                       for r in self.requests if r.receive == receive)

    def unaccounted(self) -> list[TracedRequest]:
        return [r for r in self.requests if r.outcome is None]

    def unmatched_completions(self) -> list[Finding]:
        return [f for f in self.findings if f.what is FindingKind.UNMATCHED_COMPLETION]

    def posted_after_error(self) -> int:
        """Requests posted on a QP after it had an error completion and before the
        program reset or recreated it."""
        return sum(q.posted_after_error for q in self.qps)

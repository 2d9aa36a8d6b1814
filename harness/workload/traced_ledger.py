"""The per-request ledger of a traced program (a tracer log: harness/workload/tracelog.py).

Every request the program posted ends with one of harness.ledger's outcomes:
  completed-ok       its completion (or, unsignalled, a later signalled success on the
                     same QP: RC completes a QP's send queue in order) said SUCCESS
  completed-error    a completion with an error status (named), not a flush
  flushed            WR_FLUSH_ERR
  rejected-at-post   the post call (or ibv_wr_complete) refused it (errno)
  lost               never completed: outstanding when the program exited, when its QP
                     was destroyed, or when the log ended (the process was killed)
Completions are matched to requests per QP and in order (the first outstanding request
with the completion's wr_id), never by wr_id alone, so programs that reuse wr_ids (perftest
posts every WR of a QP with the same one) are accounted correctly.

Where the peer program is traced too, traced_peer.match_peer() pairs each QP with the peer QP it was
connected to (the dest_qp_num each side gave ibv_modify_qp) and lines up the sender's
SENDs and WRITE_WITH_IMMs with the receiver's receive completions, in order: delivered
once, missing, and, by count, duplicated. What the ledger holds (TracedRequest, QpTrack,
Finding, ProcessLedger) is in traced_types.py.
"""

from __future__ import annotations

from collections import Counter, deque

from harness.rdma.names import QpState, async_event_name, wc_status_name
from harness.workload.ledger import Outcome
from harness.workload.traced_types import (
    EndedBy,
    Finding,
    FindingKind,
    ProcessLedger,
    QpTrack,
    TracedRequest,
)
from harness.workload.tracelog import (
    NO_INDEX,
    NO_QPN,
    NO_STATE,
    QPF_CREATED_EX,
    QPF_SQ_SIG_ALL,
    QPF_WR_API_TRACED,
    WCF_QPN_UNKNOWN,
    WRF_SIGNALED,
    WRF_WR_API,
    Call,
    PostKind,
    Record,
    RecType,
    TraceLog,
    WrOpcode,
)

WC_SUCCESS = 0
WC_FLUSH = 5
WC_RECV = 128  # wc opcodes from here on are receive completions


def _end(req: TracedRequest, outcome: Outcome, by: EndedBy, status: str, t_ns: int | None,
         reason: str = "", byte_len: int | None = None) -> None:
    req.outcome, req.status, req.completed_ns, req.reason = outcome, status, t_ns, reason
    req.ended_by, req.byte_len = by, byte_len


def _outcome_of(status: int) -> Outcome:
    if status == WC_SUCCESS:
        return Outcome.COMPLETED_OK
    return Outcome.FLUSHED if status == WC_FLUSH else Outcome.COMPLETED_ERROR


def _opcode(value: int) -> WrOpcode:
    try:
        return WrOpcode(value)
    except ValueError:
        return WrOpcode.DRIVER1


class _Builder:
    def __init__(self, log: TraceLog) -> None:
        self.log = log
        self.led = ProcessLedger(log.pid, log.cmdline, log.closed)
        # a QP is (its context, its number): rxe numbers QPs per device. Format 1 logs do
        # not name the context in POST records: there it is 0 throughout
        self.v2 = log.header.version >= 2
        self.qps: dict[tuple[int, int], QpTrack] = {}
        self.gens: Counter[tuple[int, int]] = Counter()
        self.qp_keys: dict[int, tuple[int, int]] = {}  # QP address -> key (QP_CREATE)
        self.cq_ctx: dict[int, int] = {}  # CQ address -> its context (CQ_CREATE)
        self.chains: dict[int, list[tuple[TracedRequest, deque[TracedRequest]]]] = {}
        self.srqs: dict[int, deque[TracedRequest]] = {}

    def find(self, f: Finding) -> None:
        self.led.findings.append(f)

    def qp(self, key: tuple[int, int], t_ns: int) -> QpTrack:
        if key not in self.qps:  # created before the tracer saw it (or by a path not followed)
            self.find(Finding(FindingKind.NOT_TRACED,
                              f"QP {key[1]} was used but its creation was not seen", t_ns))
            self._new_qp(key, sig_all=False, wr_api=False, ex=False)
        return self.qps[key]

    def _new_qp(self, key: tuple[int, int], sig_all: bool, wr_api: bool, ex: bool) -> QpTrack:
        self.gens[key] += 1
        track = QpTrack(key[1], self.gens[key], sig_all, wr_api, ex, context=key[0])
        self.qps[key] = track
        self.led.qps.append(track)
        return track

    def key_of(self, rec: Record) -> tuple[int, int]:
        """The QP a QP_MODIFY/QP_DESTROY record (obj = the QP's address) is about."""
        return self.qp_keys.get(rec.obj, (0, rec.qp_num))

    def post(self, rec: Record) -> None:
        receive = rec.type is not RecType.POST_SEND
        if rec.type is RecType.POST_SRQ_RECV:
            queue = self.srqs.setdefault(rec.aux2, deque())
            qp_num, gen = 0, 0
        else:
            track = self.qp((rec.aux2 if self.v2 else 0, rec.qp_num), rec.t_ns)
            queue = track.rq if receive else track.sq
            qp_num, gen = track.qp_num, track.gen
        req = TracedRequest(len(self.led.requests), qp_num, gen, rec.wr_id,
                            WrOpcode.RECV if receive else _opcode(rec.opcode), rec.length,
                            receive or bool(rec.flags & WRF_SIGNALED),
                            bool(rec.flags & WRF_WR_API),
                            rec.t_ns, receive=receive,
                            imm=0 if receive else rec.result & 0xFFFFFFFF if self.v2 else rec.aux2)
        self.led.requests.append(req)
        queue.append(req)
        if not receive:
            track.sends.append(req)
        if rec.type is not RecType.POST_SRQ_RECV and track.error_status:
            if not track.posted_after_error:
                self.find(Finding(FindingKind.POSTED_AFTER_ERROR, f"QP {track.qp_num}: "
                                  f"posted after a {track.error_status} completion without "
                                  "resetting the QP", rec.t_ns))
            track.posted_after_error += 1
        self.chains.setdefault(rec.obj, []).append((req, queue))

    def post_fail(self, rec: Record) -> None:
        chain = self.chains.get(rec.obj, [])
        kind = PostKind(rec.opcode) if rec.opcode in PostKind._value2member_map_ else None
        whole = kind in (PostKind.WR_COMPLETE, PostKind.WR_ABORT) or rec.aux == NO_INDEX
        if kind is PostKind.WR_COMPLETE:
            what = "ibv_wr_complete failed: no WR of the batch was posted"
        elif kind is PostKind.WR_ABORT:
            what = "ibv_wr_abort discarded the batch"
        else:
            what = "the post call failed and bad_wr was not in the chain" if whole else \
                "the post call failed at this WR (bad_wr)"
        for index, (req, queue) in enumerate(chain):
            if whole or index >= rec.aux:
                reason = what if (whole or index == rec.aux) else \
                    "not posted: after the WR the post call failed at"
                _end(req, Outcome.REJECTED_AT_POST, EndedBy.POST_FAILED, "", None, reason)
                req.errno = rec.result
                if req in queue:
                    queue.remove(req)

    def completion(self, rec: Record) -> None:
        status = wc_status_name(rec.result)
        if rec.flags & WCF_QPN_UNKNOWN:
            self.find(Finding(FindingKind.UNMATCHED_COMPLETION,
                              f"wr_id {rec.wr_id} status {status} on a CQ created without "
                              "IBV_WC_EX_WITH_QP_NUM: QP unknown", rec.t_ns))
            return
        track = self.qps.get((self.cq_ctx.get(rec.obj, 0) if self.v2 else 0, rec.qp_num))
        receive = rec.opcode >= WC_RECV
        if track is not None and rec.result != WC_SUCCESS and not track.error_status:
            track.error_status = status
        # the opcode is defined only for a successful completion (ibv_poll_cq(3)): an error
        # completion is looked for in both of its QP's queues, the one its opcode names
        # first (measured: pingpong's SEND completed LOC_QP_OP_ERR with a receive opcode)
        defined = rec.result == WC_SUCCESS
        own: list[deque[TracedRequest]] = []
        if track is not None:
            own = [track.rq, track.sq] if receive else [track.sq, track.rq]
            own = own[:1] if defined else own
        queues = own + (list(self.srqs.values()) if receive or not defined else [])
        # A successful completion belongs to a signalled request (an unsignalled one gives
        # none when it succeeds): with reused wr_ids, the first outstanding request with
        # the wr_id may be an unsignalled one that this completion implies, not its own.
        # An error completion (flushes included) comes for signalled and unsignalled alike.
        need_signalled = rec.result == WC_SUCCESS
        for queue in queues:
            for i, req in enumerate(queue):
                if req.wr_id != rec.wr_id or (need_signalled and not req.signalled):
                    continue
                if any(queue is q for q in own):  # a QP's own queue completes in order
                    self._resolve_before(queue, i, rec)
                    queue.popleft()
                else:  # an SRQ: its buffers are consumed by any QP, in no set order
                    del queue[i]
                _end(req, _outcome_of(rec.result), EndedBy.COMPLETION, status, rec.t_ns,
                     "" if rec.result in (WC_SUCCESS, WC_FLUSH) else
                     f"completion status {status} (vendor_err {rec.aux})", rec.length)
                if req.receive and track is not None:
                    req.qp_num, req.qp_gen = track.qp_num, track.gen
                    track.receives_done.append(req)
                return
        self.find(Finding(FindingKind.UNMATCHED_COMPLETION, f"QP {rec.qp_num}: wr_id {rec.wr_id} "
                          f"status {status}: no outstanding request with that wr_id",
                          rec.t_ns))

    @staticmethod
    def _resolve_before(queue: deque[TracedRequest], i: int, rec: Record) -> None:
        """The requests ahead of the matched one completed before it (in order): an
        unsignalled one succeeded (an error would have given it its own completion); a
        signalled one without its completion is lost (the program never saw it)."""
        for _ in range(i):
            ahead = queue.popleft()
            if ahead.signalled:
                _end(ahead, Outcome.LOST, EndedBy.COMPLETION_SKIPPED, "", None,
                     f"its completion never came, though a later one's did (wr_id {rec.wr_id})")
            else:
                _end(ahead, Outcome.COMPLETED_OK, EndedBy.LATER_COMPLETION, "SUCCESS", rec.t_ns,
                     "unsignalled: implied by a later completion on the same QP")

    @staticmethod
    def drain(queues: list[deque[TracedRequest]], by: EndedBy, reason: str) -> None:
        for queue in queues:
            while queue:
                _end(queue.popleft(), Outcome.LOST, by, "", None, reason)

    def run(self) -> ProcessLedger:
        led = self.led
        for rec in self.log.records:
            t = rec.type
            if t in (RecType.POST_SEND, RecType.POST_RECV, RecType.POST_SRQ_RECV):
                self.post(rec)
            elif t is RecType.COMPLETION:
                self.completion(rec)
            elif t is RecType.POST_FAIL:
                self.post_fail(rec)
            elif t is RecType.CQ_CREATE:
                self.cq_ctx[rec.obj] = rec.aux2
            elif t is RecType.QP_CREATE:
                key = (rec.aux2 if self.v2 else 0, rec.qp_num)
                self.qp_keys[rec.obj] = key
                old = self.qps.get(key)
                if old is not None:
                    if not self.v2 and old.context != rec.aux2:  # QP numbers are per device
                        self.find(Finding(FindingKind.NOT_TRACED, f"QP {rec.qp_num} is live on "
                                          "two devices at once: log format 1 does not name "
                                          "the device per request, so the older QP's "
                                          "requests are ended here", rec.t_ns))
                    self.drain([old.sq, old.rq], EndedBy.QP_NUM_REUSED, "never completed: "
                               "the QP number was reused before this request completed")
                self._new_qp(key, bool(rec.flags & QPF_SQ_SIG_ALL),
                             bool(rec.flags & QPF_WR_API_TRACED),
                             bool(rec.flags & QPF_CREATED_EX)).context = rec.aux2
            elif t is RecType.QP_MODIFY and rec.result == 0:
                track = self.qp(self.key_of(rec), rec.t_ns)
                if rec.opcode in (QpState.RESET, QpState.INIT):
                    track.error_status = ""  # the program reset the QP after the error
                if rec.opcode != NO_STATE:
                    track.states.append(QpState(rec.opcode).name
                                        if rec.opcode in QpState._value2member_map_
                                        else str(rec.opcode))
                if rec.aux2 != NO_QPN:
                    track.dest_qp_num = rec.aux2
            elif t is RecType.QP_DESTROY and rec.result == 0:
                gone = self.qps.pop(self.key_of(rec), None)
                if gone is not None:
                    self.drain([gone.sq, gone.rq], EndedBy.QP_DESTROYED, "never completed: "
                               "the QP was destroyed with it outstanding")
            elif t is RecType.DEV_OPEN:
                led.devices.append(rec.text.decode(errors="replace"))
            elif t is RecType.DEV_CLOSE and rec.result == 0:
                led.closes += 1
            elif t is RecType.ASYNC_EVENT:
                name = async_event_name(rec.opcode)
                led.async_events.append(name + (f" qp {rec.qp_num}" if rec.qp_num else ""))
                self.find(Finding(FindingKind.ASYNC_EVENT, led.async_events[-1], rec.t_ns))
            elif t is RecType.CALL_FAIL:
                call = Call(rec.opcode).name.lower() if rec.opcode in Call._value2member_map_ \
                    else f"call {rec.opcode}"
                led.failed_calls.append(f"ibv_{call}: errno {rec.result}")
                self.find(Finding(FindingKind.FAILED_CALL, led.failed_calls[-1], rec.t_ns))
        by = EndedBy.PROGRAM_EXITED if self.log.closed else EndedBy.LOG_ENDED
        if self.log.closed:
            reason = "never completed: outstanding when the program exited"
        else:
            reason = "never completed: outstanding when the log ended (the process did " \
                     "not exit normally: killed or crashed)"
            self.find(Finding(FindingKind.LOG_NOT_CLOSED, "no END record: the process did not exit "
                              "normally"))
        self.drain([q for tr in self.qps.values() for q in (tr.sq, tr.rq)], by, reason)
        self.drain(list(self.srqs.values()), by, reason)
        if self.log.dropped:
            self.find(Finding(FindingKind.NOT_TRACED, f"{self.log.dropped} records dropped "
                              "at the size cap (RXE_POWER_TRACE_MAX_MB)"))
        return led


def build_ledger(log: TraceLog) -> ProcessLedger:
    return _Builder(log).run()


def summary_line(led: ProcessLedger) -> str:
    def fmt(c: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

    return (f"pid {led.pid} {' '.join(led.cmdline[:1])}: {len(led.sends())} send-queue "
            f"requests ({fmt(led.counts(False))}); {len(led.receives())} receives "
            f"({fmt(led.counts(True))}); unmatched completions "
            f"{len(led.unmatched_completions())}; "
            f"{'exited' if led.closed else 'did not exit normally'}")

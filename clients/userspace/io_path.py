"""A client's hot path: posting the workload's requests and taking their completions.

ClientIoPath adds to the application's queue and journal (AppQueue,
clients.userspace.app_queue) what the path needs (the connections, the metrics) and does
the work that runs per request: pump/_post/_post_window (each (slot, op, size) work
request is built once per QP and reposted with a new wr_id = slot + 1, so the slot finds
its request without a lookup table; payloads are written straight into the MR) and
reap/_complete/_settle (completions in batches, the ledger a Recorder of flat arrays).
Errors it meets are recorded (error()) for the policy, which ClientCore
(clients.userspace.core) calls once the completions are in the ledger.
"""

from __future__ import annotations

import time
from typing import IO, Any

from clients.userspace.app_queue import AppQueue
from clients.userspace.connection import GOODBYE_WR_ID, Conn, Metrics
from harness.core.errors import OsCallError, RxePowerError
from harness.rdma import payload
from harness.rdma.names import wc_status_name
from harness.rdma.payload import READ_SEQ
from harness.rdma.verbs import SEND_SIGNALED, opcode
from harness.workload.spec import AppRequest, Op, WorkloadSpec

POLL_BATCH = 64  # completions taken per poll call
_OPCODES: dict[Op, int] = {}  # Op -> IBV_WR_* (filled on first use: pyverbs may be absent)


class ClientIoPath(AppQueue):
    """The workload's requests through one client's QPs (see the module docstring)."""

    def __init__(self, spec: WorkloadSpec, journal: IO[str] | None) -> None:
        super().__init__(spec, journal)
        self.metrics = Metrics()
        self._errored: list[int] = []  # error completions since the last flush_all
        self._slot_size = spec.slot_size
        self._read_want = payload.encode(READ_SEQ, spec.slot_size)
        self._burst = bursts(spec)
        self.pending_errors: list[str] = []
        self.conns: dict[int, Conn] = {}
        self.next_post_ns = 0
        self.round_generation = 1  # the generation each round starts on
        self.device_fatal = False  # the open device delivered DEVICE_FATAL: nothing completes

    def error(self, what: str) -> None:
        """Record an error; the policy reacts in dispatch_errors(), once the completions
        already taken off the CQ are in the ledger."""
        if self.metrics.error_ns is None:
            self.metrics.error_ns = time.monotonic_ns()
            self.metrics.notes.append(f"first error: {what}")
        self.pending_errors.append(what)

    # --- posting -----------------------------------------------------------------------------

    def outstanding(self) -> int:
        return sum(c.n_inflight for c in self.conns.values())

    def done(self) -> bool:
        if self.open_loop and self.n_arrived < len(self.requests):
            return False
        # after DEVICE_FATAL nothing posted on that device ever completes (measured on rxe)
        return not self.queue and (self.outstanding() == 0 or self.device_fatal)

    def pump(self) -> None:
        """Post queued requests while admitted, connected, within depth and rate (closed
        loop; open loop, the arrivals are paced instead)."""
        if self.open_loop:
            self.arrive(time.monotonic_ns())
            interval_ns = 0
        else:
            interval_ns = int(1e9 / self.spec.rate_per_s) if self.spec.rate_per_s else 0
        queue, requests, conns = self.queue, self.requests, self.conns
        qd = self.spec.queue_depth
        while self.admitting and queue and conns:
            req = requests[queue[0]]
            conn = conns.get(req.qp_index)
            if conn is None or not conn.free_slots or conn.broken:
                return
            if self._burst and not conn.n_inflight and len(queue) >= qd:
                self._post_window(conn, req)  # the whole window, one doorbell
                continue
            if interval_ns:
                now = time.monotonic_ns()
                if now < self.next_post_ns:
                    return
                self.next_post_ns = now + interval_ns
            queue.popleft()
            self._post(conn, req)

    def pace_delay(self) -> float | None:
        """Seconds until the rate lets the next request go, when the rate is all that holds
        it back (None: nothing to post, or the queue depth or the connection holds it).
        Open loop: until the next arrival."""
        if self.open_loop:
            if self.t0_ns is None or self.n_arrived >= len(self.requests):
                return None
            due = self.t0_ns + self.spec.arrival_offset_ns(self.n_arrived)
            return max(0.0, (due - time.monotonic_ns()) / 1e9)
        if not (self.admitting and self.queue and self.conns and self.spec.rate_per_s):
            return None
        conn = self.conns.get(self.requests[self.queue[0]].qp_index)
        if conn is None or conn.broken or not conn.free_slots:
            return None
        return max(0.0, (self.next_post_ns - time.monotonic_ns()) / 1e9)

    def _prebuilt_wr(self, conn: Conn, slot: int, req: AppRequest) -> Any:
        """The prebuilt WR of (slot, op, size) on this QP (built on first use)."""
        if not _OPCODES:
            _OPCODES.update({Op.SEND: opcode("SEND_WITH_IMM"),
                             Op.WRITE: opcode("RDMA_WRITE_WITH_IMM"),
                             Op.READ: opcode("RDMA_READ"),
                             Op.FETCH_ADD: opcode("ATOMIC_FETCH_AND_ADD")})
        size, slot_size, ws = req.size, self.spec.slot_size, self.spec.write_slots
        off, remote = slot * slot_size, conn.remote
        if req.op is Op.SEND:
            wr = conn.qp.send_wr(slot + 1, _OPCODES[Op.SEND], off, size, imm=0)
        elif req.op is Op.WRITE:
            wr = conn.qp.send_wr(slot + 1, _OPCODES[Op.WRITE], off, size, imm=0,
                                 remote_addr=remote.addr, rkey=remote.rkey)
        elif req.op is Op.READ:
            wr = conn.qp.send_wr(slot + 1, _OPCODES[Op.READ], off, size,
                                 remote_addr=remote.addr + ws * slot_size, rkey=remote.rkey)
        else:
            wr = conn.qp.send_wr(slot + 1, _OPCODES[Op.FETCH_ADD], off, 8,
                                 remote_addr=remote.addr + (ws + 1) * slot_size,
                                 rkey=remote.rkey, compare_add=1)
        conn.wrs[(slot, req.op, size)] = wr
        return wr

    def _post(self, conn: Conn, req: AppRequest) -> None:
        slot = conn.free_slots.pop()
        op, size, seq = req.op, req.size, req.req_id + 1
        wr = conn.wrs.get((slot, op, size)) or self._prebuilt_wr(conn, slot, req)
        if op is Op.SEND or op is Op.WRITE:
            slot_size = self._slot_size
            conn.qp.write_payload(slot * slot_size, seq, size, conn.generation)
            wr.imm_data = seq
            if op is Op.WRITE:
                wr.set_wr_rdma(conn.remote.rkey, conn.remote.addr
                               + (seq % self.spec.write_slots) * slot_size)
        k = self.spec.signal_every
        if k > 1:  # signal every k-th, and the WR after which the pump must stop
            before = conn.unsignaled
            conn.unsignaled += 1
            signaled = conn.unsignaled >= k or not conn.free_slots or not self.queue
            wr.send_flags = SEND_SIGNALED if signaled else 0
            if signaled:
                conn.unsignaled = 0
        self.ledger.posted(req.req_id, conn.generation, time.monotonic_ns(), self.held_below)
        self._jpend.append(seq)
        self.flush_journal()  # written ahead of the post: a kill after it loses nothing
        try:
            conn.qp.post(wr)
        except OsCallError as exc:
            conn.free_slots.append(slot)
            if k > 1:
                conn.unsignaled = before  # what came before waits for a later completion
            self.ledger.rejected(req.req_id, exc.errno, str(exc).splitlines()[0])
            self.note("rejected", req=req.req_id, errno=exc.errno)
            self.error(f"post_send rejected req {req.req_id}: {exc.strerror}")
            return
        conn.slot_req[slot] = req.req_id
        conn.n_inflight += 1
        if k > 1:
            conn.order.append(slot)

    def _post_window(self, conn: Conn, first: AppRequest) -> None:
        """Post the next queue_depth requests (one op and size: see _bursts) in one
        ibv_post_send: the window's WRs are linked once, slot 0 -> 1 -> ... -> qd-1, the
        last one signaled (it completes the window, as signal_every = queue_depth asks)."""
        qd, slot_size = self.spec.queue_depth, self._slot_size
        key = (first.op, first.size)
        chain = conn.chains.get(key)
        if chain is None:
            chain = [self._prebuilt_wr(conn, s, first) for s in range(qd)]
            for s in range(qd - 1):
                chain[s].send_flags = 0
                chain[s].next_wr = chain[s + 1]
            conn.chains[key] = chain
            for s in range(qd):  # they are the chain's now, not single WRs
                conn.wrs.pop((s, first.op, first.size), None)
        op, gen, remote = first.op, conn.generation, conn.remote
        ws = self.spec.write_slots
        reqs = [self.requests[self.queue.popleft()] for _ in range(qd)]
        for s, req in enumerate(reqs):
            seq = req.req_id + 1
            if op is Op.SEND or op is Op.WRITE:
                conn.qp.write_payload(s * slot_size, seq, req.size, gen)
                chain[s].imm_data = seq
                if op is Op.WRITE:
                    chain[s].set_wr_rdma(remote.rkey, remote.addr + (seq % ws) * slot_size)
            conn.slot_req[s] = req.req_id
            self._jpend.append(seq)
        now = time.monotonic_ns()
        for req in reqs:
            self.ledger.posted(req.req_id, gen, now, self.held_below)
        conn.free_slots.clear()
        self.flush_journal()  # written ahead of the post: a kill after it loses nothing
        refused = conn.qp.post_chain(chain[0])
        posted = qd if refused is None else refused[0] - 1  # wr_id = slot + 1
        conn.n_inflight += posted
        conn.order.extend(range(posted))
        conn.unsignaled = 0 if refused is None else posted  # those wait for a later completion
        if refused is not None:
            exc = refused[1]
            for s in range(posted, qd):
                req_id = conn.slot_req[s]
                conn.slot_req[s] = -1
                conn.free_slots.append(s)
                self.ledger.rejected(req_id, exc.errno, str(exc).splitlines()[0])
            self.note("rejected", reqs=[r.req_id for r in reqs[posted:]], errno=exc.errno)
            self.error(f"post_send rejected reqs {reqs[posted].req_id}.. : {exc.strerror}")

    # --- completions -------------------------------------------------------------------------

    def reap(self, ready: set[int] | None = None) -> None:
        """Take every completion there is, in batches. `ready`: the fds the caller's select
        found readable (in events mode only those QPs can have new completions); None
        looks at every QP."""
        try:
            self._reap(ready)
        finally:
            self.flush_journal()  # the completions taken, before anything else happens

    def _reap(self, ready: set[int] | None) -> None:
        for conn in list(self.conns.values()):
            qp = conn.qp
            if ready is not None and qp.params.use_events:
                if qp.channel_fd not in ready:
                    continue
                first = True
            else:
                first = None  # let poll() look at the channel itself
            try:
                while True:
                    wcs = qp.poll(POLL_BATCH, first)
                    first = False
                    for wc in wcs:
                        self._complete(conn, wc)
                    if len(wcs) < POLL_BATCH or conn.qp is not qp:
                        break
            except RxePowerError as exc:
                self.error(f"poll failed: {exc.problem}")
                return

    def _complete(self, conn: Conn, wc: Any, failed: list[int] | None = None) -> None:
        """One completion: its request's outcome, and (signal_every > 1) the outcomes of
        the unsignaled WRs posted before it on this QP, which completed successfully
        before it (an error or a flush would have had a completion of its own). With
        `failed` (quiescing) the requests that did not succeed go there instead of to the
        policy as errors."""
        if wc.wr_id == GOODBYE_WR_ID:
            return
        slot = wc.wr_id - 1
        if not 0 <= slot < len(conn.slot_req) or conn.slot_req[slot] < 0:
            # no request of ours is in flight there: an extra completion. The ledger cannot
            # place it (a row with one is broken, harness.run.matrix)
            self.metrics.extra_completions += 1
            self.note("extra completion", wr_id=wc.wr_id, status=wc_status_name(wc.status),
                      generation=conn.generation)
            return
        now = time.monotonic_ns()
        order = conn.order
        while order:
            s = order.popleft()
            if s == slot:
                break
            if conn.slot_req[s] >= 0:
                self._settle(conn, s, 0, 0, now, failed)
        self._settle(conn, slot, wc.status, wc.vendor_err, now, failed)

    def _settle(self, conn: Conn, slot: int, code: int, vendor_err: int, now: int,
                failed: list[int] | None) -> None:
        req_id = conn.slot_req[slot]
        conn.slot_req[slot] = -1
        conn.free_slots.append(slot)
        conn.n_inflight -= 1
        status = "SUCCESS" if code == 0 else wc_status_name(code)
        if code == 0:
            req = self.requests[req_id]
            if req.op is Op.READ:
                off = slot * self._slot_size
                if not self._read_want.startswith(conn.qp.view[off:off + req.size]):
                    status = "READ_DATA_MISMATCH"
        self.ledger.completed(req_id, status, vendor_err, now)
        if status == "SUCCESS":
            self._jpend.append(-(req_id + 1))
            if (self.metrics.first_ok_after_resume_ns is None
                    and self.metrics.resume_ns is not None
                    and conn.generation > self.round_generation):
                self.metrics.first_ok_after_resume_ns = now
        elif failed is not None:
            failed.append(req_id)  # journaled with the "flushed" note
        else:
            self._jpend.append(-(req_id + 1))
            self._jerr[req_id] = status
            self._errored.append(req_id)  # came back unfinished: flush_all may requeue it
            conn.broken = True
            self.error(f"{status} on req {req_id}")


def bursts(spec: WorkloadSpec) -> bool:
    """Whether the whole window goes out in one post: one QP, one op and size, and one
    signaled completion per window (signal_every = queue_depth > 1)."""
    return (spec.signal_every == spec.queue_depth > 1 and len(spec.ops) == 1
            and len(spec.sizes) == 1 and spec.qps == 1)

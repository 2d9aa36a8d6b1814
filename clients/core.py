"""The one I/O path every client policy drives; policies differ only around transitions.

A ClientCore owns: the workload's application requests (a queue, in order), the
ledger, the open device and one RC QP per `spec.qps` against the peer agent (the
worker connects to the agent's socket itself to create its peer QPs), and the
measurements. Policies (clients/<name>.py) are called on four occasions:
suspend_prepare, resume_complete, an error from the verbs layer (a failed post,
an error completion, PORT_ERR), and the device vanishing from sysfs (the only
sign of a removal rxe gives: no DEVICE_FATAL). Quiescing always goes through
verbs: the QP is moved to ERR and every outstanding WR comes back flushed, so
every posted request gets a real completion before a QP is closed.

Wire conventions (see harness.peer_agent): SEND_WITH_IMM and WRITE_WITH_IMM carry
imm = seq = req_id + 1 and an encoded payload; a WRITE lands in slot (seq mod
spec.write_slots) of the peer's area; READs read a region the agent filled with
READ_SEQ's payload; FETCH_ADD adds 1 to a counter after it. GOODBYE_SEQ in imm
is the orderly disconnect of a raw-verbs connection. Every buffer slot, here and
at the peer, is spec.slot_size bytes (the largest message, rounded up).

The hot path (pump/_post, reap/_complete) allocates nothing per request that it can
avoid: each (slot, op, size) work request is built once per QP and reposted with a
new wr_id (= slot + 1, so the slot finds its request without a lookup table),
payloads are written straight into the MR, completions are taken in batches, the
ledger is a Recorder (flat arrays) and the journal gets one line per batch of posts
or completions, written when the worker's loop turns (flush_journal).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.core.device import DeviceInfo
from harness.core.errors import BoundExceeded, OsCallError, ProtocolError, RxePowerError
from harness.core.protocol import Channel, WorkerError
from harness.core.schemas import ChannelKind
from harness.rdma import payload
from harness.rdma.names import async_event_name, wc_status_name
from harness.rdma.payload import GOODBYE_SEQ, READ_SEQ
from harness.rdma.verbs import (
    SEND_SIGNALED,
    Device,
    QpInfo,
    QpParams,
    RcQp,
    opcode,
    verbs_call,
    wait_readable,
)
from harness.system.holders import SYSFS_VERBS, uverbs_files
from harness.workload.ledger import AppRequest, Op, Recorder, WorkloadSpec
from power.notify import SuspendReply

DRAIN_TIMEOUT_S = 5.0  # QP to ERR -> every WR flushed back
AGENT_REPLY_TIMEOUT_S = 20.0
MAX_EVENTS = 2000  # notes kept in memory per round for the timeline (the journal has all)
POLL_BATCH = 64  # completions taken per poll call
REMOVAL_CHECK_S = 0.01  # how often the uverbs node is looked at (a stat under TCG: ~30 us)
# The journal is written at most this often (and at every note, finish and release): in
# the VM it lives on the host's shared folder, where one write costs ~0.7 ms; writing it
# per loop turn made every request at queue depth 1 cost two of them.
JOURNAL_FLUSH_S = 0.02
_OPCODES: dict[Op, int] = {}  # Op -> IBV_WR_* (filled on first use: pyverbs may be absent)


class PeerUnreachable(RxePowerError):
    """The peer agent's socket is closed, reset or silent: no QP can be connected to it."""


class Policy(Protocol):
    name: str

    def on_suspend(self, core: ClientCore, deadline_s: float) -> SuspendReply | None: ...

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None: ...

    def on_error(self, core: ClientCore, what: str) -> None: ...


@dataclass
class Conn:
    """One QP generation on one QP index, with the agent's QP it is connected to. Slot s
    of the MR holds request slot_req[s] (-1: free); its WR's wr_id is s + 1 (0 is the
    goodbye)."""

    qp_index: int
    generation: int
    qp: RcQp
    agent_qp_id: int
    remote: QpInfo
    free_slots: list[int]
    slot_req: list[int] = field(default_factory=list)
    wrs: dict = field(default_factory=dict)  # (slot, op, size) -> its prebuilt SendWR
    n_inflight: int = 0
    broken: bool = False
    order: collections.deque = field(default_factory=collections.deque)  # slots as posted
    unsignaled: int = 0  # WRs posted unsignaled since the last signaled one
    chains: dict = field(default_factory=dict)  # (op, size) -> the window's WRs, linked

    @property
    def inflight(self) -> dict[int, tuple[int, int]]:
        """wr_id -> (request, slot) of what is posted and not completed."""
        return {s + 1: (r, s) for s, r in enumerate(self.slot_req) if r >= 0}


@dataclass
class Metrics:
    suspend_ns: int | None = None
    quiesced_ns: int | None = None
    quiesce: str = ""  # "drained" / "aborted (flushed N)" / "no chance: the device went first"
    error_ns: int | None = None  # first error seen from the verbs layer
    resume_ns: int | None = None
    first_ok_after_resume_ns: int | None = None
    goodbye_ns: int | None = None
    reconnects: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class ClientCore:
    def __init__(self, name: str, policy: Policy, spec: WorkloadSpec, device: DeviceInfo,
                 agent_socket: str, journal: Any = None) -> None:
        self.name = name
        self.policy = policy
        self.spec = spec.validate()
        self.requests: list[AppRequest] = spec.requests()
        self.ledger = Recorder(self.requests)
        self.queue: collections.deque[int] = collections.deque(range(len(self.requests)))
        self.metrics = Metrics()
        self.journal = journal
        self._jpend: list[int] = []  # seq posted (+) or completed (-), not yet journaled
        self._errored: list[int] = []  # error completions since the last flush_all
        self._jflushed = 0.0  # time.monotonic() of the last journal write
        self._next_removal_check = 0.0
        self._slot_size = spec.slot_size
        self._read_want = payload.encode(READ_SEQ, spec.slot_size)
        self._burst = _bursts(spec)
        self.admitting = True
        self.pending_errors: list[str] = []
        self.device_info = device
        self.device: Device | None = None
        self.uverbs: str | None = None  # sysfs node of our device, watched for removal
        self.conns: dict[int, Conn] = {}
        self.generation = 0
        self.agent_qps: list[dict] = []  # every agent QP we made: id, generation, offsets
        self.next_post_ns = 0
        self.round = 1
        self.round_generation = 1  # the generation each round starts on
        self.events: list[dict] = []  # notes other than posting/completion, for timelines
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(agent_socket)
        self.agent = Channel(sock, f"peer agent (for {name})", ChannelKind.PEER)

    # --- journal (what a crash leaves behind) -----------------------------------------------

    def note(self, what: str, **detail: Any) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append({"t_ns": time.monotonic_ns(), "event": what, **detail})
        if self.journal is not None:
            self.flush_journal(flush=False)
            self.journal.write(f'{{"t_ns": {time.monotonic_ns()}, "event": "{what}", '
                               f'"detail": {_json(detail)}}}\n')
            self.journal.flush()

    def flush_journal(self, flush: bool = True, due_only: bool = False) -> None:
        """Write the postings and completions since the last flush, in order, one line per
        run of the same kind: {"event": "posted"|"completed", "detail": {"reqs": [...]}}.
        The worker calls this (`due_only`) before it waits: the journal lags the worker by
        at most JOURNAL_FLUSH_S, which is what a worker killed while running can lose
        (harness.clientrun.ClientWorker.in_flight reads it)."""
        pend = self._jpend
        if not pend or self.journal is None:
            self._jpend = []
            return
        now = time.monotonic()
        if due_only and now - self._jflushed < JOURNAL_FLUSH_S:
            return
        self._jflushed = now
        self._jpend = []
        t = time.monotonic_ns()
        lines, run, posted = [], [], pend[0] > 0
        for v in pend:
            if (v > 0) != posted:
                lines.append(_journal_run(t, posted, run, self.generation))
                run, posted = [], v > 0
            run.append(v - 1 if v > 0 else -v - 1)
        lines.append(_journal_run(t, posted, run, self.generation))
        self.journal.write("".join(lines))
        if flush:
            self.journal.flush()

    # --- device and connections --------------------------------------------------------------

    def open(self, info: DeviceInfo) -> None:
        """Open the device and connect spec.qps QPs (a new generation) to new agent QPs."""
        t0 = time.monotonic_ns()
        self.device_info = info
        if self.device is None:
            self.device = Device(info.dev, info.port, info.gid_index)
            self.uverbs = _uverbs_node(info.dev)
        t1 = time.monotonic_ns()
        self.generation += 1
        spec = self.spec
        qd, slot, ws = spec.queue_depth, spec.slot_size, spec.write_slots
        for q in range(spec.qps):
            # + 1 for the goodbye, + 1 for the WR that rxe retires just after its completion
            params = QpParams(max_send_wr=qd + 2, max_recv_wr=1, mr_size=spec.local_mr_bytes(),
                              use_events=spec.completion == "events",
                              retry_cnt=spec.retry_cnt)
            qp = RcQp(self.device, params)
            try:
                rep = self.agent.request("create_qp", AGENT_REPLY_TIMEOUT_S,
                                         mr_size=spec.peer_mr_bytes(), recv_slots=2 * qd,
                                         slot_size=slot, write_slots=ws)
                remote = QpInfo.from_json(rep["info"])
                read_off, counter_off = ws * slot, (ws + 1) * slot
                self.agent.request("fill", AGENT_REPLY_TIMEOUT_S, qp_id=rep["qp_id"],
                                   offset=read_off, length=slot, seq=READ_SEQ)
                qp.connect(remote)
                self.agent.request("connect_qp", AGENT_REPLY_TIMEOUT_S, qp_id=rep["qp_id"],
                                   remote=qp.info().to_json())
            except BaseException as exc:
                qp.close()
                if isinstance(exc, OSError | ProtocolError | BoundExceeded) \
                        and not isinstance(exc, WorkerError):  # gone or silent, not refusing
                    why = exc.problem if isinstance(exc, RxePowerError) \
                        else f"{type(exc).__name__}: {exc}"
                    raise PeerUnreachable(f"the peer agent is unreachable: connecting QP {q} "
                                          f"of generation {self.generation} failed: {why}",
                                          "is the peer agent running? see its log") from exc
                raise
            self.conns[q] = Conn(q, self.generation, qp, rep["qp_id"], remote,
                                 list(range(qd)), [-1] * qd)
            self.agent_qps.append({"qp_id": rep["qp_id"], "generation": self.generation,
                                   "qp_index": q, "counter_offset": counter_off})
        t2 = time.monotonic_ns()
        self.note("opened", generation=self.generation, dev=info.dev,
                  device_ms=round((t1 - t0) / 1e6, 3), connect_ms=round((t2 - t1) / 1e6, 3),
                  qps=spec.qps)

    def close_qps(self) -> None:
        for conn in self.conns.values():
            conn.qp.close()
        self.conns.clear()

    def new_round(self, spec: WorkloadSpec) -> None:
        """Start the next workload round (rxe-power stress): same process and device, a
        fresh QP generation, a fresh ledger. Only once the last round is done."""
        if self.outstanding():
            raise RxePowerError(f"{self.outstanding()} requests still outstanding",
                                "finish the round before starting another")
        self.close_qps()
        self.spec = spec.validate()
        self.requests = spec.requests()
        self.ledger = Recorder(self.requests)
        self.queue = collections.deque(range(len(self.requests)))
        self._slot_size = spec.slot_size
        self._read_want = payload.encode(READ_SEQ, spec.slot_size)
        self._burst = _bursts(spec)
        self.metrics = Metrics()
        self.events = []
        self.agent_qps = []
        self.pending_errors = []
        self._errored = []
        self.admitting = False
        self.round += 1
        self.open(self.device_info)
        self.round_generation = self.generation

    def release(self) -> None:
        """Close every QP and the device: nothing of ours holds it any more."""
        self.close_qps()
        if self.device is not None:
            self.device.close()
            self.device = None
        self.note("released")  # (writes what the journal still has pending first)

    def fds(self) -> list[int]:
        out = [c.qp.channel_fd for c in self.conns.values()]
        if self.device is not None and self.device.async_fd is not None:
            out.append(self.device.async_fd)
        return out

    # --- posting -----------------------------------------------------------------------------

    def outstanding(self) -> int:
        return sum(c.n_inflight for c in self.conns.values())

    def done(self) -> bool:
        return not self.queue and self.outstanding() == 0

    def pump(self) -> None:
        """Post queued requests while admitted, connected, within depth and rate."""
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
        it back (None: nothing to post, or the queue depth or the connection holds it)."""
        if not (self.admitting and self.queue and self.conns and self.spec.rate_per_s):
            return None
        conn = self.conns.get(self.requests[self.queue[0]].qp_index)
        if conn is None or conn.broken or not conn.free_slots:
            return None
        return max(0.0, (self.next_post_ns - time.monotonic_ns()) / 1e9)

    def _wr(self, conn: Conn, slot: int, req: AppRequest) -> Any:
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
        wr = conn.wrs.get((slot, op, size)) or self._wr(conn, slot, req)
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
        self.ledger.posted(req.req_id, conn.generation, time.monotonic_ns())
        self._jpend.append(seq)
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
            chain = [self._wr(conn, s, first) for s in range(qd)]
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
            self.ledger.posted(req.req_id, gen, now)
        conn.free_slots.clear()
        bad = conn.qp.post_chain(chain[0])
        posted = qd if bad is None else bad - 1  # wr_id = slot + 1
        conn.n_inflight += posted
        conn.order.extend(range(posted))
        conn.unsignaled = 0 if bad is None else posted  # those wait for a later completion
        if bad is not None:
            exc = conn.qp.last_post_error
            for s in range(posted, qd):
                req_id = conn.slot_req[s]
                conn.slot_req[s] = -1
                conn.free_slots.append(s)
                self.ledger.rejected(req_id, exc.errno, str(exc).splitlines()[0])
            self.note("rejected", reqs=[r.req_id for r in reqs[posted:]], errno=exc.errno)
            self.error(f"post_send rejected reqs {reqs[posted].req_id}.. : {exc.strerror}")

    # --- completions and events --------------------------------------------------------------

    def reap(self, ready: set[int] | None = None) -> None:
        """Take every completion there is, in batches. `ready`: the fds the caller's select
        found readable (in events mode only those QPs can have new completions); None
        looks at every QP."""
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
        slot = wc.wr_id - 1
        if not 0 <= slot < len(conn.slot_req) or conn.slot_req[slot] < 0:
            return  # the goodbye (wr_id 0)
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
            self._errored.append(req_id)  # came back unfinished: flush_all may requeue it
            conn.broken = True
            self.error(f"{status} on req {req_id}")

    def service(self, ready: set[int]) -> None:
        """One turn of the I/O path after a select: device events, the removal watch,
        completions, the policy's reaction to errors, then posting."""
        dev = self.device
        if dev is not None and dev.async_fd is not None and dev.async_fd in ready:
            self.read_async_events()
        now = time.monotonic()
        if now >= self._next_removal_check:
            self._next_removal_check = now + REMOVAL_CHECK_S
            self.check_removed()
        self.reap(ready)
        self.dispatch_errors()
        self.pump()

    def read_async_events(self) -> None:
        if self.device is None or self.device.async_fd is None:
            return
        while self.device is not None:
            try:
                with verbs_call("get async event"):
                    ev = self.device.ctx.get_async_event()
            except RxePowerError:
                return
            name = async_event_name(int(ev.event_type))
            ev.ack()
            self.note("async", name=name)
            if name in ("PORT_ERR", "DEVICE_FATAL"):
                self.error(f"async event {name}")

    def check_removed(self) -> None:
        """rxe sends no DEVICE_FATAL: its uverbs node vanishing is the removal notice."""
        if self.device is not None and self.uverbs and not os.path.exists(self.uverbs):
            self.note("device removed")
            self.error("the device's uverbs node vanished (device being removed)")

    def error(self, what: str) -> None:
        """Record an error; the policy reacts in dispatch_errors(), once the completions
        already taken off the CQ are in the ledger."""
        if self.metrics.error_ns is None:
            self.metrics.error_ns = time.monotonic_ns()
            self.metrics.notes.append(f"first error: {what}")
        self.pending_errors.append(what)

    def dispatch_errors(self) -> None:
        errors, self.pending_errors = self.pending_errors, []
        if errors:
            self.policy.on_error(self, errors[0])

    # --- quiescing ----------------------------------------------------------------------------

    def flush_all(self, requeue: bool) -> int:
        """Move every QP to ERR and take every outstanding WR back (flushed), bounded.
        With `requeue` the requests that came back unfinished (flushed now, or completed
        with an error since the last flush) go back to the front of the queue for replay."""
        flushed, self._errored = self._errored, []
        for conn in self.conns.values():
            if not conn.n_inflight:
                continue
            try:
                conn.qp.to_err()
            except RxePowerError as exc:
                self.metrics.notes.append(f"to_err failed: {exc.problem}")
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while conn.n_inflight and time.monotonic() < deadline:
                for wc in conn.qp.poll(POLL_BATCH):
                    self._complete(conn, wc, flushed)
                if conn.n_inflight:
                    wait_readable(conn.qp.channel_fd, 0.05)
            conn.broken = True
            # anything still not back is left posted: the ledger makes it LOST at the end
        if requeue:
            for req_id in sorted(flushed, reverse=True):
                self.ledger.retry(req_id)
                self.queue.appendleft(req_id)
        self.note("flushed", reqs=flushed, requeued=requeue)
        return len(flushed)

    def drain(self, deadline_s: float) -> bool:
        """Stop admitting; wait for in-flight requests to complete normally, bounded."""
        self.admitting = False
        end = time.monotonic() + deadline_s
        while self.outstanding() and time.monotonic() < end:
            self.reap()
            for fd in self.fds()[:1]:
                wait_readable(fd, 0.02)
        return self.outstanding() == 0

    def goodbye(self) -> bool:
        """The orderly disconnect of a raw-verbs connection: a SEND with imm GOODBYE_SEQ."""
        ok = True
        for conn in self.conns.values():
            try:
                conn.qp.post_send(0, opcode("SEND_WITH_IMM"), 0, 0, imm=GOODBYE_SEQ)
                wcs = conn.qp.wait(1, timeout_s=DRAIN_TIMEOUT_S, what="goodbye completion")
                ok &= all(int(w.status) == 0 for w in wcs)
            except RxePowerError as exc:
                self.metrics.notes.append(f"goodbye failed: {exc.problem}")
                ok = False
        self.metrics.goodbye_ns = time.monotonic_ns()
        self.note("goodbye", ok=ok)
        return ok

    def fail_queue(self, reason: str) -> None:
        """Refuse every request still queued to the application."""
        while self.queue:
            self.ledger.failed_to_app(self.queue.popleft(), reason)

    def finish(self) -> dict:
        """Every request gets its outcome; the report without the ledger itself, which
        the controller reads in pages (ledger_page): it can be far larger than one
        message."""
        self.ledger.finalize()
        if self.queue:  # never posted by the deadline
            self.fail_queue("never posted: the client had not resumed by the deadline")
        self.flush_journal()
        return {"client": self.name, "policy": self.policy.name,
                "requests": len(self.ledger), "counts": self.ledger.counts(),
                "unaccounted": self.ledger.unaccounted()[:MAX_UNACCOUNTED_LISTED],
                "metrics": self.metrics.to_json(), "agent_qps": self.agent_qps,
                "generations": self.generation, "round": self.round, "events": self.events}

    def ledger_page(self, start: int, limit: int) -> dict:
        return self.ledger.page(start, limit)


def _uverbs_node(dev: str) -> str | None:
    """The sysfs node of the device's uverbs file (it vanishes when a delete starts)."""
    files = sorted(uverbs_files(dev))
    return str(SYSFS_VERBS / Path(files[0]).name) if files else None


def _bursts(spec: WorkloadSpec) -> bool:
    """Whether the whole window goes out in one post: one QP, one op and size, and one
    signaled completion per window (signal_every = queue_depth > 1)."""
    return (spec.signal_every == spec.queue_depth > 1 and len(spec.ops) == 1
            and len(spec.sizes) == 1 and spec.qps == 1)


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _journal_run(t_ns: int, posted: bool, reqs: list[int], generation: int) -> str:
    if posted:
        return (f'{{"t_ns": {t_ns}, "event": "posted", "detail": {{"reqs": {_json(reqs)}, '
                f'"gen": {generation}}}}}\n')
    return f'{{"t_ns": {t_ns}, "event": "completed", "detail": {{"reqs": {_json(reqs)}}}}}\n'


MAX_UNACCOUNTED_LISTED = 1000  # in the finish report; the pages have every request


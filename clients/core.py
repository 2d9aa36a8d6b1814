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
WRITE_SLOTS) of the peer's area; READs read a region the agent filled with
READ_SEQ's payload; FETCH_ADD adds 1 to a counter after it. GOODBYE_SEQ in imm
is the orderly disconnect of a raw-verbs connection.
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

from harness import payload
from harness.errors import BoundExceeded, OsCallError, ProtocolError, RxePowerError
from harness.holders import SYSFS_VERBS, uverbs_files
from harness.ledger import MAX_MESSAGE, AppRequest, Ledger, Op, WorkloadSpec
from harness.names import async_event_name, wc_status_name
from harness.payload import GOODBYE_SEQ, READ_SEQ
from harness.protocol import Channel, WorkerError
from harness.verbs import (
    Device,
    QpInfo,
    QpParams,
    RcQp,
    opcode,
    verbs_call,
    wait_readable,
)
from power.notify import DeviceInfo, SuspendReply

SLOT = MAX_MESSAGE
WRITE_SLOTS = 64
DRAIN_TIMEOUT_S = 5.0  # QP to ERR -> every WR flushed back
AGENT_REPLY_TIMEOUT_S = 20.0
MAX_EVENTS = 2000  # notes kept in memory per round for the timeline (the journal has all)


class PeerUnreachable(RxePowerError):
    """The peer agent's socket is closed, reset or silent: no QP can be connected to it."""


class Policy(Protocol):
    name: str

    def on_suspend(self, core: ClientCore, deadline_s: float) -> SuspendReply | None: ...

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None: ...

    def on_error(self, core: ClientCore, what: str) -> None: ...


@dataclass
class Conn:
    """One QP generation on one QP index, with the agent's QP it is connected to."""

    qp_index: int
    generation: int
    qp: RcQp
    agent_qp_id: int
    remote: QpInfo
    free_slots: list[int]
    inflight: dict[int, tuple[int, int]] = field(default_factory=dict)  # wr_id -> req, slot
    broken: bool = False


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
        self.requests = {r.req_id: r for r in spec.requests()}
        self.ledger = Ledger(list(self.requests.values()))
        self.queue: collections.deque[int] = collections.deque(self.requests)
        self.metrics = Metrics()
        self.journal = journal
        self.admitting = True
        self.pending_errors: list[str] = []
        self.device_info = device
        self.device: Device | None = None
        self.uverbs: str | None = None  # sysfs node of our device, watched for removal
        self.conns: dict[int, Conn] = {}
        self.generation = 0
        self.agent_qps: list[dict] = []  # every agent QP we made: id, generation, offsets
        self.next_wr = 1
        self.next_post_ns = 0
        self.round = 1
        self.round_generation = 1  # the generation each round starts on
        self.events: list[dict] = []  # notes other than posting/completion, for timelines
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(agent_socket)
        self.agent = Channel(sock, f"peer agent (for {name})")

    # --- journal (what a crash leaves behind) -----------------------------------------------

    def note(self, what: str, **detail: Any) -> None:
        if what not in ("posted", "completed") and len(self.events) < MAX_EVENTS:
            self.events.append({"t_ns": time.monotonic_ns(), "event": what, **detail})
        if self.journal is not None:
            self.journal.write(f'{{"t_ns": {time.monotonic_ns()}, "event": "{what}", '
                               f'"detail": {_json(detail)}}}\n')
            self.journal.flush()

    # --- device and connections --------------------------------------------------------------

    def open(self, info: DeviceInfo) -> None:
        """Open the device and connect spec.qps QPs (a new generation) to new agent QPs."""
        self.device_info = info
        if self.device is None:
            self.device = Device(info.dev, info.port, info.gid_index)
            self.uverbs = _uverbs_node(info.dev)
        self.generation += 1
        qd = self.spec.queue_depth
        area = (WRITE_SLOTS + 1) * SLOT + 64
        for q in range(self.spec.qps):
            params = QpParams(max_send_wr=qd + 1, max_recv_wr=1, mr_size=(qd + 1) * SLOT,
                              use_events=self.spec.completion == "events",
                              retry_cnt=self.spec.retry_cnt)
            qp = RcQp(self.device, params)
            try:
                rep = self.agent.request("create_qp", AGENT_REPLY_TIMEOUT_S,
                                         mr_size=2 * qd * SLOT + area, recv_slots=2 * qd,
                                         slot_size=SLOT, write_slots=WRITE_SLOTS)
                remote = QpInfo.from_json(rep["info"])
                read_off, counter_off = WRITE_SLOTS * SLOT, (WRITE_SLOTS + 1) * SLOT
                self.agent.request("fill", AGENT_REPLY_TIMEOUT_S, qp_id=rep["qp_id"],
                                   offset=read_off, length=SLOT, seq=READ_SEQ)
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
                                 list(range(qd)))
            self.agent_qps.append({"qp_id": rep["qp_id"], "generation": self.generation,
                                   "qp_index": q, "counter_offset": counter_off})
        self.note("opened", generation=self.generation, dev=info.dev)

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
        self.requests = {r.req_id: r for r in spec.requests()}
        self.ledger = Ledger(list(self.requests.values()))
        self.queue = collections.deque(self.requests)
        self.metrics = Metrics()
        self.events = []
        self.agent_qps = []
        self.pending_errors = []
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
        self.note("released")

    def fds(self) -> list[int]:
        out = [c.qp.channel_fd for c in self.conns.values()]
        if self.device is not None and self.device.async_fd is not None:
            out.append(self.device.async_fd)
        return out

    # --- posting -----------------------------------------------------------------------------

    def outstanding(self) -> int:
        return sum(len(c.inflight) for c in self.conns.values())

    def done(self) -> bool:
        return not self.queue and self.outstanding() == 0

    def pump(self) -> None:
        """Post queued requests while admitted, connected, within depth and rate."""
        interval_ns = int(1e9 / self.spec.rate_per_s) if self.spec.rate_per_s else 0
        while self.admitting and self.queue and self.conns:
            req = self.requests[self.queue[0]]
            conn = self.conns.get(req.qp_index)
            if conn is None or not conn.free_slots or conn.broken:
                return
            now = time.monotonic_ns()
            if interval_ns and now < self.next_post_ns:
                return
            self.queue.popleft()
            self.next_post_ns = now + interval_ns
            self._post(conn, req)

    def _post(self, conn: Conn, req: AppRequest) -> None:
        slot = conn.free_slots.pop()
        wr_id = self.next_wr
        self.next_wr += 1
        off = slot * SLOT
        seq = req.seq
        self.ledger.posted(req.req_id, conn.generation, time.monotonic_ns())
        self.note("posted", req=req.req_id, gen=conn.generation)
        try:
            if req.op is Op.SEND:
                conn.qp.write_local(off, payload.encode(seq, req.size, conn.generation))
                conn.qp.post_send(wr_id, opcode("SEND_WITH_IMM"), off, req.size, imm=seq)
            elif req.op is Op.WRITE:
                conn.qp.write_local(off, payload.encode(seq, req.size, conn.generation))
                conn.qp.post_send(wr_id, opcode("RDMA_WRITE_WITH_IMM"), off, req.size,
                                  imm=seq, remote_addr=conn.remote.addr
                                  + (seq % WRITE_SLOTS) * SLOT, rkey=conn.remote.rkey)
            elif req.op is Op.READ:
                conn.qp.post_send(wr_id, opcode("RDMA_READ"), off, req.size,
                                  remote_addr=conn.remote.addr + WRITE_SLOTS * SLOT,
                                  rkey=conn.remote.rkey)
            else:
                conn.qp.post_send(wr_id, opcode("ATOMIC_FETCH_AND_ADD"), off, 8,
                                  remote_addr=conn.remote.addr + (WRITE_SLOTS + 1) * SLOT,
                                  rkey=conn.remote.rkey, compare_add=1)
        except OsCallError as exc:
            conn.free_slots.append(slot)
            self.ledger.rejected(req.req_id, exc.errno, str(exc).splitlines()[0])
            self.note("rejected", req=req.req_id, errno=exc.errno)
            self.error(f"post_send rejected req {req.req_id}: {exc.strerror}")
            return
        conn.inflight[wr_id] = (req.req_id, slot)

    # --- completions and events --------------------------------------------------------------

    def reap(self) -> None:
        for conn in list(self.conns.values()):
            try:
                wcs = conn.qp.poll(64)
            except RxePowerError as exc:
                self.error(f"poll failed: {exc.problem}")
                return
            for wc in wcs:
                self._complete(conn, wc)

    def _complete(self, conn: Conn, wc: Any) -> None:
        wr_id = int(wc.wr_id)
        if wr_id not in conn.inflight:
            return  # the goodbye
        req_id, slot = conn.inflight.pop(wr_id)
        conn.free_slots.append(slot)
        status = wc_status_name(int(wc.status))
        now = time.monotonic_ns()
        req = self.requests[req_id]
        if status == "SUCCESS" and req.op is Op.READ:
            want = payload.encode(READ_SEQ, SLOT)[:req.size]
            if conn.qp.read_local(slot * SLOT, req.size) != want:
                status = "READ_DATA_MISMATCH"
        self.ledger.completed(req_id, status, int(wc.vendor_err), now)
        self.note("completed", req=req_id, status=status, gen=conn.generation)
        if status == "SUCCESS":
            if (self.metrics.resume_ns is not None
                    and self.metrics.first_ok_after_resume_ns is None
                    and conn.generation > self.round_generation):
                self.metrics.first_ok_after_resume_ns = now
        else:
            conn.broken = True
            self.error(f"{status} on req {req_id}")

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
        With `requeue` the flushed requests go back to the front of the queue for replay."""
        flushed: list[int] = []
        for conn in self.conns.values():
            if not conn.inflight:
                continue
            try:
                conn.qp.to_err()
            except RxePowerError as exc:
                self.metrics.notes.append(f"to_err failed: {exc.problem}")
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while conn.inflight and time.monotonic() < deadline:
                for wc in conn.qp.poll(64):
                    wr_id = int(wc.wr_id)
                    if wr_id in conn.inflight:
                        req_id, slot = conn.inflight.pop(wr_id)
                        conn.free_slots.append(slot)
                        status = wc_status_name(int(wc.status))
                        self.ledger.completed(req_id, status, int(wc.vendor_err),
                                              time.monotonic_ns())
                        if status != "SUCCESS":
                            flushed.append(req_id)
                if conn.inflight:
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
        self.ledger.finalize()
        if self.queue:  # never posted by the deadline
            self.fail_queue("never posted: the client had not resumed by the deadline")
        return {"client": self.name, "policy": self.policy.name,
                "ledger": self.ledger.to_json(), "counts": self.ledger.counts(),
                "unaccounted": self.ledger.unaccounted(), "metrics": self.metrics.to_json(),
                "agent_qps": self.agent_qps, "generations": self.generation,
                "round": self.round, "events": self.events}


def _uverbs_node(dev: str) -> str | None:
    """The sysfs node of the device's uverbs file (it vanishes when a delete starts)."""
    files = sorted(uverbs_files(dev))
    return str(SYSFS_VERBS / Path(files[0]).name) if files else None


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


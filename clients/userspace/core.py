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

Wire conventions (see harness.peer.agent): SEND_WITH_IMM and WRITE_WITH_IMM carry
imm = seq = req_id + 1 and an encoded payload; a WRITE lands in slot (seq mod
spec.write_slots) of the peer's area; READs read a region the agent filled with
READ_SEQ's payload; FETCH_ADD adds 1 to a counter after it. GOODBYE_SEQ in imm
is the orderly disconnect of a raw-verbs connection. Every buffer slot, here and
at the peer, is spec.slot_size bytes (the largest message, rounded up).

The per-request hot path (posting and completions) is clients.userspace.io_path; this module
has the device, the connections, events, quiescing and the finish report.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

from clients.userspace.connection import GOODBYE_WR_ID, Conn, Metrics, PeerUnreachable, Policy
from clients.userspace.io_path import POLL_BATCH, ClientIoPath, bursts
from harness.core.device import DeviceInfo
from harness.core.errors import BoundExceeded, OsCallError, ProtocolError, RxePowerError
from harness.core.protocol import Channel, WorkerError
from harness.core.schemas import ChannelKind
from harness.rdma import payload
from harness.rdma.event_fds import wait_readable
from harness.rdma.names import async_event_name
from harness.rdma.payload import GOODBYE_SEQ, READ_SEQ
from harness.rdma.qp_types import QpInfo, QpParams
from harness.rdma.verbs import Device, RcQp, opcode, verbs_call
from harness.system.holders import SYSFS_VERBS, uverbs_files
from harness.workload.recorder import Recorder
from harness.workload.spec import WorkloadSpec

DRAIN_TIMEOUT_S = 5.0  # QP to ERR -> every WR flushed back
AGENT_REPLY_TIMEOUT_S = 20.0
REMOVAL_CHECK_S = 0.01  # how often the uverbs node is looked at (a stat under TCG: ~30 us)
MAX_UNACCOUNTED_LISTED = 1000  # in the finish report; the pages have every request



class ClientCore(ClientIoPath):
    def __init__(self, name: str, policy: Policy, spec: WorkloadSpec, device: DeviceInfo,
                 agent_socket: str, journal: IO[str] | None = None) -> None:
        super().__init__(spec, journal)
        self.name = name
        self.policy = policy
        self._next_removal_check = 0.0
        self.device_info = device
        self.device: Device | None = None
        self.uverbs: str | None = None  # sysfs node of our device, watched for removal
        self.agent_qps: list[dict[str, int]] = []  # every agent QP we made
        self.round = 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(agent_socket)
        self.agent = Channel(sock, f"peer agent (for {name})", ChannelKind.PEER)

    # --- device and connections --------------------------------------------------------------

    def open(self, info: DeviceInfo) -> None:
        """Open the device and connect spec.qps QPs (a new generation) to new agent QPs."""
        t0 = time.monotonic_ns()
        self.device_info = info
        if self.device is None:
            self.device = Device(info.dev, info.port, info.gid_index)
            self.uverbs = uverbs_node(info.dev)
            self.device_fatal = False
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
        if self.t0_ns is not None:  # a reopen after go: what arrived by now waited for it
            self.arrive(t2)
            self.held_below = self.n_arrived
        self.note("opened", generation=self.generation, dev=info.dev,
                  held_below=self.held_below,
                  agent_qps=[a["qp_id"] for a in self.agent_qps
                             if a["generation"] == self.generation],
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
        self.start_queue()
        self.refusing = ""
        self._slot_size = spec.slot_size
        self._read_want = payload.encode(READ_SEQ, spec.slot_size)
        self._burst = bursts(spec)
        self.metrics = Metrics()
        self.events = []
        self.agent_qps = []
        self.pending_errors = []
        self._errored = []
        self.admitting = False
        self.round += 1
        self.restart_journal("round", round=self.round)  # the books restart here
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
            if name == "DEVICE_FATAL":  # the device was taken away (--removal disassociate)
                self.device_fatal = True
            if name in ("PORT_ERR", "DEVICE_FATAL"):
                self.error(f"async event {name}")

    def check_removed(self) -> None:
        """Stock rxe sends no DEVICE_FATAL: its uverbs node vanishing is the removal notice
        (with --removal disassociate both come). Noted once per device."""
        if self.device is not None and self.uverbs and not os.path.exists(self.uverbs):
            self.uverbs = None  # seen: a client that keeps the device hears of it once
            self.note("device removed")
            self.error("the device's uverbs node vanished (device being removed)")

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
        abandoned: list[int] = []
        self.read_async_events()  # a DEVICE_FATAL not read yet changes what can come back
        for conn in self.conns.values():
            if not conn.n_inflight:
                continue
            if self.device_fatal:  # nothing posted will complete, not even flushed
                (flushed if requeue else abandoned).extend(self._give_up(conn))
                continue
            try:
                conn.qp.to_err()
            except RxePowerError as exc:
                self.metrics.notes.append(f"to_err failed: {exc.problem}")
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while conn.n_inflight and time.monotonic() < deadline:
                try:
                    wcs = conn.qp.poll(POLL_BATCH)
                except OsCallError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    # the context was taken away (disassociate) before its DEVICE_FATAL
                    # was read: its CQ answers EIO and nothing posted will complete (seen
                    # in the guest: queue-replay under surprise-removal died of this)
                    self.note("cq gone", error=exc.problem)
                    self.device_fatal = True
                    (flushed if requeue else abandoned).extend(self._give_up(conn))
                    break
                for wc in wcs:
                    self._complete(conn, wc, flushed)
                if conn.n_inflight:
                    wait_readable(conn.qp.channel_fd, 0.05)
            conn.broken = True
            # anything still not back is left posted: the ledger makes it LOST at the end
        if requeue:
            for req_id in sorted(flushed, reverse=True):
                self.ledger.retry(req_id)
                self.queue.appendleft(req_id)
        if abandoned:
            why = "the device went (DEVICE_FATAL) before it completed"
            for req_id in abandoned:
                self.ledger.abandoned(req_id, why)
            self.note("abandoned", reqs=abandoned, reason=why)
        self.note("flushed", reqs=flushed, requeued=requeue)
        return len(flushed) + len(abandoned)

    @staticmethod
    def _give_up(conn: Conn) -> list[int]:
        """Every request posted on `conn`, taken back without a completion (the device is
        gone: none will come); the connection is broken."""
        gone = [r for r in conn.slot_req if r >= 0]
        conn.slot_req = [-1] * len(conn.slot_req)
        conn.free_slots = list(range(len(conn.slot_req)))
        conn.order.clear()
        conn.n_inflight = 0
        conn.broken = True
        return gone

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
                conn.qp.post_send(GOODBYE_WR_ID, opcode("SEND_WITH_IMM"), 0, 0,
                                  imm=GOODBYE_SEQ)
                wcs = conn.qp.wait(1, timeout_s=DRAIN_TIMEOUT_S, what="goodbye completion")
                ok &= all(int(w.status) == 0 for w in wcs)
            except RxePowerError as exc:
                self.metrics.notes.append(f"goodbye failed: {exc.problem}")
                ok = False
        self.metrics.goodbye_ns = time.monotonic_ns()
        self.note("goodbye", ok=ok)
        return ok

    def finish(self) -> dict[str, Any]:
        """Every request gets its outcome; the report without the ledger itself, which
        the controller reads in pages (ledger_page): it can be far larger than one
        message."""
        self.arrive(time.monotonic_ns())
        self.ledger.finalize()
        if self.queue:  # never posted by the deadline
            self.fail_queue("never posted: the client had not resumed by the deadline")
        self.flush_journal()
        return {"client": self.name, "policy": self.policy.name,
                "requests": len(self.ledger), "counts": self.ledger.counts(),
                "unaccounted": self.ledger.unaccounted()[:MAX_UNACCOUNTED_LISTED],
                "metrics": self.metrics.to_json(), "agent_qps": self.agent_qps,
                "generations": self.generation, "round": self.round, "events": self.events}

    def ledger_page(self, start: int, limit: int) -> dict[str, Any]:
        return self.ledger.page(start, limit)


def uverbs_node(dev: str) -> str | None:
    """The sysfs node of the device's uverbs file (it vanishes when a delete starts)."""
    files = sorted(uverbs_files(dev))
    return str(SYSFS_VERBS / Path(files[0]).name) if files else None

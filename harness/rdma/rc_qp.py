"""An RC queue pair with its own CQ, completion channel and MR, as a context manager: the
QP state machine (RESET -> INIT -> RTR -> RTS, ERR), the MR's buffer, posting, and
completions taken without ever blocking inside pyverbs (the completion channel's fd is
non-blocking and waited on with select(), bounded by a timeout).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import random
import time

from harness.core.errors import BoundExceeded, OsCallError, RxePowerError, oserror_to
from harness.rdma import payload
from harness.rdma.event_fds import wait_readable, with_event_fd
from harness.rdma.names import QpState, wc_status_name
from harness.rdma.qp_types import QpInfo, QpParams
from harness.rdma.verbs_device import ACCESS_ALL, Closing, Device, verbs_call

try:  # pyverbs may be absent: harness.rdma.verbs_device.require_pyverbs says so
    import pyverbs.enums as e
    from pyverbs.addr import GID as PvGID
    from pyverbs.addr import AHAttr, GlobalRoute
    from pyverbs.cq import CQ, WC, CompChannel
    from pyverbs.mr import MR
    from pyverbs.pyverbs_error import PyverbsError
    from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
    from pyverbs.wr import SGE, RecvWR, SendWR
except ImportError:  # pragma: no cover - depends on the host
    pass

CQ_WAIT_TIMEOUT_S = 10.0
_NO_VIEW = memoryview(b"")  # a closed QP's view of its (freed) MR: nothing to read


class RcQp(Closing):
    """An RC QP with its own CQ, completion channel and MR. Use as a context manager.

    The QP may also be created for an rdma_cm connection: pass `ctx`/`pd` from the
    CMID, and drive the state changes with attributes from `init_qp_attr`.
    """

    def __init__(self, dev: Device, params: QpParams | None = None) -> None:
        self.dev = dev
        self.params = params = params or QpParams()
        self.psn = random.getrandbits(24)
        self._bad_wr: SendWR | None = None
        self.last_post_error: OsCallError | None = None
        self._stack = contextlib.ExitStack()
        try:
            with verbs_call(f"{dev.name}: create completion channel"):
                self.channel, self.channel_fd = with_event_fd(
                    lambda: CompChannel(dev.ctx), "completion channel")
            self._stack.callback(self.channel.close)
            depth = params.max_send_wr + params.max_recv_wr
            with verbs_call(f"{dev.name}: create CQ of {depth}"):
                self.cq = CQ(dev.ctx, depth, None, self.channel, 0)
            self._stack.callback(self.cq.close)
            # The MR's buffer is its own anonymous mapping, unmapped at close: pyverbs'
            # own buffer comes from the heap (posix_memalign), and freed between Python's
            # large objects it left holes the next page-aligned MR did not fit. Measured
            # (peer agent, 30 standby cycles, 292 KiB MRs): RSS +296 KiB, one MR, in most
            # cycles (23.5 -> 38.3 MB); its QPs, CQs and MRs were all destroyed
            # (tests/data/stress-rss-series.json, before and after).
            self._buf = mmap.mmap(-1, params.mr_size)
            self._stack.callback(self._unmap)
            self._cbuf: ctypes.Array[ctypes.c_char] | None = (
                ctypes.c_char * params.mr_size).from_buffer(self._buf)
            self._stack.callback(self._drop_cbuf)
            with verbs_call(f"{dev.name}: register MR of {params.mr_size} bytes"):
                self.mr = MR(dev.pd, params.mr_size, ACCESS_ALL,
                             address=ctypes.addressof(self._cbuf))
            self._stack.callback(self.mr.close)
            # the MR's buffer as a writable view: payloads are written and checked in
            # place (pyverbs' read/write copy through a bytes object)
            self.view: memoryview = memoryview(self._buf).cast("B")
            self._stack.callback(self._drop_view)
            cap = QPCap(max_send_wr=params.max_send_wr, max_recv_wr=params.max_recv_wr,
                        max_send_sge=1, max_recv_sge=1)
            init = QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap)
            with verbs_call(f"{dev.name}: create RC QP"):
                self.qp = QP(dev.pd, init)
            self._stack.callback(self.qp.close)
            self.qpn = int(self.qp.qp_num)
            if params.use_events:
                with verbs_call("arm CQ"):
                    self.cq.req_notify()
        except BaseException:
            self._stack.close()
            raise

    # -- identity and state
    def info(self) -> QpInfo:
        return QpInfo(self.qpn, self.psn, self.dev.gid, int(self.mr.rkey), int(self.mr.buf),
                      self.params.mr_size)

    def state(self) -> QpState:
        with verbs_call(f"query QP {self.qpn}"):
            attr, _ = self.qp.query(e.IBV_QP_STATE)
        return QpState(int(attr.qp_state))

    def to_init(self) -> None:
        attr = QPAttr(qp_state=e.IBV_QPS_INIT)
        attr.pkey_index = 0
        attr.port_num = self.dev.port
        attr.qp_access_flags = ACCESS_ALL
        with verbs_call(f"QP {self.qpn} RESET->INIT"):
            self.qp.to_init(attr)

    def to_rtr(self, remote: QpInfo) -> None:
        port = self.dev.query_port()
        gr = GlobalRoute(dgid=PvGID(remote.gid), sgid_index=self.dev.gid_index)
        gr.hop_limit = 64
        ah = AHAttr(port_num=self.dev.port, is_global=1, gr=gr)
        attr = QPAttr(qp_state=e.IBV_QPS_RTR)
        attr.path_mtu = port.active_mtu
        attr.dest_qp_num = remote.qpn
        attr.rq_psn = remote.psn
        attr.max_dest_rd_atomic = self.params.max_rd_atomic
        attr.min_rnr_timer = self.params.min_rnr_timer
        attr.ah_attr = ah
        with verbs_call(f"QP {self.qpn} INIT->RTR (remote QPN {remote.qpn}, GID {remote.gid})"):
            self.qp.to_rtr(attr)

    def to_rts(self) -> None:
        attr = QPAttr(qp_state=e.IBV_QPS_RTS)
        attr.timeout = self.params.timeout
        attr.retry_cnt = self.params.retry_cnt
        attr.rnr_retry = self.params.rnr_retry
        attr.sq_psn = self.psn
        attr.max_rd_atomic = self.params.max_rd_atomic
        with verbs_call(f"QP {self.qpn} RTR->RTS"):
            self.qp.to_rts(attr)

    def connect(self, remote: QpInfo) -> None:
        """RESET -> INIT -> RTR -> RTS against the remote QP."""
        self.to_init()
        self.to_rtr(remote)
        self.to_rts()

    def modify_cm(self, attr: object, mask: int, what: str) -> None:
        """Apply attributes obtained from rdma_cm's init_qp_attr."""
        with verbs_call(f"QP {self.qpn} {what} (rdma_cm attributes)"):
            self.qp.modify(attr, mask)

    def to_err(self) -> None:
        attr = QPAttr(qp_state=e.IBV_QPS_ERR)
        with verbs_call(f"QP {self.qpn} -> ERR"):
            self.qp.modify(attr, e.IBV_QP_STATE)

    # -- memory
    def _drop_view(self) -> None:
        view, self.view = self.view, _NO_VIEW  # before the buffer is unmapped
        with contextlib.suppress(BufferError):
            view.release()

    def _drop_cbuf(self) -> None:
        """The ctypes array over the mapping is an export of it: gone before the unmap."""
        self._cbuf = None

    def _unmap(self) -> None:
        """Unmap the MR's buffer; if a slice of the view is still held somewhere, the
        mapping goes when the last one does (the mmap object unmaps when freed)."""
        with contextlib.suppress(BufferError):
            self._buf.close()

    def write_local(self, offset: int, data: bytes) -> None:
        self.mr.write(data, len(data), offset)

    def read_local(self, offset: int, length: int) -> bytes:
        return bytes(self.mr.read(length, offset))

    def write_payload(self, offset: int, seq: int, length: int, generation: int = 0) -> None:
        """payload.encode(seq, length, generation) written straight into the MR."""
        payload.write_into(self.view, offset, seq, length, generation)

    # -- posting
    def sge(self, offset: int, length: int) -> SGE:
        if offset < 0 or offset + length > self.params.mr_size:
            raise RxePowerError(f"buffer [{offset}, {offset + length}) outside the MR of "
                                f"{self.params.mr_size} bytes", "use a larger mr_size")
        return SGE(int(self.mr.buf) + offset, length, int(self.mr.lkey))

    def recv_wr(self, wr_id: int, offset: int, length: int) -> RecvWR:
        """A receive WR over [offset, offset + length) of the MR, to post (again) with
        post_recv_wr: built once, reposted as often as needed (its next pointer is NULL)."""
        return RecvWR(wr_id=wr_id, num_sge=1, sg=[self.sge(offset, length)])

    def post_recv_wr(self, wr: RecvWR) -> None:
        try:
            self.qp.post_recv(wr)
        except PyverbsError as exc:
            raise oserror_to(f"QP {self.qpn} post_recv wr_id {wr.wr_id}", exc) from exc

    def post_recv(self, wr_id: int, offset: int, length: int) -> None:
        self.post_recv_wr(self.recv_wr(wr_id, offset, length))

    def send_wr(self, wr_id: int, opcode: int, offset: int, length: int, *,
                imm: int | None = None, remote_addr: int | None = None,
                rkey: int | None = None, compare_add: int = 0, swap: int = 0) -> SendWR:
        """A signaled send WR over [offset, offset + length) of the MR. Its wr_id,
        imm_data and (set_wr_rdma) remote address may be changed and the WR posted again
        with post: the hot path builds each (slot, opcode, size) WR once. A WR given a
        next_wr stays chained (pyverbs cannot set the pointer back to NULL): keep chained
        WRs for post_chain only."""
        wr = SendWR(wr_id=wr_id, opcode=opcode, num_sge=1, sg=[self.sge(offset, length)],
                    send_flags=e.IBV_SEND_SIGNALED)
        if imm is not None:
            wr.imm_data = imm
        if opcode in (e.IBV_WR_ATOMIC_FETCH_AND_ADD, e.IBV_WR_ATOMIC_CMP_AND_SWP):
            wr.set_wr_atomic(rkey, remote_addr, compare_add, swap)
        elif remote_addr is not None:
            wr.set_wr_rdma(rkey, remote_addr)
        return wr

    def post(self, wr: SendWR) -> None:
        """Post a send WR (one ibv_post_send); errors become OsCallError with errno."""
        try:
            self.qp.post_send(wr)
        except PyverbsError as exc:
            raise oserror_to(f"QP {self.qpn} post_send wr_id {wr.wr_id}", exc) from exc

    def post_chain(self, head: SendWR) -> tuple[int, OsCallError] | None:
        """Post a chain of send WRs (linked with next_wr) in one ibv_post_send: one
        doorbell for the lot. None when all went; else the wr_id of the first WR that was
        not posted (those before it were) and the error (also in `last_post_error`)."""
        if self._bad_wr is None:  # receives a copy of the failing WR (pyverbs never frees
            self._bad_wr = SendWR(num_sge=1, sg=[self.sge(0, 0)])  # a WR's list by itself)
        try:
            self.qp.post_send(head, self._bad_wr)
        except PyverbsError as exc:
            err = oserror_to(f"QP {self.qpn} post_send (chain from wr_id {head.wr_id})", exc)
            self.last_post_error = err
            return int(self._bad_wr.wr_id), err
        return None

    def post_send(self, wr_id: int, opcode: int, offset: int, length: int, *,
                  imm: int | None = None, remote_addr: int | None = None,
                  rkey: int | None = None, compare_add: int = 0, swap: int = 0) -> None:
        self.post(self.send_wr(wr_id, opcode, offset, length, imm=imm,
                               remote_addr=remote_addr, rkey=rkey, compare_add=compare_add,
                               swap=swap))

    # -- completions
    def poll(self, max_entries: int = 16, ready: bool | None = None) -> list[WC]:
        """Non-blocking: take what the CQ has now (acking any pending event first).
        `ready`: the caller already knows whether the completion channel is readable
        (from its own select), which saves a select() per call."""
        if self.params.use_events and (ready if ready is not None
                                       else wait_readable(self.channel_fd, 0)):
            self._take_event()
        try:
            n, wcs = self.cq.poll(max_entries)
        except PyverbsError as exc:
            raise oserror_to(f"poll CQ of QP {self.qpn}", exc) from exc
        return wcs[:n] if n else []

    def _take_event(self) -> None:
        try:
            self.channel.get_cq_event(self.cq)
        except PyverbsError as exc:
            err = oserror_to("get CQ event", exc)
            if err.errno == errno.EAGAIN:  # taken already (the caller's select was stale)
                return
            raise err from exc
        self.cq.ack_events(1)
        with verbs_call("re-arm CQ"):
            self.cq.req_notify()

    def wait(self, count: int, timeout_s: float = CQ_WAIT_TIMEOUT_S,
             what: str = "completions") -> list[WC]:
        """Collect `count` completions, by event (default) or polling, within a bound."""
        out: list[WC] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count:
            got = self.poll(count - len(out))
            if got:
                out.extend(got)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BoundExceeded(
                    f"waiting for {what} on QP {self.qpn}", "CQ_WAIT_TIMEOUT_S", timeout_s,
                    f"{count - len(out)} of {count} completions (got "
                    f"{[(int(w.wr_id), wc_status_name(w.status)) for w in out][-5:]})")
            if self.params.use_events:
                if wait_readable(self.channel_fd, remaining):
                    self._take_event()
            else:
                time.sleep(0)  # busy polling, by request only
        return out

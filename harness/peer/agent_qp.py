"""One QP of the peer agent and what arrives on it.

An AgentQp records every arrival (seq, opcode, length, checksum verdict, QP
generation, time) and every event of its own (completion errors, flushed receives).
Memory layout of its MR: `recv_slots` receive slots of `slot_size` bytes, then the
RDMA area (the remote side's target for WRITE/READ/atomics); offsets in
fill/verify/read_u64/write_u64 are relative to the RDMA area. A WRITE_WITH_IMM with
imm = seq must land in slot (seq mod write_slots) of the area (slots of `slot_size`),
where the agent checks it on arrival like a SEND.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.core.errors import RxePowerError
from harness.rdma import cm, payload
from harness.rdma.names import wc_status_name
from harness.rdma.payload import GOODBYE_SEQ
from harness.rdma.qp_types import QpInfo
from harness.rdma.verbs import RcQp

if TYPE_CHECKING:  # pyverbs is imported only where a device is used (harness.rdma.verbs)
    from pyverbs.cq import WC

POLL_BATCH = 64  # completions taken per poll call
WC_RECV, WC_RECV_RDMA_WITH_IMM = 128, 129  # enum ibv_wc_opcode
IBV_WC_WITH_IMM = 1 << 1
PROBE_WR_ID = 0xFFFF_FFFF_0000  # the agent's own probe SEND


@dataclass(slots=True)
class Arrival:
    seq: int | None
    opcode: str
    length: int
    ok: bool
    reason: str
    crc: int
    generation: int
    t: float

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "opcode": self.opcode, "length": self.length, "ok": self.ok,
                "reason": self.reason, "crc": self.crc, "generation": self.generation,
                "t": self.t}


@dataclass
class AgentQp:
    qp_id: int
    qp: RcQp
    recv_slots: int
    slot_size: int
    generation: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    delivered: int = 0  # arrivals already handed to the controller
    write_slots: int = 0  # WRITE_WITH_IMM slots at the start of the area (0: all of it)
    probe_started: float | None = None
    probe_done: tuple[str, float] | None = None
    cmid: cm.CMID | None = None
    recv_wrs: list[Any] = field(default_factory=list)  # one prebuilt receive WR per slot

    @property
    def rdma_base(self) -> int:
        return self.recv_slots * self.slot_size

    def info(self) -> dict[str, Any]:
        base = self.qp.info()
        return QpInfo(base.qpn, base.psn, base.gid, base.rkey, base.addr + self.rdma_base,
                      base.length - self.rdma_base).to_json()

    def post_all_recvs(self) -> None:
        if not self.recv_wrs:
            self.recv_wrs = [self.qp.recv_wr(slot, slot * self.slot_size, self.slot_size)
                             for slot in range(self.recv_slots)]
        for wr in self.recv_wrs:
            self.qp.post_recv_wr(wr)

    def handle_completions(self, ready: bool | None = None) -> None:
        """Take every completion there is, in batches. `ready`: the channel is known to
        be readable (the agent's selector said so)."""
        while True:
            wcs = self.qp.poll(POLL_BATCH, ready)
            ready = False
            for wc in wcs:
                self._completion(wc)
            if len(wcs) < POLL_BATCH:
                return

    def _completion(self, wc: WC) -> None:
        code, wr_id = wc.status, wc.wr_id
        if wr_id == PROBE_WR_ID:
            self.probe_done = (wc_status_name(code), time.monotonic())
            return
        if code:
            self.events.append({"kind": "wc_error", "status": wc_status_name(code),
                                "wr_id": wr_id, "vendor_err": wc.vendor_err,
                                "t": time.monotonic()})
            return
        op = wc.opcode
        if op != WC_RECV and op != WC_RECV_RDMA_WITH_IMM:
            return
        seq = wc.imm_data if wc.wc_flags & IBV_WC_WITH_IMM else None
        n = wc.byte_len
        if op == WC_RECV:
            if seq == GOODBYE_SEQ:  # the client's orderly disconnect
                self.arrivals.append(Arrival(seq, "GOODBYE", 0, True, "", 0, self.generation,
                                             time.monotonic()))
                self.qp.to_err()  # our half: flush our receives (reported as events)
                return
            off = wr_id * self.slot_size
            chk = payload.verify(self.qp.view[off:off + n], expect_seq=seq)  # in place
            self.arrivals.append(Arrival(chk.seq, "RECV", n, chk.ok, chk.reason, chk.crc,
                                         self.generation, time.monotonic()))
        elif seq is None:  # cannot happen for WITH_IMM; recorded, not checked
            self.arrivals.append(Arrival(None, "RECV_RDMA_WITH_IMM", n, False, "no imm", 0,
                                         self.generation, time.monotonic()))
        else:  # WRITE_WITH_IMM: the writer put seq's payload in seq's slot of the area
            off = self.write_slot(seq)
            chk = payload.verify(self.qp.view[off:off + n], expect_seq=seq)
            self.arrivals.append(Arrival(chk.seq, "RECV_RDMA_WITH_IMM", n, chk.ok, chk.reason,
                                         chk.crc, self.generation, time.monotonic()))
        self.qp.post_recv_wr(self.recv_wrs[wr_id])

    def write_slot(self, seq: int) -> int:
        """Where a WRITE_WITH_IMM carrying `seq` lands: slot (seq mod write_slots) of the
        area (write_slots 0: as many slots as the area holds)."""
        slots = self.write_slots or max(1, (self.qp.params.mr_size - self.rdma_base)
                                        // self.slot_size)
        return self.rdma_base + (seq % slots) * self.slot_size

    def rdma_offset(self, offset: int, length: int) -> int:
        area = self.qp.params.mr_size - self.rdma_base
        if offset < 0 or length < 0 or offset + length > area:
            raise RxePowerError(f"[{offset}, {offset + length}) is outside the RDMA area of "
                                f"{area} bytes", "ask for a larger mr_size in create_qp")
        return self.rdma_base + offset

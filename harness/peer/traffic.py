"""RC traffic between the local HCA (this process) and the peer agent (rxe1).

Every operation's payload is checked where it lands: SENDs by the agent (header,
checksum and pattern per message), WRITEs by the agent reading its RDMA area,
READs here against what the agent filled, atomics against the agent's counter.
Used by `rxe-power run` (the traffic report) and by the tests.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.core.errors import RxePowerError
from harness.peer.controller import PeerAgent
from harness.rdma import payload
from harness.rdma.names import wc_status_name
from harness.rdma.qp_types import QpInfo, QpParams
from harness.rdma.verbs import Device, RcQp, opcode
from harness.topology.config import Topology

IMM_MASK = 0xFFFFFFFF


@dataclass
class OpStats:
    op: str
    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.messages > 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Pair:
    """A connected RC pair: our QP on the local HCA, the agent's QP on the peer HCA."""

    qp: RcQp
    agent: PeerAgent
    qp_id: int
    remote: QpInfo
    recv_slots: int
    slot_size: int
    next_seq: int = 1

    def take_seq(self, n: int = 1) -> int:
        seq = self.next_seq
        self.next_seq += n
        return seq


@contextlib.contextmanager
def connected_pair(dev: Device, agent: PeerAgent, *, local_mr: int = 1 << 20,
                   peer_mr: int = 1 << 21, recv_slots: int = 16, slot_size: int = 1 << 16,
                   use_events: bool = True) -> Iterator[Pair]:
    """Create and connect an RC pair; the local QP is closed and the agent's destroyed after."""
    params = QpParams(max_send_wr=recv_slots, max_recv_wr=recv_slots, mr_size=local_mr,
                      use_events=use_events)
    with RcQp(dev, params) as qp:
        qp_id, remote = agent.create_qp(peer_mr, recv_slots, slot_size)
        try:
            qp.connect(remote)
            agent.connect_qp(qp_id, qp.info())
            yield Pair(qp, agent, qp_id, remote, recv_slots, slot_size)
        finally:
            with contextlib.suppress(Exception):
                agent.request("destroy_qp", qp_id=qp_id)


def _check_wcs(wcs: list[Any], stats: OpStats) -> None:
    for wc in wcs:
        status = wc_status_name(int(wc.status))
        if status != "SUCCESS":
            stats.errors.append(f"wr_id {int(wc.wr_id)}: {status} vendor_err {int(wc.vendor_err)}")


def send_messages(pair: Pair, sizes: list[int], window: int | None = None) -> OpStats:
    """SEND_WITH_IMM each size (imm = seq); the agent verifies every message."""
    stats = OpStats("SEND")
    window = min(window or pair.recv_slots, pair.recv_slots)
    if max(sizes) > pair.slot_size:
        raise RxePowerError(f"message of {max(sizes)} bytes exceeds the peer's receive slot "
                            f"of {pair.slot_size}", "use a larger slot_size")
    slot = max(sizes)
    if slot * window > pair.qp.params.mr_size:
        window = max(1, pair.qp.params.mr_size // slot)
    t0 = time.monotonic()
    first = pair.take_seq(len(sizes))
    outstanding = 0
    for i, size in enumerate(sizes):
        if outstanding == window:
            _check_wcs(pair.qp.wait(1, what="SEND completions"), stats)
            outstanding -= 1
        seq = first + i
        off = (i % window) * slot
        pair.qp.write_local(off, payload.encode(seq, size))
        pair.qp.post_send(seq, opcode("SEND_WITH_IMM"), off, size, imm=seq & IMM_MASK)
        outstanding += 1
    _check_wcs(pair.qp.wait(outstanding, what="SEND completions"), stats)
    rep = pair.agent.arrivals(pair.qp_id, len(sizes), timeout_s=30.0)
    arrivals = rep["arrivals"]
    stats.seconds = time.monotonic() - t0
    for ev in rep["events"]:
        stats.errors.append(f"peer event {ev}")
    seqs = [a["seq"] for a in arrivals]
    if seqs != list(range(first, first + len(sizes))):
        stats.errors.append(f"peer saw seqs {seqs[:5]}...{seqs[-5:]} ({len(seqs)}), expected "
                            f"{first}..{first + len(sizes) - 1}")
    for a, size in zip(arrivals, sizes, strict=False):
        if not a["ok"] or a["length"] != size:
            stats.errors.append(f"seq {a['seq']}: {a['reason'] or 'length'} ({a['length']} B)")
    stats.messages = sum(1 for a in arrivals if a["ok"])
    stats.bytes = sum(a["length"] for a in arrivals if a["ok"])
    return stats


def write_messages(pair: Pair, sizes: list[int]) -> OpStats:
    """RDMA WRITE each size into its own place in the peer's RDMA area; the agent verifies."""
    stats = OpStats("RDMA_WRITE")
    t0 = time.monotonic()
    placed = _placements(sizes, pair.remote.length, pair.qp.params.mr_size)
    first = pair.take_seq(len(sizes))
    for i, (size, off) in enumerate(placed):
        pair.qp.write_local(off, payload.encode(first + i, size))
    _rdma_batch(pair, "RDMA_WRITE", placed, first, stats)
    for i, (size, off) in enumerate(placed):
        rep = pair.agent.request("verify", qp_id=pair.qp_id, offset=off, length=size,
                                 seq=first + i)
        if rep["ok"]:
            stats.messages += 1
            stats.bytes += size
        else:
            stats.errors.append(f"seq {first + i} at {off}: {rep['reason']}")
    stats.seconds = time.monotonic() - t0
    return stats


def read_messages(pair: Pair, sizes: list[int]) -> OpStats:
    """The agent fills its RDMA area; we RDMA READ each piece and verify it here."""
    stats = OpStats("RDMA_READ")
    t0 = time.monotonic()
    placed = _placements(sizes, pair.remote.length, pair.qp.params.mr_size)
    first = pair.take_seq(len(sizes))
    for i, (size, off) in enumerate(placed):
        pair.agent.request("fill", qp_id=pair.qp_id, offset=off, length=size, seq=first + i)
    _rdma_batch(pair, "RDMA_READ", placed, first, stats)
    for i, (size, off) in enumerate(placed):
        chk = payload.verify(pair.qp.read_local(off, size), first + i, size)
        if chk.ok:
            stats.messages += 1
            stats.bytes += size
        else:
            stats.errors.append(f"seq {first + i}: {chk.reason}")
    stats.seconds = time.monotonic() - t0
    return stats


def _rdma_batch(pair: Pair, op: str, placed: list[tuple[int, int]], first: int,
                stats: OpStats) -> None:
    """Post one RDMA op per placement (same offset on both sides), a send queue's worth
    at a time, and check every completion."""
    window = pair.qp.params.max_send_wr
    for i, (size, off) in enumerate(placed):
        pair.qp.post_send(first + i, opcode(op), off, size,
                          remote_addr=pair.remote.addr + off, rkey=pair.remote.rkey)
        if (i + 1) % window == 0:
            _check_wcs(pair.qp.wait(window, what=f"{op} completions"), stats)
    _check_wcs(pair.qp.wait(len(placed) % window, what=f"{op} completions"), stats)


def _placements(sizes: list[int], remote_len: int, local_len: int) -> list[tuple[int, int]]:
    """Non-overlapping 8-byte aligned offsets for a batch, inside both MRs."""
    out, off = [], 0
    for size in sizes:
        if off + size > min(remote_len, local_len):
            raise RxePowerError(f"batch of {sum(sizes)} bytes does not fit the MRs "
                                f"({remote_len}/{local_len})", "send smaller batches")
        out.append((size, off))
        off += (size + 7) // 8 * 8
    return out


def atomics(pair: Pair, count: int, counter_offset: int = 0) -> OpStats:
    """FETCH_ADD `count` times then CMP_SWP (hit and miss); check every returned value."""
    stats = OpStats("ATOMIC")
    t0 = time.monotonic()
    start = 1000
    pair.agent.request("write_u64", qp_id=pair.qp_id, offset=counter_offset, value=start)
    raddr = pair.remote.addr + counter_offset
    for i in range(count):
        seq = pair.take_seq()
        pair.qp.post_send(seq, opcode("ATOMIC_FETCH_AND_ADD"), 0, 8, remote_addr=raddr,
                          rkey=pair.remote.rkey, compare_add=i + 1)
        _check_wcs(pair.qp.wait(1, what="FETCH_ADD completion"), stats)
        got = struct.unpack("<Q", pair.qp.read_local(0, 8))[0]
        want = start + i * (i + 1) // 2
        if got != want:
            stats.errors.append(f"FETCH_ADD #{i} returned {got}, expected {want}")
    total = start + count * (count + 1) // 2
    for compare, swap, should_swap in ((total, 7, True), (total, 9, False)):
        seq = pair.take_seq()
        pair.qp.post_send(seq, opcode("ATOMIC_CMP_AND_SWP"), 0, 8, remote_addr=raddr,
                          rkey=pair.remote.rkey, compare_add=compare, swap=swap)
        _check_wcs(pair.qp.wait(1, what="CMP_SWP completion"), stats)
        got = struct.unpack("<Q", pair.qp.read_local(0, 8))[0]
        want = total if should_swap else 7
        if got != want:
            stats.errors.append(f"CMP_SWP(compare={compare}) returned {got}, expected {want}")
    final = pair.agent.request("read_u64", qp_id=pair.qp_id, offset=counter_offset)["value"]
    if final != 7:
        stats.errors.append(f"peer counter is {final} after the swaps, expected 7")
    stats.messages = count + 2
    stats.bytes = 8 * stats.messages
    stats.seconds = time.monotonic() - t0
    return stats


def run_check(topo: Topology, agent: PeerAgent, messages: int = 200) -> list[OpStats]:
    """The traffic check behind `rxe-power run`: every operation once across the wire."""
    sizes = [1, 64, 4096, 65536] * (messages // 4)
    with Device(topo.local.dev, topo.local.port, topo.local.gid_index) as dev, \
            connected_pair(dev, agent) as pair:
        return [
            send_messages(pair, sizes),
            write_messages(pair, [4096] * 64),
            read_messages(pair, [4096] * 64),
            atomics(pair, 32),
        ]

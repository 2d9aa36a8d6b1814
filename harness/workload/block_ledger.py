"""The per-I/O ledger of a block client (pure logic: no I/O here).

Every write carries a header and a known pattern, so a block read anywhere (through the
initiator, or from the target's backing store on the peer side) says which write put
it there and whether it is intact:

    block = make_block(seq=7, generation=1, block=7, size=4096)
    check_block(data, seq=7, generation=1, block=7) -> BlockState.INTACT / ABSENT / CORRUPTED

Each I/O ends as exactly one `IoOutcome` (completed-ok, completed-late, failed-to-app
with its errno named, stuck), decided from its recorded times against the transition's
window. Afterwards every acknowledged write is checked against the target's store
(`TargetState`: intact / lost / corrupted). `summarize` counts both and lists what is
unaccounted (it must be empty).
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

MAGIC = b"RXPWBLK1"
# magic, seq, generation, block index, crc32 of everything after the header
HEADER = struct.Struct("<8sQQQI")
LATE_MIN_S = 0.5  # an ok I/O across the transition that took this long waited for it


class IoOp(StrEnum):
    WRITE = "write"
    READ = "read"


class IoOutcome(StrEnum):
    COMPLETED_OK = "completed-ok"
    COMPLETED_LATE = "completed-late"  # waited across the transition, then succeeded
    FAILED_TO_APP = "failed-to-app"  # the application got an errno
    STUCK = "stuck"  # no completion within the bound


class BlockState(StrEnum):
    INTACT = "intact"  # our header, our seq, checksum and pattern right
    ABSENT = "absent"  # not this write (zeros, or another write's block)
    CORRUPTED = "corrupted"  # this write's header but a wrong checksum or pattern


class TargetState(StrEnum):
    INTACT = "intact"
    LOST = "lost"  # acknowledged, not on the target
    CORRUPTED = "corrupted"  # acknowledged, on the target damaged


def _pattern(seq: int, generation: int, n: int) -> bytes:
    word = struct.pack("<Q", (seq * 0x9E3779B97F4A7C15 ^ (generation << 48) ^ 0xA5A5)
                       & 0xFFFFFFFFFFFFFFFF)
    return (word * (n // 8 + 1))[:n]


def make_block(seq: int, generation: int, block: int, size: int) -> bytes:
    body = _pattern(seq, generation, size - HEADER.size)
    return HEADER.pack(MAGIC, seq, generation, block, zlib.crc32(body)) + body


def check_block(data: bytes, seq: int, generation: int, block: int) -> BlockState:
    if len(data) < HEADER.size:
        return BlockState.ABSENT
    magic, s, g, b, crc = HEADER.unpack_from(data)
    if magic != MAGIC or (s, g, b) != (seq, generation, block):
        # another write (or none) is there; a torn header of ours would still be ours
        return BlockState.ABSENT
    body = data[HEADER.size:]
    if zlib.crc32(body) != crc or body != _pattern(seq, generation, len(body)):
        return BlockState.CORRUPTED
    return BlockState.INTACT


def errno_name(err: int) -> str:
    return f"{errno_mod.errorcode.get(err, str(err))} ({os.strerror(err)})"


@dataclass
class IoRecord:
    """One I/O as the driver saw it (times on CLOCK_MONOTONIC, ns)."""

    seq: int
    op: IoOp
    block: int
    generation: int
    submit_ns: int
    done_ns: int | None = None  # None: no completion (yet)
    nbytes: int | None = None  # the call's return (a short count is a failure)
    errno: int | None = None
    read_ok: bool | None = None  # reads: the data was the expected write's, intact
    expect_seq: int | None = None  # reads: the write the block should hold
    stuck_wchan: str = ""
    stuck_stack: str = ""
    tid: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IoRecord:
        return cls(**{**d, "op": IoOp(d["op"])})


@dataclass(frozen=True)
class Window:
    """The transition as the I/O sees it: the device went at start_ns, the system was
    back (resume told) at end_ns."""

    start_ns: int
    end_ns: int


def outcome(rec: IoRecord, window: Window | None, late_min_s: float = LATE_MIN_S,
            size: int = 4096) -> IoOutcome:
    if rec.done_ns is None:
        return IoOutcome.STUCK
    if rec.errno is not None or rec.nbytes != size:
        return IoOutcome.FAILED_TO_APP
    if window is not None and rec.submit_ns < window.end_ns and rec.done_ns > window.start_ns \
            and (rec.done_ns - rec.submit_ns) / 1e9 >= late_min_s:
        return IoOutcome.COMPLETED_LATE
    return IoOutcome.COMPLETED_OK


def acknowledged(rec: IoRecord, window: Window | None, size: int = 4096) -> bool:
    """A write the application saw succeed."""
    return rec.op is IoOp.WRITE and outcome(rec, window, size=size) in (
        IoOutcome.COMPLETED_OK, IoOutcome.COMPLETED_LATE)


@dataclass
class LedgerSummary:
    ios: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    errnos: dict[str, int] = field(default_factory=dict)  # failed-to-app by errno name
    acknowledged_writes: int = 0
    target: dict[str, int] = field(default_factory=dict)  # TargetState -> count
    reads_bad: int = 0  # reads that completed but returned other than the expected write
    unaccounted: list[int] = field(default_factory=list)  # seqs without a verdict
    lost_seqs: list[int] = field(default_factory=list)
    corrupted_seqs: list[int] = field(default_factory=list)
    stuck: list[dict[str, Any]] = field(default_factory=list)  # seq, wchan, stack

    @property
    def invariant_ok(self) -> bool:
        """Every I/O accounted, every acknowledged write intact on the target."""
        return not self.unaccounted and not self.lost_seqs and not self.corrupted_seqs

    def count(self, o: IoOutcome) -> int:
        return self.outcomes.get(o.value, 0)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "invariant_ok": self.invariant_ok}


def summarize(records: list[IoRecord], target: dict[int, BlockState],
              window: Window | None, size: int = 4096) -> LedgerSummary:
    """`target`: for each acknowledged write's seq, what its block on the target holds."""
    s = LedgerSummary(ios=len(records))
    outs: Counter[str] = Counter()
    errs: Counter[str] = Counter()
    tgt: Counter[str] = Counter()
    seen: set[int] = set()
    for rec in records:
        if rec.seq in seen:
            s.unaccounted.append(rec.seq)  # a seq twice: the ledger is not one per I/O
            continue
        seen.add(rec.seq)
        o = outcome(rec, window, size=size)
        outs[o.value] += 1
        if o is IoOutcome.FAILED_TO_APP:
            errs[errno_name(rec.errno) if rec.errno is not None
                 else f"short ({rec.nbytes} of {size} bytes)"] += 1
        elif o is IoOutcome.STUCK:
            s.stuck.append({"seq": rec.seq, "op": rec.op.value, "wchan": rec.stuck_wchan,
                            "stack": rec.stuck_stack})
        elif rec.op is IoOp.READ and rec.read_ok is False:
            s.reads_bad += 1
        if acknowledged(rec, window, size):
            s.acknowledged_writes += 1
            state = target.get(rec.seq)
            if state is None:
                s.unaccounted.append(rec.seq)
                continue
            verdict = {BlockState.INTACT: TargetState.INTACT,
                       BlockState.ABSENT: TargetState.LOST,
                       BlockState.CORRUPTED: TargetState.CORRUPTED}[state]
            tgt[verdict.value] += 1
            if verdict is TargetState.LOST:
                s.lost_seqs.append(rec.seq)
            elif verdict is TargetState.CORRUPTED:
                s.corrupted_seqs.append(rec.seq)
    s.outcomes, s.errnos, s.target = dict(outs), dict(errs), dict(tgt)
    return s


def latest_write_per_block(records: list[IoRecord], window: Window | None,
                           size: int = 4096) -> dict[int, IoRecord]:
    """For each block, the acknowledged write that must be on the target: the one
    submitted last (each block is written once by the driver, so normally the only)."""
    out: dict[int, IoRecord] = {}
    for rec in records:
        if acknowledged(rec, window, size) and (
                rec.block not in out or rec.submit_ns > out[rec.block].submit_ns):
            out[rec.block] = rec
    return out

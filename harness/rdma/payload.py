"""Payload framing: every message carries its sequence number and a checksum.

Layout of a message of `length` bytes:
  length >= HEADER_LEN: header (magic, seq, generation, length, crc32 of the body) + body
  length <  HEADER_LEN: body only (the receiver learns seq from the immediate data
                         or from the control channel and checks the pattern)
The body is a deterministic pattern derived from the sequence number, so the
receiver can check every byte, not only a checksum.

The pattern of seq is the 256-byte ramp 0..255 xor'ed with (seq >> 8) & 0xFF,
repeated, starting at offset seq % 256. The hot paths never build it byte by byte:
for each xor key a "bank" (the xor'ed ramp repeated) is kept, and any pattern is a
slice of a bank (`pattern_view`, no copy). CRC-32 is affine over GF(2), so the
checksum of a body is crc(ramp at rot) ^ crc(key repeated) ^ crc(zeros) for bodies
of one length: 2 x 256 + 1 checksums per length cover every sequence number
(`body_crc`). Writing a message is one copy into the target buffer
(`write_into`); checking one compares it in place against the bank (`verify`,
which accepts bytes or a memoryview over the receive buffer).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"RXPW"
_HDR = struct.Struct("<4sQIII")  # magic, seq, generation, length, crc32(body)
HEADER_LEN = _HDR.size  # 24
GOODBYE_SEQ = 0xFFFFFFFF  # imm of a raw-verbs client's orderly disconnect (no payload)
READ_SEQ = 0xFFFFFFF0  # the payload the peer fills for clients' RDMA READs
_BASE = bytes(range(256))
_BASE_INT = int.from_bytes(_BASE, "big")
BANK_CACHE = 8  # banks kept (one per xor key; consecutive seqs share a key for 256 seqs)
CRC_CACHE = 1 << 16  # cached partial checksums before the cache is reset
_banks: dict[int, bytes] = {}
_ramp_crc: dict[tuple[int, int], int] = {}
_fill_crc: dict[tuple[int, int], int] = {}


def _bank(key: int, need: int) -> bytes:
    """The ramp xor'ed with `key`, repeated to at least `need` bytes."""
    bank = _banks.get(key)
    if bank is None or len(bank) < need:
        block = (_BASE_INT ^ int.from_bytes(bytes((key,)) * 256, "big")).to_bytes(256, "big")
        bank = block * (need // 256 + 1)
        if len(_banks) >= BANK_CACHE:
            _banks.pop(next(iter(_banks)))
        _banks[key] = bank
    return bank


def pattern_view(seq: int, length: int) -> memoryview:
    """The pattern of `seq`, `length` bytes, as a read-only view (no copy)."""
    rot = seq % 256
    return memoryview(_bank((seq >> 8) & 0xFF, rot + length))[rot:rot + length]


def pattern(seq: int, length: int) -> bytes:
    """Deterministic bytes for a sequence number (a rotated 0..255 ramp, xor'ed by seq)."""
    if length <= 0:
        return b""
    return bytes(pattern_view(seq, length))


def body_crc(seq: int, length: int) -> int:
    """zlib.crc32(pattern(seq, length)), from cached partial checksums (see module doc)."""
    if len(_ramp_crc) > CRC_CACHE:
        _ramp_crc.clear()
        _fill_crc.clear()
    rot, key = seq % 256, (seq >> 8) & 0xFF
    ramp = _ramp_crc.get((length, rot))
    if ramp is None:
        ramp = _ramp_crc[(length, rot)] = zlib.crc32(pattern_view(rot, length))
    if not key:
        return ramp
    fill = _fill_crc.get((length, key))
    if fill is None:
        zeros = _fill_crc.get((length, 0))
        if zeros is None:
            zeros = _fill_crc[(length, 0)] = zlib.crc32(bytes(length))
        fill = _fill_crc[(length, key)] = zlib.crc32(bytes((key,)) * length) ^ zeros
    return ramp ^ fill


def header(seq: int, length: int, generation: int = 0) -> bytes:
    """The header of a message of `length` >= HEADER_LEN bytes."""
    return _HDR.pack(MAGIC, seq, generation, length, body_crc(seq, length - HEADER_LEN))


def encode(seq: int, length: int, generation: int = 0) -> bytes:
    if length < HEADER_LEN:
        return pattern(seq, length)
    return b"".join((header(seq, length, generation),
                     pattern_view(seq, length - HEADER_LEN)))


def write_into(buf: memoryview, offset: int, seq: int, length: int,
               generation: int = 0) -> None:
    """encode() straight into a writable buffer (e.g. a view of an MR): one copy."""
    if length < HEADER_LEN:
        buf[offset:offset + length] = pattern_view(seq, length)
        return
    buf[offset:offset + HEADER_LEN] = header(seq, length, generation)
    buf[offset + HEADER_LEN:offset + length] = pattern_view(seq, length - HEADER_LEN)


@dataclass(frozen=True)
class Check:
    ok: bool
    seq: int | None
    generation: int | None
    reason: str  # "" when ok
    crc: int  # ok: the body's crc32 (as its header states); not ok: crc32 of all received


def _matches(data: bytes | memoryview, start: int, seq: int, length: int) -> bool:
    """data[start:start + length] == pattern(seq, length), compared in place."""
    rot = seq % 256
    body = data[start:start + length] if start else data
    return _bank((seq >> 8) & 0xFF, rot + length).startswith(body, rot)


def verify(data: bytes | memoryview, expect_seq: int | None = None,
           expect_len: int | None = None) -> Check:
    """Check a received message; `expect_seq` is required for short (headerless) messages.
    `data` may be a memoryview of the receive buffer: it is read in place, never copied."""
    n = len(data)
    if expect_len is not None and n != expect_len:
        return Check(False, expect_seq, None, f"length {n} != {expect_len}", zlib.crc32(data))
    if n < HEADER_LEN:
        if expect_seq is None:
            return Check(False, None, None, "short message without a known sequence",
                         zlib.crc32(data))
        ok = _matches(data, 0, expect_seq, n)
        return Check(ok, expect_seq, None, "" if ok else "pattern mismatch", zlib.crc32(data))
    magic, seq, gen, length, crc = _HDR.unpack_from(data)
    if magic != MAGIC:
        return Check(False, None, None, f"bad magic {bytes(magic)!r}", zlib.crc32(data))
    if length != n:
        return Check(False, seq, gen, f"header length {length} != received {n}",
                     zlib.crc32(data))
    if expect_seq is not None and seq != expect_seq:
        return Check(False, seq, gen, f"seq {seq} != expected {expect_seq}", zlib.crc32(data))
    blen = n - HEADER_LEN
    if crc == body_crc(seq, blen) and _matches(data, HEADER_LEN, seq, blen):
        return Check(True, seq, gen, "", crc)  # body == pattern, header crc == its crc32
    body = data[HEADER_LEN:]
    if zlib.crc32(body) != crc:
        return Check(False, seq, gen, "body checksum mismatch", zlib.crc32(data))
    return Check(False, seq, gen, "body pattern mismatch", zlib.crc32(data))

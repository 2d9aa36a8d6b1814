"""Payload framing: every message carries its sequence number and a checksum.

Layout of a message of `length` bytes:
  length >= HEADER_LEN: header (magic, seq, generation, length, crc32 of the body) + body
  length <  HEADER_LEN: body only (the receiver learns seq from the immediate data
                         or from the control channel and checks the pattern)
The body is a deterministic pattern derived from the sequence number, so the
receiver can check every byte, not only a checksum.
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


def pattern(seq: int, length: int) -> bytes:
    """Deterministic bytes for a sequence number (a rotated 0..255 ramp, xor'ed by seq)."""
    if length <= 0:
        return b""
    rot = seq % 256
    block = _BASE[rot:] + _BASE[:rot]
    key = (seq >> 8) & 0xFF
    if key:
        block = bytes(b ^ key for b in block)
    reps, rest = divmod(length, 256)
    return block * reps + block[:rest]


def encode(seq: int, length: int, generation: int = 0) -> bytes:
    if length < HEADER_LEN:
        return pattern(seq, length)
    body = pattern(seq, length - HEADER_LEN)
    return _HDR.pack(MAGIC, seq, generation, length, zlib.crc32(body)) + body


@dataclass(frozen=True)
class Check:
    ok: bool
    seq: int | None
    generation: int | None
    reason: str  # "" when ok
    crc: int  # crc32 of what was received (all of it)


def verify(data: bytes, expect_seq: int | None = None, expect_len: int | None = None) -> Check:
    """Check a received message; `expect_seq` is required for short (headerless) messages."""
    crc = zlib.crc32(data)
    if expect_len is not None and len(data) != expect_len:
        return Check(False, expect_seq, None, f"length {len(data)} != {expect_len}", crc)
    if len(data) < HEADER_LEN:
        if expect_seq is None:
            return Check(False, None, None, "short message without a known sequence", crc)
        ok = data == pattern(expect_seq, len(data))
        return Check(ok, expect_seq, None, "" if ok else "pattern mismatch", crc)
    magic, seq, gen, length, body_crc = _HDR.unpack_from(data)
    if magic != MAGIC:
        return Check(False, None, None, f"bad magic {magic!r}", crc)
    if length != len(data):
        return Check(False, seq, gen, f"header length {length} != received {len(data)}", crc)
    if expect_seq is not None and seq != expect_seq:
        return Check(False, seq, gen, f"seq {seq} != expected {expect_seq}", crc)
    body = data[HEADER_LEN:]
    if zlib.crc32(body) != body_crc:
        return Check(False, seq, gen, "body checksum mismatch", crc)
    if body != pattern(seq, len(body)):
        return Check(False, seq, gen, "body pattern mismatch", crc)
    return Check(True, seq, gen, "", crc)

"""The verbs payload: encode, verify, corruption found everywhere. Pure logic: any host."""

from __future__ import annotations

import pytest

from harness.rdma import payload


@pytest.mark.parametrize("size", [1, 2, 23, 24, 25, 255, 256, 257, 4096, 65536])
def test_payload_roundtrip(size: int) -> None:
    data = payload.encode(77, size, generation=3)
    assert len(data) == size
    chk = payload.verify(data, expect_seq=77, expect_len=size)
    assert chk.ok, chk.reason
    if size >= payload.HEADER_LEN:
        assert chk.generation == 3


def test_payload_detects_corruption_everywhere() -> None:
    data = bytearray(payload.encode(5, 300))
    for pos in (0, 8, 20, 24, 150, 299):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        assert not payload.verify(bytes(bad), expect_seq=5).ok, pos


def test_payload_short_needs_seq_and_checks_pattern() -> None:
    data = payload.encode(9, 10)
    assert not payload.verify(data).ok
    assert payload.verify(data, expect_seq=9).ok
    assert not payload.verify(data, expect_seq=10).ok


def test_payload_patterns_differ_by_seq() -> None:
    assert payload.pattern(1, 512) != payload.pattern(257, 512)

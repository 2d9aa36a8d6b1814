"""The kernel log's clock anchored to CLOCK_MONOTONIC (power.kmsg.clock): the anchor's
arithmetic, its JSON, the drift between two anchors, and take_anchor against a kernel
log stand-in (a file we write the line to; a tail that reads it back, or never sees it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from power.kmsg import KmsgRecord
from power.kmsg.clock import ClockAnchor, ClockAnchors, anchor_from, take_anchor


def test_anchor_is_the_stamp_against_the_middle_of_the_span() -> None:
    a = anchor_from(ts_us=5_000_000, before_ns=4_000_000_000, after_ns=4_000_200_000)
    assert a.monotonic_ns == 4_000_100_000
    assert a.offset_ns == 5_000_000_000 - 4_000_100_000
    assert a.uncertainty_ns == 100_000 + 1000  # half the span and the stamp's µs
    assert a.to_monotonic_ns(5_000_000) == 4_000_100_000
    assert ClockAnchor.from_json(a.to_json()) == a
    with pytest.raises(ValueError, match="ends"):
        anchor_from(1, before_ns=10, after_ns=9)


def test_two_anchors_say_how_far_the_clocks_moved_apart() -> None:
    before = ClockAnchor(offset_ns=1_000, uncertainty_ns=50, monotonic_ns=10)
    after = ClockAnchor(offset_ns=4_500, uncertainty_ns=50, monotonic_ns=20)
    both = ClockAnchors(before, after)
    assert both.drift_ns == 3_500
    assert both.to_monotonic_ns(7) == 7_000 - 1_000  # through the first anchor
    assert ClockAnchors(None, after).to_monotonic_ns(7) == 7_000 - 4_500
    assert ClockAnchors(None, None).to_monotonic_ns(7) is None
    assert ClockAnchors(None, after).drift_ns is None
    assert ClockAnchors.from_json(both.to_json()) == both
    assert ClockAnchors.from_json(None) == ClockAnchors(None, None)  # a file from before


class LogFile:
    """A kernel log stand-in: the line take_anchor writes lands in a file; read() gives
    it back as a record stamped `ts_us` (or nothing: a rate-limited log)."""

    def __init__(self, path: Path, ts_us: int, keeps: bool) -> None:
        self.path, self.ts_us, self.keeps = path, ts_us, keeps

    def read(self) -> list[KmsgRecord]:
        if not self.keeps:
            return []
        text = self.path.read_text()
        m = re.fullmatch(r"<5>(.*)\n", text)
        assert m, text
        return [KmsgRecord(seq=1, ts_us=self.ts_us, level=5, facility=0, message=m.group(1))]


def test_take_anchor_finds_its_own_line(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.touch()
    a = take_anchor(LogFile(log, 123_456_789, keeps=True), str(log))  # type: ignore[arg-type]
    assert a is not None and "clock anchor" in log.read_text()
    assert a.to_monotonic_ns(123_456_789) == a.monotonic_ns
    assert 1000 < a.uncertainty_ns < 1_000_000_000


def test_take_anchor_says_none_when_the_line_never_shows(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.touch()
    assert take_anchor(LogFile(log, 1, keeps=False), str(log)) is None  # type: ignore[arg-type]
    assert take_anchor(LogFile(log, 1, keeps=True),  # type: ignore[arg-type]
                       str(tmp_path / "no" / "such")) is None  # the write failed

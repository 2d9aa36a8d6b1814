"""The page ledger: patterns and their checks, and every page's fate from the worker's
events (each detector with the damage that makes it fire)."""

from __future__ import annotations

import pytest

from harness.workload.page_ledger import (
    PAGE_SIZE,
    PageCheck,
    PageFate,
    PageLedger,
    ProcessFate,
    Sweep,
    Touch,
    check_page,
    make_page,
    parse_event,
)

MS = 1_000_000


def test_a_page_checks_ok_only_as_itself_at_its_generation() -> None:
    page = make_page(7, 3)
    assert len(page) == PAGE_SIZE
    assert check_page(page, 7, 3) is PageCheck.OK
    assert check_page(page, 7, 4) is PageCheck.STALE  # an older copy paged back in
    assert check_page(page, 8, 3) is PageCheck.MISPLACED  # another page's slot
    assert check_page(bytes(PAGE_SIZE), 7, 3) is PageCheck.ZERO  # never written / lost
    flipped = bytearray(page)
    flipped[-1] ^= 0xFF
    assert check_page(flipped, 7, 3) is PageCheck.DAMAGED
    head = bytearray(page)
    head[0] ^= 1
    assert check_page(head, 7, 3) is PageCheck.DAMAGED
    assert check_page(make_page(7, 5), 7, 3) is PageCheck.DAMAGED  # a future: not ours


def test_every_page_gets_exactly_one_fate() -> None:
    away = (10_000 * MS, 12_000 * MS)
    events = [
        Touch(1, 9_900 * MS, 12_300 * MS, PageCheck.OK),  # waited across the absence
        Touch(2, 5_000 * MS, 5_400 * MS, PageCheck.OK),  # slow, but before it
        Touch(3, 11_000 * MS, 11_001 * MS, PageCheck.STALE),
        Touch(4, 13_000 * MS, 13_001 * MS, PageCheck.ZERO),
        Touch(1, 14_000 * MS, 14_001 * MS, PageCheck.OK),
        Sweep(8, 5000, {5: PageCheck.DAMAGED, 4: PageCheck.ZERO}),
    ]
    led = PageLedger.of(8, events, away, ProcessFate.ALIVE)
    assert led.fates == {PageFate.VERIFIED_OK: 4, PageFate.VERIFIED_LATE: 1,
                         PageFate.CORRUPTED: 2, PageFate.LOST: 1}
    assert sum(led.fates.values()) == 8 and led.swept
    assert led.late_waits_ms == [2400.0] and led.longest_wait_ms == 2400.0
    assert led.to_json()["fates"]["verified-late"] == 1


def test_a_dead_process_loses_what_it_held() -> None:
    """SIGBUS on a failed page-in: no sweep; every page not already corrupted is lost."""
    events = [Touch(0, 1, 2, PageCheck.DAMAGED)]
    led = PageLedger.of(4, events, (0, 10), ProcessFate.SIGBUS)
    assert led.fates[PageFate.CORRUPTED] == 1 and led.fates[PageFate.LOST] == 3
    assert not led.swept and led.process is ProcessFate.SIGBUS


def test_the_device_that_never_came_back_still_dates_the_waits() -> None:
    led = PageLedger.of(2, [Touch(0, 5 * MS, 90 * MS, PageCheck.OK), Sweep(2, 1, {})],
                        None, ProcessFate.ALIVE)
    assert led.fates[PageFate.VERIFIED_OK] == 2 and led.late_waits_ms == []


def test_events_parse_once_and_refuse_the_malformed() -> None:
    t = Touch(3, 10, 20, PageCheck.ZERO)
    assert parse_event(t.to_json()) == t
    s = Sweep(4, 9, {2: PageCheck.STALE})
    assert parse_event(s.to_json()) == s
    for bad in ({"event": "touch", "page": -1, "start_ns": 0, "end_ns": 1, "check": "ok"},
                {"event": "touch", "page": 1, "start_ns": 0, "end_ns": 1, "check": "?"},
                {"event": "sweep", "pages": 1, "touches": 1, "bad": []},
                {"event": "other"}):
        with pytest.raises((TypeError, ValueError)):
            parse_event(bad)
    with pytest.raises(ValueError, match="outside the mapping"):
        PageLedger.of(2, [Touch(5, 0, 1, PageCheck.ZERO)], None, ProcessFate.ALIVE)
    with pytest.raises(ValueError, match="checked 3 pages of 2"):
        PageLedger.of(2, [Sweep(3, 0, {})], None, ProcessFate.ALIVE)

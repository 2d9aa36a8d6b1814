"""Pure logic for power/kmsg/, the patterns, the scan after a marker and its JSON (parsing,
reading and the marker: test_kmsg_unit.py): any host, no root, no real /dev/kmsg."""

from __future__ import annotations

import json

import pytest

from power.kmsg import (
    PATTERNS,
    KmsgHit,
    KmsgRecord,
    KmsgScan,
    Marker,
    match_record,
    parse_records,
    render,
    scan_after,
)
from power.kmsg import scan as kmsg_scan
from tests.helpers.kmsg_records import RXE_WARN, marker, marker_rec, rec

# --- patterns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "level", "expected"),
    [
        ("WARNING: CPU: 1 PID: 55 at drivers/infiniband/sw/rxe/rxe_comp.c:600", 4, "WARNING"),
        ("rxe-power-test: WARNING: fake warning", 5, "WARNING"),
        ("BUG: kernel NULL pointer dereference, address: 0000000000000008", 1, "BUG"),
        ("Oops: 0000 [#1] PREEMPT SMP NOPTI", 4, "Oops"),
        ("INFO: task rdma:311 blocked for more than 120 seconds.", 3, "hung task"),
        (
            '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
            3,
            "hung task",
        ),
        ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [rxe_comp:55]", 0, "soft lockup"),
        ("Watchdog detected hard LOCKUP on cpu 1", 0, "hard lockup"),
        ("INFO: rcu_sched self-detected stall on CPU", 3, "RCU stall"),
        ("INFO: rcu_preempt detected stalls on CPUs/tasks:", 3, "RCU stall"),
        ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", 3, "RCU stall"),
        ("Call Trace:", 4, "call trace"),
        (
            "general protection fault, probably for non-canonical address 0xdead: 0000 [#1]",
            4,
            "general protection",
        ),
        ("Kernel panic - not syncing: Fatal exception", 0, "kernel panic"),
        ("rdma_rxe: already configured on rxpw0", 3, "rxe error"),
        ("rxe0: failed to alloc qp", 2, "rxe error"),
        ("infiniband rxe1: unable to create cq", 3, "rxe error"),
    ],
)
def test_pattern_hits(message: str, level: int, expected: str) -> None:
    assert match_record(rec(1, message, level=level)) == expected


@pytest.mark.parametrize(
    ("message", "level"),
    [
        ("infiniband rxe0: set active", 6),
        ("rdma_rxe: loaded", 6),
        ("rdma_rxe: something odd", 4),  # rxe lines count only at KERN_ERR or worse
        ("mlx5_core 0000:01:00.0: some other driver error", 3),
        ("no BUGs here, WARNINGS: none", 3),
        ("  Call Trace: not at the start", 4),
        ("PM: suspend entry (s2idle)", 6),
        ("rxe-power: marker abc123 suspend", 5),
        ("Oopsie", 3),
    ],
)
def test_pattern_misses(message: str, level: int) -> None:
    assert match_record(rec(1, message, level=level)) is None


def test_patterns_table_shape() -> None:
    names = [p.name for p in PATTERNS]
    assert len(names) == len(set(names))
    for name, regex, max_level in PATTERNS:
        assert isinstance(name, str) and hasattr(regex, "search")
        assert max_level is None or 0 <= max_level <= 7
    assert {"WARNING", "BUG", "Oops", "hung task", "soft lockup", "rxe error"} <= set(names)


def test_several_patterns_one_hit_first_wins() -> None:
    r = rec(101, "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [rdma_rxe:55]", level=0)
    scan = scan_after(marker(100), [r])
    assert len(scan.hits) == 1
    first = next(p.name for p in PATTERNS if p.regex.search(r.message))
    assert scan.hits[0].pattern == first == "soft lockup"


# --- scan -----------------------------------------------------------------------------------


def log_around_marker(*after: KmsgRecord) -> list[KmsgRecord]:
    before = [
        rec(1000, "WARNING: CPU: 0 PID: 1 at old/thing.c:1", level=4),
        rec(1001, "rdma_rxe: already configured on rxpw0", level=3),
        rec(1002, "infiniband rxe0: set active"),
    ]
    return [*before, marker_rec(1003), *after]


def test_scan_clean_ignores_before_marker() -> None:
    records = log_around_marker(
        rec(1004, "infiniband rxe0: set active"),
        rec(1005, "rdma_rxe: loaded"),
        rec(1006, "PM: suspend exit"),
    )
    scan = scan_after(marker(1002), records)
    assert scan.ok
    assert scan.hits == []
    assert scan.records_after == 3  # marker line not counted
    assert scan.first_seq_after == 1003
    assert not scan.gap
    assert render(scan)[0] == "kernel log: clean (3 records after marker abc123def456)"


def test_scan_rxe_error_hit() -> None:
    records = log_around_marker(
        rec(1004, "infiniband rxe0: set active"),
        rec(1005, "rdma_rxe: already configured on rxpw0", level=3),
    )
    scan = scan_after(marker(1002), records)
    assert not scan.ok
    assert [(h.record.seq, h.pattern) for h in scan.hits] == [(1005, "rxe error")]


def test_scan_hung_task_hit() -> None:
    records = log_around_marker(
        rec(1004, "INFO: task rdma:311 blocked for more than 120 seconds.", level=3)
    )
    scan = scan_after(marker(1002), records)
    assert [h.pattern for h in scan.hits] == ["hung task"]


def test_scan_user_written_warning_fails() -> None:
    raw = [b"6,1002,1,-;x\n", b"13,1003,2,-;rxe-power-test: WARNING: fake warning\n"]
    scan = scan_after(marker(1002), parse_records(raw))
    assert not scan.ok
    assert scan.hits[0].pattern == "WARNING"
    assert scan.hits[0].record.facility == 1


def test_scan_excludes_marker_lines_even_if_they_match() -> None:
    noisy = rec(1004, "rxe-power: marker abc123def456 WARNING: BUG: Oops", level=3, facility=1)
    scan = scan_after(marker(1002), log_around_marker(noisy))
    assert scan.ok
    assert scan.records_after == 0
    assert scan.first_seq_after == 1003


def test_scan_marker_not_written_still_uses_seq() -> None:
    # Rate-limited marker: no marker line in the log, the scan still starts after after_seq.
    records = [rec(50, "WARNING: before", level=4), rec(51, "BUG: after", level=1)]
    scan = scan_after(marker(50, written=False), records)
    assert [h.record.seq for h in scan.hits] == [51]
    assert any("not seen" in ln for ln in render(scan))


def test_scan_nothing_after() -> None:
    scan = scan_after(marker(2000), log_around_marker())
    assert scan.ok
    assert (scan.records_after, scan.first_seq_after, scan.gap) == (0, None, False)


def test_scan_unsorted_input_gives_hits_in_seq_order() -> None:
    records = [rec(12, "BUG: b", level=1), rec(9, "x"), rec(11, "WARNING: a", level=4)]
    scan = scan_after(marker(10), records)
    assert [h.record.seq for h in scan.hits] == [11, 12]
    assert scan.first_seq_after == 11


def test_gap_when_ring_buffer_wrapped() -> None:
    records = [rec(s, "PM: noise") for s in range(150, 161)]
    scan = scan_after(marker(100), records)
    assert scan.gap
    assert not scan.ok
    assert scan.hits == []
    assert scan.first_seq_after == 150
    lines = render(scan)
    assert "cannot vouch" in lines[0]
    assert any("wrapped" in ln and "150" in ln and "101" in ln for ln in lines)


def test_no_gap_when_contiguous_or_unknown() -> None:
    assert not scan_after(marker(100), [rec(s, "x") for s in range(90, 111)]).gap
    assert not scan_after(marker(100), [rec(s, "x") for s in range(101, 111)]).gap
    # Empty buffer at marker time: after_seq -1, nothing to vouch against.
    assert not scan_after(marker(-1), [rec(s, "x") for s in range(500, 510)]).gap
    # A seq jump while older records are still present is not a wrap.
    assert not scan_after(marker(100), [rec(99, "x"), rec(100, "y"), rec(140, "z")]).gap


def test_gap_and_hits_together() -> None:
    scan = scan_after(marker(100), [rec(200, "Oops: 0002 [#1] SMP", level=4)])
    assert scan.gap and len(scan.hits) == 1
    assert render(scan)[0] == "kernel log: 1 hit after marker abc123def456"


def test_scan_reads_kmsg_when_no_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kmsg_scan, "read_records", lambda path="/dev/kmsg": [rec(6, "BUG: x", 1)])
    assert [h.pattern for h in scan_after(marker(5)).hits] == ["BUG"]


# --- render and json ------------------------------------------------------------------------


def test_render_hits() -> None:
    records = log_around_marker(
        *parse_records([RXE_WARN.replace(b"1300", b"1004"), b"3,1005,1,-;rdma_rxe: err\n"])
    )
    lines = render(scan_after(marker(1002), records))
    assert lines[0] == "kernel log: 2 hits after marker abc123def456"
    assert lines[1].startswith("  [seq 1004] WARNING: WARNING: CPU: 1 PID: 55 at ")
    assert lines[2] == "  [seq 1005] rxe error: rdma_rxe: err"


def test_json_round_trip() -> None:
    records = log_around_marker(
        rec(1004, "WARNING: tab\\x09 escaped", level=4),
        rec(1005, "rdma_rxe: already configured on rxpw0", level=3),
    )
    scan = scan_after(marker(1002, written=False), records)
    d = json.loads(json.dumps(scan.to_json()))
    assert d["ok"] is False
    back = KmsgScan.from_json(d)
    assert back == scan
    assert back.ok == scan.ok
    r = records[0]
    assert KmsgRecord.from_json(json.loads(json.dumps(r.to_json()))) == r
    m = marker(7)
    assert Marker.from_json(json.loads(json.dumps(m.to_json()))) == m
    h = KmsgHit(record=r, pattern="WARNING")
    assert KmsgHit.from_json(json.loads(json.dumps(h.to_json()))) == h


def test_json_round_trip_gap_none() -> None:
    scan = scan_after(marker(5), [])
    back = KmsgScan.from_json(json.loads(json.dumps(scan.to_json())))
    assert back == scan and back.first_seq_after is None and back.ok

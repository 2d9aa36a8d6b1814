"""Pure logic for power/kmsg/: runs on any host, no root, no real /dev/kmsg."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.core.errors import RxePowerError
from power.kmsg import (
    PATTERNS,
    KmsgHit,
    KmsgRecord,
    KmsgScan,
    Marker,
    drain,
    match_record,
    parse_record,
    parse_records,
    read_records,
    render,
    scan_after,
    write_marker,
)
from power.kmsg import marker as kmsg_marker
from power.kmsg import scan as kmsg_scan

RXE_ACTIVE = (
    b"6,1120,15610919,-;infiniband rxe0: set active\n"
    b" SUBSYSTEM=infiniband\n DEVICE=+infiniband:rxe0\n"
)
RXE_ERR = b"3,1201,26875751,-;rdma_rxe: already configured on rxpw0\n"
RXE_WARN = (
    b"4,1300,30000000,-;WARNING: CPU: 1 PID: 55 at drivers/infiniband/sw/rxe/rxe_comp.c:600 "
    b"rxe_completer+0x1\n"
)
USER_WARN = b"13,1400,31000000,-;rxe-power-test: WARNING: fake warning\n"


def rec(seq: int, message: str, level: int = 6, facility: int = 0) -> KmsgRecord:
    return KmsgRecord(seq=seq, ts_us=seq * 1000, level=level, facility=facility, message=message)


def marker(after_seq: int, written: bool = True) -> Marker:
    return Marker(
        token="abc123def456",
        text="rxe-power: marker abc123def456 suspend",
        after_seq=after_seq,
        written=written,
    )


def marker_rec(seq: int) -> KmsgRecord:
    return rec(seq, "rxe-power: marker abc123def456 suspend", level=5, facility=1)


# --- parsing --------------------------------------------------------------------------------


def test_parse_info_record_ignores_dictionary_lines() -> None:
    r = parse_record(RXE_ACTIVE)
    assert r == KmsgRecord(
        seq=1120, ts_us=15610919, level=6, facility=0, message="infiniband rxe0: set active"
    )


def test_parse_err_record() -> None:
    r = parse_record(RXE_ERR)
    assert r is not None
    assert (r.seq, r.level, r.facility) == (1201, 3, 0)
    assert r.message == "rdma_rxe: already configured on rxpw0"


def test_parse_warning_record() -> None:
    r = parse_record(RXE_WARN)
    assert r is not None
    assert (r.seq, r.ts_us, r.level) == (1300, 30000000, 4)
    assert r.message.startswith("WARNING: CPU: 1 PID: 55 at drivers/infiniband/sw/rxe/")


def test_parse_user_written_record() -> None:
    r = parse_record(USER_WARN)
    assert r is not None
    assert (r.facility, r.level, r.seq) == (1, 5, 1400)
    assert r.message == "rxe-power-test: WARNING: fake warning"


def test_parse_keeps_escapes_and_extra_prefix_fields() -> None:
    r = parse_record(b"6,5,100,c,caller=T42;tab\\x09here; and a semicolon\n")
    assert r is not None
    assert r.seq == 5
    assert r.message == "tab\\x09here; and a semicolon"


def test_parse_without_trailing_newline_and_empty_message() -> None:
    assert parse_record(b"6,7,8,-;hello") == KmsgRecord(7, 8, 6, 0, "hello")
    r = parse_record(b"6,9,10,-;\n")
    assert r is not None and r.message == ""


def test_parse_non_utf8_does_not_crash() -> None:
    r = parse_record(b"6,11,12,-;bad \xff byte\n")
    assert r is not None
    assert r.message == "bad \\xff byte"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\n",
        b"garbage",
        b"no semicolon here\n",
        b"6,1;too few fields\n",
        b"a,b,c,-;not numbers\n",
        b"-1,2,3,-;negative\n",
        b"6, 2,3,-;space\n",
        b" SUBSYSTEM=infiniband\n",
        b"\xff\xfe\x00",
        b";empty prefix\n",
    ],
)
def test_parse_garbage_is_none(raw: bytes) -> None:
    assert parse_record(raw) is None


def test_parse_records_skips_garbage_in_order() -> None:
    out = parse_records([RXE_ACTIVE, b"garbage", RXE_ERR, b"", b"\xff", RXE_WARN])
    assert [r.seq for r in out] == [1120, 1201, 1300]


# --- reading --------------------------------------------------------------------------------


def fake_reader(items: list[bytes | BaseException]) -> Callable[[], bytes]:
    it: Iterator[bytes | BaseException] = iter(items)

    def read_one() -> bytes:
        item = next(it)
        if isinstance(item, BaseException):
            raise item
        return item

    return read_one


def test_drain_stops_at_eagain_and_continues_after_epipe() -> None:
    read_one = fake_reader(
        [RXE_ACTIVE, BrokenPipeError(), RXE_ERR, b"garbage", RXE_WARN, BlockingIOError(), USER_WARN]
    )
    raws = list(drain(read_one))
    assert raws == [RXE_ACTIVE, RXE_ERR, b"garbage", RXE_WARN]
    assert [r.seq for r in parse_records(raws)] == [1120, 1201, 1300]


def test_drain_stops_on_empty_read() -> None:
    assert list(drain(fake_reader([RXE_ERR, b"", RXE_WARN]))) == [RXE_ERR]


def test_drain_is_bounded() -> None:
    assert len(list(drain(lambda: RXE_ERR, max_reads=5))) == 5
    calls = []

    def always_epipe() -> bytes:
        calls.append(1)
        raise BrokenPipeError()

    assert list(drain(always_epipe, max_reads=7)) == []
    assert len(calls) == 7


def test_drain_propagates_other_errors() -> None:
    with pytest.raises(PermissionError):
        list(drain(fake_reader([RXE_ERR, PermissionError(1, "nope")])))


def test_read_records_missing_path_names_enoent(tmp_path: Path) -> None:
    with pytest.raises(RxePowerError) as ei:
        read_records(str(tmp_path / "no-such-kmsg"))
    assert "ENOENT" in ei.value.problem
    assert os.strerror(2) in ei.value.problem
    assert "root" in ei.value.fix and "CAP_SYSLOG" in ei.value.fix


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_read_records_nonblocking_on_a_pipe() -> None:
    # A pipe with a live writer behaves like /dev/kmsg at its end: one read, then EAGAIN.
    r, w = os.pipe()
    try:
        os.write(w, RXE_ERR)
        out = read_records(f"/proc/self/fd/{r}")
        assert [x.seq for x in out] == [1201]
        assert read_records(f"/proc/self/fd/{r}") == []  # drained: EAGAIN, no blocking
    finally:
        os.close(r)
        os.close(w)


# --- marker ---------------------------------------------------------------------------------


class FakeKmsg:
    """Stands in for read_records: a fixed log plus whatever got written to a scratch file."""

    def __init__(self, path: Path, before: list[KmsgRecord], accept_writes: bool = True):
        self.path = path
        self.before = before
        self.accept_writes = accept_writes
        self.written: list[str] = []

    def __call__(self, path: str = "/dev/kmsg") -> list[KmsgRecord]:
        assert path == str(self.path)
        out = list(self.before)
        seq = max((r.seq for r in out), default=-1)
        data = self.path.read_text() if self.path.is_file() else ""
        self.written = [ln for ln in data.splitlines() if ln]
        if self.accept_writes:
            for ln in self.written:
                assert ln.startswith("<5>")
                seq += 1
                out.append(rec(seq, ln[3:], level=5, facility=1))
        return out


def test_write_marker_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kmsg"
    path.write_text("")
    fake = FakeKmsg(path, [rec(10, "a"), rec(11, "b")])
    monkeypatch.setattr(kmsg_marker, "read_records", fake)
    m = write_marker("suspend\ncycle 3", path=str(path))
    assert m.after_seq == 11
    assert m.written
    assert len(m.token) == 12 and int(m.token, 16) >= 0
    assert m.text == f"rxe-power: marker {m.token} suspend cycle 3"
    assert fake.written == [f"<5>{m.text}"]


def test_write_marker_rate_limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kmsg"
    path.write_text("")
    monkeypatch.setattr(kmsg_marker, "read_records",
                        FakeKmsg(path, [rec(10, "a")], accept_writes=False))
    m = write_marker("resume", path=str(path))
    assert (m.after_seq, m.written) == (10, False)


def test_write_marker_empty_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kmsg"
    path.write_text("")
    monkeypatch.setattr(kmsg_marker, "read_records", FakeKmsg(path, []))
    m = write_marker("x", path=str(path))
    assert (m.after_seq, m.written) == (-1, True)


def test_write_marker_write_error_is_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory cannot be opened for writing (EISDIR).
    monkeypatch.setattr(kmsg_marker, "read_records", lambda path="/dev/kmsg": [rec(5, "a")])
    m = write_marker("x", path=str(tmp_path))
    assert (m.after_seq, m.written) == (5, False)


def test_write_marker_unreadable_raises(tmp_path: Path) -> None:
    with pytest.raises(RxePowerError, match="ENOENT"):
        write_marker("x", path=str(tmp_path / "missing"))


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

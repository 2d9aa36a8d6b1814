"""Pure logic for power/kmsg/: runs on any host, no root, no real /dev/kmsg."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.core.errors import RxePowerError
from power.kmsg import (
    KmsgRecord,
    drain,
    parse_record,
    parse_records,
    read_records,
    write_marker,
)
from power.kmsg import marker as kmsg_marker
from tests.helpers.kmsg_records import (
    RXE_ACTIVE,
    RXE_ERR,
    RXE_WARN,
    USER_WARN,
    rec,
)

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

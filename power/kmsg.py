"""Kernel health check around a power transition, read from /dev/kmsg.

Design:
- We read structured records from /dev/kmsg, not `dmesg` text: every record carries a sequence
  number, so "what happened after point X" is exact. The device is opened non-blocking; each
  read returns one record, EAGAIN means "no more for now", EPIPE means "records were overwritten
  while we read" and we just go on. Dictionary lines (" SUBSYSTEM=...") are ignored.
- Before a transition `write_marker` notes the last sequence number in the ring buffer
  (`after_seq`) and then writes a marker line. Userspace writes to /dev/kmsg can be silently
  rate-limited (printk_devkmsg=ratelimit), so the scan never looks for the marker text: it takes
  every record with seq > after_seq. `Marker.written` only records whether the line showed up.
- `scan_after` matches those records against `PATTERNS` (one place; first match wins, so the
  more specific patterns come first). If the ring buffer wrapped past the marker, records after
  it were lost and we cannot vouch for them: that is reported as `gap` and fails the check too.
- Reading is split so the logic is testable without root: `drain` turns a read callable into
  raw records, `parse_records` parses them, `read_records` is a thin wrapper around both.
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from harness.core.errors import OsCallError, RxePowerError

KMSG_PATH = "/dev/kmsg"
READ_SIZE = 8192
# Bound on read calls in one drain, so a kernel that logs faster than we read cannot keep us
# here forever. Far above what any ring buffer holds.
MAX_READS = 4_000_000
MARKER_PREFIX = "rxe-power: marker "
MARKER_LEVEL = 5  # KERN_NOTICE
MAX_LABEL_LEN = 200
KERN_ERR = 3

_NUM = re.compile(r"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class KmsgPattern(NamedTuple):
    """One thing we look for: `regex` searched in the message, only at level <= `max_level`."""

    name: str
    regex: re.Pattern[str]
    max_level: int | None


# Order matters: a record matching several patterns yields one hit, named by the first one.
PATTERNS: tuple[KmsgPattern, ...] = (
    KmsgPattern("kernel panic", re.compile(r"Kernel panic"), None),
    KmsgPattern("general protection", re.compile(r"general protection fault"), None),
    KmsgPattern("soft lockup", re.compile(r"soft lockup"), None),
    KmsgPattern("hard lockup", re.compile(r"hard LOCKUP"), None),
    KmsgPattern("hung task", re.compile(r"blocked for more than \d+ seconds|\bhung_task"), None),
    KmsgPattern(
        "RCU stall",
        re.compile(r"rcu_(sched|preempt) (self-)?detected stall|rcu: INFO: .*stall"),
        None,
    ),
    KmsgPattern("Oops", re.compile(r"\bOops\b"), None),
    KmsgPattern("BUG", re.compile(r"\bBUG:"), None),
    KmsgPattern("WARNING", re.compile(r"\bWARNING:"), None),
    KmsgPattern("call trace", re.compile(r"^Call Trace:"), None),
    KmsgPattern("rxe error", re.compile(r"\b(rdma_rxe|rxe\d*)\b"), KERN_ERR),
)


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KmsgRecord:
    """One /dev/kmsg record. `message` keeps the kernel's `\\xNN` escapes as they are."""

    seq: int
    ts_us: int
    level: int
    facility: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts_us": self.ts_us,
            "level": self.level,
            "facility": self.facility,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KmsgRecord:
        return cls(
            seq=int(d["seq"]),
            ts_us=int(d["ts_us"]),
            level=int(d["level"]),
            facility=int(d["facility"]),
            message=str(d["message"]),
        )


def parse_record(raw: bytes) -> KmsgRecord | None:
    """Parse `"pri,seq,ts_usec,flags[,...];message\\n[ KEY=value\\n]..."`; None if unparsable."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="backslashreplace")
    first = text.split("\n", 1)[0]
    head, sep, message = first.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3 or not all(_NUM.fullmatch(f) for f in fields[:3]):
        return None
    pri, seq, ts_us = (int(f) for f in fields[:3])
    return KmsgRecord(seq=seq, ts_us=ts_us, level=pri & 7, facility=pri >> 3, message=message)


def parse_records(raws: Iterable[bytes]) -> list[KmsgRecord]:
    """Parse raw records in order, dropping the ones that do not parse."""
    out: list[KmsgRecord] = []
    for raw in raws:
        rec = parse_record(raw)
        if rec is not None:
            out.append(rec)
    return out


def drain(read_one: Callable[[], bytes], max_reads: int = MAX_READS) -> Iterator[bytes]:
    """Yield what `read_one` returns until EAGAIN (BlockingIOError), an empty read or
    `max_reads` calls. EPIPE (BrokenPipeError: records overwritten under us) is skipped."""
    for _ in range(max_reads):
        try:
            raw = read_one()
        except BlockingIOError:
            return
        except BrokenPipeError:
            continue
        if not raw:
            return
        yield raw


def _os_error(what: str, exc: OSError, fix: str) -> RxePowerError:
    err = exc.errno or 0
    out = OsCallError(what, err, fix)
    out.__cause__ = exc
    return out


def _open_fix(path: str, err: int) -> str:
    root = f"run as root (reading {path} needs CAP_SYSLOG when kernel.dmesg_restrict=1)"
    if err in (errno_mod.EACCES, errno_mod.EPERM):
        return root
    return f"check that {path} exists and is the kernel log device; {root}"


def read_records(path: str = KMSG_PATH) -> list[KmsgRecord]:
    """All records currently in the kernel ring buffer, oldest first. Never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        fix = _open_fix(path, exc.errno or 0)
        raise _os_error(f"cannot open {path} for reading", exc, fix) from exc
    try:
        try:
            return parse_records(drain(lambda: os.read(fd, READ_SIZE)))
        except OSError as exc:
            raise _os_error(
                f"cannot read {path}", exc, "check that the path is the kernel log device"
            ) from exc
    finally:
        os.close(fd)


class Tail:
    """The kernel log from now on: /dev/kmsg opened at its end (SEEK_END), read on demand.
    The shim takes its marker and its scan from a Tail, so neither reads and parses the
    whole ring buffer (hundreds of records: about 0.5 s each time under emulation). A
    reader that fell behind the ring buffer (EPIPE) sets `lost`."""

    def __init__(self, path: str = KMSG_PATH) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise _os_error(f"cannot open {path} for reading", exc,
                            _open_fix(path, exc.errno or 0)) from exc
        try:
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            os.close(self.fd)
            raise _os_error(f"cannot seek to the end of {path}", exc,
                            "check that the path is the kernel log device") from exc
        self.records: list[KmsgRecord] = []
        self.lost = False

    def read(self) -> list[KmsgRecord]:
        """Every record logged since the tail was opened (read so far and new)."""
        for _ in range(MAX_READS):
            try:
                raw = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten before we read them
                self.lost = True
                continue
            except OSError as exc:
                raise _os_error(f"cannot read {self.path}", exc,
                                "check that the path is the kernel log device") from exc
            if not raw:
                break
            rec = parse_record(raw)
            if rec is not None:
                self.records.append(rec)
        return self.records

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- marker ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """Where a transition starts: records with seq > `after_seq` are "after the marker"."""

    token: str
    text: str
    after_seq: int
    written: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "text": self.text,
            "after_seq": self.after_seq,
            "written": self.written,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Marker:
        return cls(
            token=str(d["token"]),
            text=str(d["text"]),
            after_seq=int(d["after_seq"]),
            written=bool(d["written"]),
        )


def _last_seq(records: Iterable[KmsgRecord]) -> int:
    return max((r.seq for r in records), default=-1)


def _clean_label(label: str) -> str:
    return _CONTROL.sub(" ", label)[:MAX_LABEL_LEN]


def write_marker(label: str, path: str = KMSG_PATH, tail: Tail | None = None) -> Marker:
    """Note the last seq, then log `rxe-power: marker <token> <label>` at notice level.

    Raises RxePowerError if `path` cannot be read. A failed write is not fatal: the scan uses
    `after_seq`, and `written` says whether the line was seen in the log afterwards. With a
    `tail` (opened before), after_seq is the seq before the first record the tail saw, and
    only the new records are read.
    """
    if tail is not None:
        return _tail_marker(label, path, tail)
    after_seq = _last_seq(read_records(path))
    token, text, accepted = _log_marker_line(label, path)
    if not accepted:
        return Marker(token=token, text=text, after_seq=after_seq, written=False)
    try:
        after = read_records(path)
    except RxePowerError:
        after = []
    written = any(r.seq > after_seq and token in r.message for r in after)
    return Marker(token=token, text=text, after_seq=after_seq, written=written)


def _log_marker_line(label: str, path: str) -> tuple[str, str, bool]:
    """Log `rxe-power: marker <token> <label>` at notice level: (token, text, whether the
    write was accepted). A failed write is not fatal (see write_marker)."""
    token = uuid.uuid4().hex[:12]
    text = f"{MARKER_PREFIX}{token} {_clean_label(label)}".rstrip()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, f"<{MARKER_LEVEL}>{text}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        return token, text, False
    return token, text, True


def _tail_marker(label: str, path: str, tail: Tail) -> Marker:
    token, text, _ = _log_marker_line(label, path)
    new = tail.read()
    if not new:  # the marker was dropped and nothing else logged: the last seq is it
        after_seq = _last_seq(read_records(path))
        new = tail.read()  # anything logged in between belongs after the marker
        if new:
            after_seq = min(after_seq, new[0].seq - 1)
    else:
        after_seq = new[0].seq - 1
    written = any(token in r.message for r in new)
    return Marker(token=token, text=text, after_seq=after_seq, written=written)


def is_marker_line(record: KmsgRecord) -> bool:
    return record.message.startswith(MARKER_PREFIX)


# --- scan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KmsgHit:
    record: KmsgRecord
    pattern: str

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record.to_json(), "pattern": self.pattern}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KmsgHit:
        return cls(record=KmsgRecord.from_json(d["record"]), pattern=str(d["pattern"]))


@dataclass
class KmsgScan:
    """Result of scanning the records after a marker.

    `records_after` counts the records looked at (marker lines excluded); `first_seq_after` is
    the smallest seq > after_seq present (marker lines included); `gap` means the ring buffer
    wrapped past the marker, so records after it were lost.
    """

    marker: Marker
    records_after: int
    hits: list[KmsgHit] = field(default_factory=list)
    first_seq_after: int | None = None
    gap: bool = False

    @property
    def ok(self) -> bool:
        return not self.hits and not self.gap

    def to_json(self) -> dict[str, Any]:
        return {
            "marker": self.marker.to_json(),
            "records_after": self.records_after,
            "hits": [h.to_json() for h in self.hits],
            "first_seq_after": self.first_seq_after,
            "gap": self.gap,
            "ok": self.ok,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KmsgScan:
        first = d.get("first_seq_after")
        return cls(
            marker=Marker.from_json(d["marker"]),
            records_after=int(d["records_after"]),
            hits=[KmsgHit.from_json(h) for h in d.get("hits", [])],
            first_seq_after=None if first is None else int(first),
            gap=bool(d.get("gap", False)),
        )


def match_record(record: KmsgRecord) -> str | None:
    """Name of the first pattern in PATTERNS that the record matches, or None."""
    for pat in PATTERNS:
        if pat.max_level is not None and record.level > pat.max_level:
            continue
        if pat.regex.search(record.message):
            return pat.name
    return None


def scan_after(marker: Marker, records: list[KmsgRecord] | None = None,
               tail: Tail | None = None) -> KmsgScan:
    """Look at every record with seq > marker.after_seq (read /dev/kmsg if `records` is None;
    the tail's records if there is a `tail`, and a tail that fell behind is a gap)."""
    if tail is not None:
        records = list(tail.read())
    elif records is None:
        records = read_records()
    after = sorted((r for r in records if r.seq > marker.after_seq), key=lambda r: r.seq)
    first_seq_after = after[0].seq if after else None
    min_seq = min((r.seq for r in records), default=None)
    expected = marker.after_seq + 1
    gap = (
        marker.after_seq >= 0
        and first_seq_after is not None
        and first_seq_after > expected
        and min_seq is not None
        and min_seq > expected
    ) or (tail is not None and tail.lost)
    considered = [r for r in after if not is_marker_line(r)]
    hits: list[KmsgHit] = []
    for rec in considered:
        name = match_record(rec)
        if name is not None:
            hits.append(KmsgHit(record=rec, pattern=name))
    return KmsgScan(
        marker=marker,
        records_after=len(considered),
        hits=hits,
        first_seq_after=first_seq_after,
        gap=gap,
    )


def render(scan: KmsgScan) -> list[str]:
    """Human-readable lines for a scan."""
    token = scan.marker.token
    lines: list[str] = []
    if scan.ok:
        lines.append(f"kernel log: clean ({scan.records_after} records after marker {token})")
    elif scan.hits:
        n = len(scan.hits)
        lines.append(f"kernel log: {n} hit{'s' if n != 1 else ''} after marker {token}")
    else:
        lines.append(f"kernel log: cannot vouch for the records after marker {token}")
    if scan.gap:
        lines.append(
            f"  ring buffer wrapped: first record after the marker is seq {scan.first_seq_after},"
            f" expected {scan.marker.after_seq + 1}; records after the marker were lost"
        )
    for hit in scan.hits:
        lines.append(f"  [seq {hit.record.seq}] {hit.pattern}: {hit.record.message}")
    if not scan.marker.written:
        lines.append(
            f"  (marker line not seen in the log, e.g. rate-limited; "
            f"records were taken by seq > {scan.marker.after_seq})"
        )
    return lines

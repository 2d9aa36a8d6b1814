"""/dev/kmsg records: parsing them, draining the device, following it (Tail)."""

from __future__ import annotations

import errno as errno_mod
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from harness.core.errors import OsCallError, RxePowerError

KMSG_PATH = "/dev/kmsg"
READ_SIZE = 8192
# Bound on read calls in one drain, so a kernel that logs faster than we read cannot keep us
# here forever. Far above what any ring buffer holds.
MAX_READS = 4_000_000

_NUM = re.compile(r"[0-9]+")




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

"""The marker that says where a transition starts in the kernel log."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.core.errors import RxePowerError
from power.kmsg.records import KMSG_PATH, KmsgRecord, Tail, read_records

MARKER_PREFIX = "rxe-power: marker "
MARKER_LEVEL = 5  # KERN_NOTICE
MAX_LABEL_LEN = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")



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
    token, text, accepted = log_marker_line(label, path)
    if not accepted:
        return Marker(token=token, text=text, after_seq=after_seq, written=False)
    try:
        after = read_records(path)
    except RxePowerError:
        after = []
    written = any(r.seq > after_seq and token in r.message for r in after)
    return Marker(token=token, text=text, after_seq=after_seq, written=written)


def log_marker_line(label: str, path: str) -> tuple[str, str, bool]:
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
    token, text, _ = log_marker_line(label, path)
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

"""Scanning the records after a marker for what a healthy kernel does not log."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from power.kmsg.marker import Marker, is_marker_line
from power.kmsg.records import KmsgRecord, Tail, read_records

KERN_ERR = 3


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
    # paging over the fabric (clients.kernel.swap_scenario)
    KmsgPattern("swap I/O error", re.compile(r"(Read|Write)-error on swap-device"), None),
    KmsgPattern("page allocation failure", re.compile(r"page allocation failure"), None),
    KmsgPattern("OOM", re.compile(r"Out of memory|oom-kill:|invoked oom-killer"), None),
    KmsgPattern("rxe error", re.compile(r"\b(rdma_rxe|rxe\d*)\b"), KERN_ERR),
)




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

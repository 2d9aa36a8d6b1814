"""The page ledger of a paging workload: what became of every page of a process whose
memory is paged to (or run from) a disk on the fabric while the device goes away.

The process (clients/kernel/paging_worker.py) writes a verifiable pattern into each page
of an anonymous mapping (`make_page`: a magic, the page number, the generation, a CRC of
the body), then touches pages in random order: each touch reads the page (a page-in when
it was paged out), checks it against the generation it wrote last (`check_page`) and
writes the next generation. A touch whose read took LATE_TOUCH_MS or more is reported
(`Touch`), as is every failed check, as they happen; at the end the process checks every
page once more and reports its counts (`Sweep`).

    ledger = PageLedger.of(events, window, fate)
    ledger.fates          # {PageFate: pages}: every page of the mapping, exactly once
    ledger.late_waits_ms  # the waits of the touches that waited across the device's absence

A page ends as:
- verified-ok: every check of it passed and no touch of it waited across the absence;
- verified-late: its checks passed, and a touch of it waited across the absence (its
  page-in waited for the device to come back): how long, in `late_waits_ms`;
- corrupted: a check read another page's, an older generation's, or a damaged pattern;
- lost: a check read zeros where a pattern was written (the page's content is gone), or
  the process died before its pages could be checked (their contents died with it;
  the process's fate says how).
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PAGE_SIZE = 4096
MAGIC = b"RXPWPAGE"
_HEAD = struct.Struct("<8sQQI")  # magic, page, generation, crc32 of the body
_BODY = PAGE_SIZE - _HEAD.size
LATE_TOUCH_MS = 200.0  # a touch that waited this long is reported (a page-in over a stall)


class PageCheck(enum.Enum):
    OK = "ok"
    ZERO = "zero"  # all zeros: a page that was written reads as never written
    STALE = "stale"  # a valid pattern of an older generation
    MISPLACED = "misplaced"  # a valid pattern of another page
    DAMAGED = "damaged"  # not a valid pattern (magic or checksum wrong)


class PageFate(enum.Enum):
    VERIFIED_OK = "verified-ok"
    VERIFIED_LATE = "verified-late"
    CORRUPTED = "corrupted"
    LOST = "lost"


class ProcessFate(enum.Enum):
    ALIVE = "alive"  # ran to its stop and swept every page
    SIGBUS = "sigbus"  # a page-in failed (the swap device was gone)
    OOM_KILLED = "oom-killed"
    KILLED = "killed"  # another signal
    STUCK = "stuck"  # in D state past the bound (left, with its stack)
    EXITED = "exited"  # exited by itself with an error


def _body(page: int, gen: int) -> bytes:
    unit = struct.pack("<QQ", page, gen)
    return (unit * (_BODY // len(unit) + 1))[:_BODY]


def make_page(page: int, gen: int) -> bytes:
    body = _body(page, gen)
    return _HEAD.pack(MAGIC, page, gen, zlib.crc32(body)) + body


def check_page(buf: bytes | memoryview, page: int, gen: int) -> PageCheck:
    """What a page holds, against the pattern of `page` at generation `gen`."""
    head = bytes(buf[:_HEAD.size])
    magic, got_page, got_gen, crc = _HEAD.unpack(head)
    if magic != MAGIC:
        return PageCheck.ZERO if not any(buf) else PageCheck.DAMAGED
    if zlib.crc32(buf[_HEAD.size:PAGE_SIZE]) != crc or \
            bytes(buf[_HEAD.size:PAGE_SIZE]) != _body(got_page, got_gen):
        return PageCheck.DAMAGED
    if got_page != page:
        return PageCheck.MISPLACED
    if got_gen != gen:
        return PageCheck.STALE if got_gen < gen else PageCheck.DAMAGED
    return PageCheck.OK


@dataclass(frozen=True)
class Touch:
    """One touch of a page, reported when it waited or its check failed (ns,
    CLOCK_MONOTONIC)."""

    page: int
    start_ns: int
    end_ns: int
    check: PageCheck

    def to_json(self) -> dict[str, Any]:
        return {"event": "touch", "page": self.page, "start_ns": self.start_ns,
                "end_ns": self.end_ns, "check": self.check.value}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Touch:
        return cls(_count(d, "page"), _count(d, "start_ns"), _count(d, "end_ns"),
                   PageCheck(d.get("check")))


@dataclass(frozen=True)
class Sweep:
    """The final check of every page; `bad` names the pages whose check failed."""

    pages: int
    touches: int  # touches after the first write of every page
    bad: dict[int, PageCheck] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"event": "sweep", "pages": self.pages, "touches": self.touches,
                "bad": {str(p): c.value for p, c in sorted(self.bad.items())}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sweep:
        bad = d.get("bad")
        if not isinstance(bad, dict):
            raise TypeError(f"sweep field 'bad' is {str(bad)[:40]!r}, not an object")
        return cls(_count(d, "pages"), _count(d, "touches"),
                   {int(p): PageCheck(c) for p, c in bad.items()})


def _count(d: dict[str, Any], name: str) -> int:
    v = d.get(name)
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise TypeError(f"page event field {name!r} is {str(v)[:40]!r}, not a count")


def _fate_of_check(c: PageCheck) -> PageFate | None:
    if c is PageCheck.OK:
        return None
    return PageFate.LOST if c is PageCheck.ZERO else PageFate.CORRUPTED


@dataclass(frozen=True)
class PageLedger:
    pages: int
    fates: dict[PageFate, int]
    late_waits_ms: list[float]  # touches that waited across the absence, longest first
    longest_wait_ms: float  # the longest reported touch, whenever it was
    process: ProcessFate
    swept: bool  # the final check ran (the process lived to its stop)

    @classmethod
    def of(cls, pages: int, events: Iterable[Touch | Sweep], away: tuple[int, int] | None,
           process: ProcessFate) -> PageLedger:
        """`away`: (device gone, device back) on CLOCK_MONOTONIC; None when it never came
        back (then a touch waiting past the going counts as waiting across it)."""
        per_page: dict[int, PageFate] = {}
        late: list[float] = []
        longest = 0.0
        sweep: Sweep | None = None
        worst = [PageFate.VERIFIED_OK, PageFate.VERIFIED_LATE, PageFate.CORRUPTED,
                 PageFate.LOST]

        def mark(p: int, f: PageFate) -> None:
            if p >= pages:
                raise ValueError(f"page {p} is outside the mapping's {pages} pages")
            old = per_page.get(p, PageFate.VERIFIED_OK)
            per_page[p] = max(old, f, key=worst.index)

        for ev in events:
            if isinstance(ev, Sweep):
                sweep = ev
                continue
            wait_ms = (ev.end_ns - ev.start_ns) / 1e6
            longest = max(longest, wait_ms)
            bad = _fate_of_check(ev.check)
            if bad is not None:
                mark(ev.page, bad)
            elif away is not None and ev.start_ns <= away[1] and ev.end_ns >= away[0]:
                mark(ev.page, PageFate.VERIFIED_LATE)
                late.append(round(wait_ms, 3))
        if sweep is not None:
            if sweep.pages != pages:
                raise ValueError(f"the sweep checked {sweep.pages} pages of {pages}")
            for p, c in sweep.bad.items():
                f = _fate_of_check(c)
                if f is not None:
                    mark(p, f)
        else:  # the process died: what it held died with it
            for p in range(pages):
                if per_page.get(p) not in (PageFate.CORRUPTED,):
                    per_page[p] = PageFate.LOST
        fates = {f: 0 for f in PageFate}
        for p in range(pages):
            fates[per_page.get(p, PageFate.VERIFIED_OK)] += 1
        return cls(pages, fates, sorted(late, reverse=True), round(longest, 3), process,
                   sweep is not None)

    def to_json(self) -> dict[str, Any]:
        return {"pages": self.pages, "fates": {f.value: n for f, n in self.fates.items()},
                "late_waits_ms": self.late_waits_ms, "longest_wait_ms": self.longest_wait_ms,
                "process": self.process.value, "swept": self.swept}


def parse_event(d: dict[str, Any]) -> Touch | Sweep:
    """One line of the worker's report, parsed once, here."""
    kind = d.get("event")
    if kind == "touch":
        return Touch.from_json(d)
    if kind == "sweep":
        return Sweep.from_json(d)
    raise TypeError(f"page event {str(kind)[:20]!r} is neither 'touch' nor 'sweep'")

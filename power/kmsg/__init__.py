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

from power.kmsg.marker import Marker, write_marker
from power.kmsg.records import (
    KmsgRecord,
    Tail,
    drain,
    parse_record,
    parse_records,
    read_records,
)
from power.kmsg.scan import PATTERNS, KmsgHit, KmsgScan, match_record, render, scan_after

__all__ = ["PATTERNS", "KmsgHit", "KmsgRecord", "KmsgScan", "Marker", "Tail", "drain",
           "match_record", "parse_record", "parse_records", "read_records", "render",
           "scan_after", "write_marker"]

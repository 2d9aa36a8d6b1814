"""The timeline of one transition: typed entries stamped with CLOCK_MONOTONIC.

CLOCK_MONOTONIC is one clock for every process on the machine, so entries stamped
by the async event reader processes (time.monotonic_ns() there) sort correctly
with the shim's own. Entries are kept in arrival order and rendered sorted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EntryKind(StrEnum):
    STEP_BEGIN = "step-begin"
    STEP_END = "step-end"
    STEP_FAILED = "step-failed"
    STEP_SKIPPED = "step-skipped"
    NOTIFY = "notify"  # a notification sent to clients
    ANSWER = "answer"  # one client's answer
    ASYNC_EVENT = "async-event"  # an ibv async event from a device
    PORT_STATE = "port-state"  # a polled port state
    VETO = "veto"  # a blocked delete or a client's veto, with the holders
    HOLDER = "holder"  # a holder terminated under --on-veto force
    KMSG = "kmsg"  # marker written / scan result
    RECOVERY = "recovery"
    NOTE = "note"


@dataclass(frozen=True)
class Entry:
    t_ns: int  # time.monotonic_ns()
    kind: EntryKind
    source: str  # "shim", "rxe0", "rxe1", "client NAME", "kernel"
    what: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self, t0_ns: int) -> dict[str, Any]:
        return {"t_ns": self.t_ns, "t_ms": round((self.t_ns - t0_ns) / 1e6, 3),
                "kind": self.kind.value, "source": self.source, "what": self.what,
                "detail": self.detail}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        return cls(int(d["t_ns"]), EntryKind(d["kind"]), d["source"], d["what"],
                   dict(d.get("detail", {})))


class Timeline:
    """Thread-safe list of entries (reader threads add async events as they arrive)."""

    def __init__(self, t0_ns: int | None = None) -> None:
        self.t0_ns = time.monotonic_ns() if t0_ns is None else t0_ns
        self._entries: list[Entry] = []
        self._lock = threading.Lock()

    def add(self, kind: EntryKind, source: str, what: str, t_ns: int | None = None,
            **detail: Any) -> Entry:
        entry = Entry(time.monotonic_ns() if t_ns is None else t_ns, kind, source, what, detail)
        with self._lock:
            self._entries.append(entry)
        return entry

    @property
    def entries(self) -> list[Entry]:
        """Sorted by time (stable: entries stamped alike keep their arrival order)."""
        with self._lock:
            return sorted(self._entries, key=lambda e: e.t_ns)

    def of_kind(self, *kinds: EntryKind) -> list[Entry]:
        return [e for e in self.entries if e.kind in kinds]

    def to_json(self) -> dict[str, Any]:
        return {"t0_ns": self.t0_ns, "entries": [e.to_json(self.t0_ns) for e in self.entries]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Timeline:
        tl = cls(int(d["t0_ns"]))
        tl._entries = [Entry.from_json(e) for e in d["entries"]]
        return tl

    def render(self) -> list[str]:
        out = []
        for e in self.entries:
            extra = " ".join(f"{k}={_short(v)}" for k, v in e.detail.items())
            out.append(f"{(e.t_ns - self.t0_ns) / 1e6:>10.3f} ms  {e.kind.value:<12} "
                       f"{e.source:<14} {e.what}" + (f"  [{extra}]" if extra else ""))
        return out


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""What a client answers a power notice with, and the in-process client's interface."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from harness.core.device import DeviceInfo


class AnswerKind(StrEnum):
    RELEASED = "released"
    VETO = "veto"
    RESUMED = "resumed"
    NO_ANSWER = "no-answer"  # no reply by the deadline, or the client ignored the notice
    GONE = "gone"  # socket refused / file stale (a stale socket file is removed)
    ERROR = "error"  # protocol error or the callback raised; `reason` has the text


@dataclass(frozen=True)
class Answer:
    """One client's answer to one notice; stamps are time.monotonic_ns()."""

    client: str
    kind: AnswerKind
    reason: str
    sent_ns: int
    answered_ns: int | None

    @property
    def latency_ms(self) -> float | None:
        if self.answered_ns is None:
            return None
        return (self.answered_ns - self.sent_ns) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {"client": self.client, "kind": str(self.kind), "reason": self.reason,
                "sent_ns": self.sent_ns, "answered_ns": self.answered_ns}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Answer:
        return cls(str(d["client"]), AnswerKind(d["kind"]), str(d.get("reason", "")),
                   int(d["sent_ns"]),
                   None if d.get("answered_ns") is None else int(d["answered_ns"]))


@dataclass(frozen=True)
class SuspendReply:
    """A client's answer to suspend_prepare: released, or vetoed with a reason."""

    released: bool
    reason: str = ""

    @classmethod
    def release(cls) -> SuspendReply:
        return cls(True)

    @classmethod
    def veto(cls, reason: str) -> SuspendReply:
        return cls(False, reason)


class PowerClient(Protocol):
    """An in-process client of the device."""

    name: str

    def suspend_prepare(self, transition: str, deadline_s: float) -> SuspendReply | None:
        """Let go of the device within deadline_s, or veto. None ignores the notice."""
        ...

    def resume_complete(self, transition: str, device: DeviceInfo) -> None:
        """The device is back; reopen it. Returning means done."""
        ...

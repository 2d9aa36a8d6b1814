"""The one codec of the (event, payload) line protocol between rxe-power's processes.

Framing: one JSON object per line, UTF-8, at most MAX_MESSAGE_BYTES. Never pickle.
A message is {"v": 1, "id": <int>, "event": <name>, "payload": {...}}. A request's
reply reuses its id with event "ok" or "error" (error_reply builds the one error
form). Every channel (peer agent, client worker, power notices) has its schema in
harness.core.schemas (event -> field -> type), checked on both ends; an unknown
event, a missing or mistyped field, an oversized line or bad JSON raises
ProtocolError naming the problem.

decode(line, channel) is the one place that validates a line from another
process, always against that channel's schema. Beyond the schema it enforces, for
every message:

- strict JSON in strict UTF-8 (harness.core.strict_json): no NaN/Infinity, no
  number that overflows a double, no integer of more than 20 digits, no duplicate
  key in any object, no lone surrogate in any string, nesting at most MAX_DEPTH deep;
- "v" is the integer VERSION (not true, not 1.0); "id" is present, an integer
  (not a bool) in 0..MAX_INT;
- a schema field typed int is a count, id, size, offset or value: 0..MAX_INT
  (2**64 - 1); a field typed (int, float) is a duration in seconds: finite and
  0..MAX_SECONDS; bools are never accepted as numbers;
- payload keys starting with "_" are reserved for the receiver's own bookkeeping.

Extra payload fields are ignored (forward compatibility). A ProtocolError from
decode() carries the message's id in `msg_id` when it could be read (else 0), so
an "error" reply can name the request it answers.
"""

from __future__ import annotations

import json
import select
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from harness.core.errors import BoundExceeded, FramingError, ProtocolError, RxePowerError
from harness.core.schemas import (
    MAX_SECONDS,
    REPLIES,
    SCHEMAS,
    ChannelKind,
    FieldType,
)
from harness.core.strict_json import MAX_INT, loads_strict, short

VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20
REPLY_TIMEOUT_S = 30.0
ERROR_TEXT_MAX = 4096  # characters of an exception's text (and of its fix) in an error reply


@dataclass
class Message:
    event: str
    payload: dict[str, Any] = field(default_factory=dict)
    id: int = 0

    def encode(self) -> bytes:
        try:
            text = json.dumps({"v": VERSION, "id": self.id, "event": self.event,
                               "payload": self.payload}, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"message {short(self.event)} cannot be sent as JSON: {exc}",
                                "send only finite numbers, strings, lists and objects",
                                self.id if type(self.id) is int else 0) from None
        line = text.encode() + b"\n"
        if len(line) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message {self.event!r} is {len(line)} bytes, over "
                                f"MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}",
                                "send less per message (page the request)")
        return line


def _check_field(event: str, name: str, typ: FieldType, val: Any, mid: int) -> None:
    want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
    if isinstance(val, bool) or not isinstance(val, typ):
        raise ProtocolError(f"event {event!r} field {name!r} has type {type(val).__name__}, "
                            f"expected {want}", f"send {name!r} as a JSON {want}", mid)
    if isinstance(typ, tuple) and float in typ:  # a duration in seconds
        if not (isinstance(val, int | float) and 0 <= val <= MAX_SECONDS):
            raise ProtocolError(f"event {event!r} field {name!r} is {short(val)} seconds, "
                                f"outside 0..MAX_SECONDS={MAX_SECONDS:g}",
                                f"send {name!r} as a finite, non-negative number of seconds",
                                mid)
    elif isinstance(val, int) and not 0 <= val <= MAX_INT:
        raise ProtocolError(f"event {event!r} field {name!r} is {short(val)}, outside "
                            f"0..2**64-1", f"send {name!r} as a non-negative 64-bit integer", mid)


def decode(line: bytes, channel: ChannelKind, expect_reply: bool = False) -> Message:
    """Parse one line from `channel` and validate it against the channel's schema
    (schemas.SCHEMAS), or, with `expect_reply`, as the "ok"/"error" reply to a request on
    it. Raises ProtocolError (and nothing else) for any line that is not a valid message."""
    table = REPLIES if expect_reply else SCHEMAS[channel]
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(line)} bytes exceeds {MAX_MESSAGE_BYTES}",
                            "the peer must split its messages")
    obj = loads_strict(line)
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is not a JSON object (a {type(obj).__name__})",
                            "send {'v','id','event','payload'}")
    mid = obj.get("id")
    known_id = mid if type(mid) is int and 0 <= mid <= MAX_INT else 0
    ver = obj.get("v")
    if type(ver) is not int or ver != VERSION:
        raise ProtocolError(f"protocol version {short(ver)}, expected {VERSION}",
                            "run the same rxe-power version on both ends", known_id)
    if type(mid) is not int or not 0 <= mid <= MAX_INT:
        raise ProtocolError(f"message id is {short(mid)}, not an integer in 0..2**64-1",
                            "give every message an integer id (a reply echoes its request's)")
    event, payload = obj.get("event"), obj.get("payload", {})
    if not isinstance(event, str) or not isinstance(payload, dict):
        raise ProtocolError(f"message fields have wrong types (event {type(event).__name__}, "
                            f"payload {type(payload).__name__})",
                            "send event as a string and payload as an object", mid)
    reserved = [k for k in payload if k.startswith("_")]
    if reserved:
        raise ProtocolError(f"event {short(event)} payload has reserved field(s) "
                            f"{short(reserved)}", "do not send fields starting with '_'", mid)
    fields = table.get(event)
    if fields is None:
        if expect_reply:
            raise ProtocolError(f"expected a reply on the {channel} channel, got event "
                                f"{short(event)}",
                                f"answer a request with one of: {', '.join(REPLIES)}", mid)
        raise ProtocolError(f"unknown event {short(event)} on the {channel} channel",
                            f"use one of: {', '.join(sorted(table))}", mid)
    for name, typ in fields.items():
        if name not in payload:
            raise ProtocolError(f"event {event!r} lacks field {name!r}",
                                f"send {name!r} in the payload", mid)
        _check_field(event, name, typ, payload[name], mid)
    return Message(event, payload, mid)


def encode_checked(msg: Message, channel: ChannelKind) -> bytes:
    """`msg` as a line, validated against `channel`'s schema as the receiver will."""
    line = msg.encode()
    decode(line.rstrip(b"\n"), channel)
    return line


def error_reply(exc: BaseException, mid: int) -> bytes:
    """The one "error" reply line: answers request `mid` (or, when 0 and `exc` is a
    ProtocolError that could read the line's id, that id) with the exception's text, its
    fix, its type and the last frames of its trace, each bounded by ERROR_TEXT_MAX."""
    fix = exc.fix if isinstance(exc, RxePowerError) else ""
    if isinstance(exc, ProtocolError) and not mid:
        mid = exc.msg_id
    payload = {"message": str(exc)[:ERROR_TEXT_MAX], "fix": fix[:ERROR_TEXT_MAX],
               "type": type(exc).__name__,
               "trace": "".join(traceback.format_exception(exc, limit=3))[-ERROR_TEXT_MAX:]}
    return Message("error", payload, mid).encode()


class LineReader:
    """Accumulates bytes from a socket and yields complete lines, bounded in size.

    A line that grows past `limit` bytes without a newline breaks the framing: the
    reader raises FramingError (with the complete lines read before it in `lines`),
    drops what it buffered and discards everything up to the next newline, so the
    next line it yields is the next whole message. It never holds more than `limit`
    bytes between calls."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.buf = b""
        self.limit = limit
        self.skipping = False  # after a FramingError: discarding up to the next newline

    def feed(self, data: bytes) -> list[bytes]:
        if self.skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return []
            data = data[nl + 1:]
            self.skipping = False
        *lines, self.buf = (self.buf + data).split(b"\n")
        if len(self.buf) > self.limit:
            self.buf = b""
            self.skipping = True
            raise FramingError(f"a line grew past {self.limit} bytes without a newline",
                               "the sender must frame messages with newlines and keep each "
                               f"under MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}", lines)
        return lines


class Channel:
    """The controller's end of a worker connection: request -> reply, bounded.

    Requests go one at a time and each reply must carry its request's id. A reply to
    a request that timed out earlier (BoundExceeded) is dropped when it turns up late;
    an "error" reply with id 0 answers the request in flight (the other side could not
    read its id); any other id is a ProtocolError."""

    def __init__(self, sock: socket.socket, name: str, channel: ChannelKind) -> None:
        self.sock = sock
        self.name = name
        self.channel = channel
        self.reader = LineReader()
        self.pending: list[bytes] = []
        self.next_id = 1
        self.abandoned: set[int] = set()  # ids of requests that timed out unanswered

    def request(self, event: str, reply_timeout_s: float = REPLY_TIMEOUT_S,
                **payload: Any) -> dict[str, Any]:
        mid = self.next_id
        self.next_id += 1
        line = encode_checked(Message(event, payload, mid), self.channel)  # as the far end will
        self.sock.sendall(line)
        deadline = time.monotonic() + reply_timeout_s
        while True:
            while self.pending:
                try:
                    reply = decode(self.pending.pop(0), self.channel, expect_reply=True)
                except ProtocolError as exc:
                    raise ProtocolError(f"{self.name}: bad reply to {event!r} (id {mid}): "
                                        f"{exc.problem}", exc.fix, mid) from None
                if reply.id in self.abandoned:
                    self.abandoned.discard(reply.id)  # the late answer to a timed-out request
                    continue
                if reply.id != mid and not (reply.id == 0 and reply.event == "error"):
                    raise ProtocolError(f"{self.name}: reply id {reply.id} for request {mid} "
                                        f"({event!r})", "replies must echo the request's id and "
                                        "come in request order", mid)
                if reply.event == "error":
                    raise WorkerError(self.name, event, reply.payload)
                return reply.payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.abandoned.add(mid)
                raise BoundExceeded(f"{self.name}: request {event!r}", "REPLY_TIMEOUT_S",
                                    reply_timeout_s, f"the reply to {event!r} (id {mid})")
            r, _, _ = select.select([self.sock], [], [], remaining)
            if not r:
                continue
            data = self.sock.recv(1 << 16)
            if not data:
                raise ProtocolError(f"{self.name} closed the connection while {event!r} "
                                    "was outstanding", "see the worker's log", mid)
            self.pending.extend(self.reader.feed(data))


class WorkerError(ProtocolError):
    """The far end of a channel (peer agent or client worker) answered a request with an
    "error" reply (error_reply's form)."""

    def __init__(self, worker: str, event: str, payload: dict[str, Any]) -> None:
        self.payload = payload
        super().__init__(f"{worker} failed {event!r}: {payload.get('message', payload)}",
                         str(payload.get("fix", "")))

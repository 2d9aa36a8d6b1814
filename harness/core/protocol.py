"""The (event, payload) protocol between the controller and its worker processes.

Framing: one JSON object per line, UTF-8, at most MAX_MESSAGE_BYTES. Never pickle.
A message is {"v": 1, "id": <int>, "event": <name>, "payload": {...}}. A request's
reply reuses its id with event "ok" or "error". Every event name has a schema
(field -> type) checked on both ends; an unknown event, a missing or mistyped
field, an oversized line or bad JSON raises ProtocolError naming the problem.

decode() is the one place that validates a line from another process (this
protocol, the power notices of power/notify.py and the client worker's all use
it). Beyond the schema it enforces, for every message:

- strict JSON in strict UTF-8: no NaN/Infinity, no number that overflows a
  double, no integer of more than 20 digits, no duplicate key in any object, no
  lone surrogate in any string, nesting at most MAX_DEPTH deep;
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
import math
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from harness.core.errors import BoundExceeded, FramingError, ProtocolError

VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20
REPLY_TIMEOUT_S = 30.0
MAX_DEPTH = 32  # nesting of arrays/objects in one message, the top object counting 1
MAX_INT = 2**64 - 1  # the largest int a schema field (count, id, offset, value) may carry
MAX_INT_DIGITS = 20  # any JSON integer: len(str(2**64)) == 20
MAX_SECONDS = 7 * 24 * 3600.0  # the longest duration a schema field (timeout_s...) may carry

_QP = {"qp_id": int}
# request event -> required payload fields and their types
REQUESTS: dict[str, dict[str, type | tuple[type, ...]]] = {  # controller -> peer agent
    "hello": {},
    "create_qp": {"mr_size": int, "recv_slots": int, "slot_size": int, "write_slots": int},
    "connect_qp": {**_QP, "remote": dict},
    "fill": {**_QP, "offset": int, "length": int, "seq": int},
    "verify": {**_QP, "offset": int, "length": int, "seq": int},
    "read_u64": {**_QP, "offset": int},
    "write_u64": {**_QP, "offset": int, "value": int},
    "arrivals": {**_QP, "count": int, "timeout_s": (int, float)},
    "qp_state": _QP,
    "probe": {**_QP, "timeout_s": (int, float)},
    "probe_start": _QP,
    "to_err": _QP,
    "destroy_qp": _QP,
    "cm_listen": {"port": int, "mr_size": int, "recv_slots": int, "slot_size": int},
    "cm_events": {"count": int, "timeout_s": (int, float)},
    "cm_stop": {},
    "shutdown": {},
}
REPLIES = ("ok", "error")


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
            raise ProtocolError(f"message {_short(self.event)} cannot be sent as JSON: {exc}",
                                "send only finite numbers, strings, lists and objects",
                                self.id if type(self.id) is int else 0) from None
        line = text.encode() + b"\n"
        if len(line) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message {self.event!r} is {len(line)} bytes, over "
                                f"MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}",
                                "send less per message (page the request)")
        return line


Schema = dict[str, dict[str, type | tuple[type, ...]]]


class _Reject(Exception):
    """Raised by the tree check; loads_strict() turns it into a ProtocolError."""


class _Bad:
    """What the json hooks put in place of a value strict JSON refuses, so that the
    tree check reports it with the message's id (known once the line has parsed)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class _BadObject(dict):
    """An object with a duplicate key (the last value wins in json; here it is an error)."""

    why = ""


def _parse_int(text: str) -> int | _Bad:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:  # also keeps int() away from its 4300-digit ValueError
        return _Bad(f"an integer of {digits} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float | _Bad:
    val = float(text)
    return val if math.isfinite(val) else _Bad(f"the number {_short(text)} overflows a double")


def _parse_constant(text: str) -> _Bad:
    return _Bad(f"{text} (NaN and Infinity are not JSON)")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dups = []
    for key, val in pairs:
        if key in out:
            dups.append(key)
        out[key] = val
    if not dups:
        return out
    bad = _BadObject(out)
    bad.why = f"duplicate key {_short(dups[0])} in one object"
    return bad


def _short(val: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters: error texts never echo a whole message."""
    text = repr(val)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _check_tree(obj: object) -> None:
    """Nesting depth and string validity of a parsed message, iteratively."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items = list(node.keys()) + list(node.values())
        elif isinstance(node, list):
            items = node
        else:
            items = [node]
            depth -= 1  # a scalar adds no level
        if depth > MAX_DEPTH:
            raise _Reject(f"nesting deeper than MAX_DEPTH={MAX_DEPTH}")
        if isinstance(node, _BadObject):
            raise _Reject(node.why)
        for item in items:
            if isinstance(item, _Bad):
                raise _Reject(item.why)
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))
            elif isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise _Reject(f"a lone surrogate in the string {_short(item)}") from None


def loads_strict(line: bytes) -> Any:
    """Parse one line as strict JSON (the rules in the module docstring); every failure is a
    ProtocolError. Shared by every line protocol between rxe-power's processes."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message is not UTF-8: {exc}",
                            "send one JSON object per line, encoded in UTF-8") from None
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                         parse_constant=_parse_constant, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON: {exc}",
                            "send one JSON object per line") from None
    except RecursionError:
        raise ProtocolError(f"message nests deeper than MAX_DEPTH={MAX_DEPTH} (and than "
                            "Python's recursion limit)", "flatten the payload") from None
    except ValueError as exc:  # anything json.loads itself rejects beyond the above
        raise ProtocolError(f"message is not JSON: {exc}", "send one JSON object per line") \
            from None
    try:
        _check_tree(obj)
    except _Reject as exc:
        mid = obj.get("id") if isinstance(obj, dict) else None
        raise ProtocolError(f"message is not strict JSON: {exc}",
                            "send finite numbers, integers of at most 64 bits, unique keys, "
                            f"valid Unicode strings, nesting at most {MAX_DEPTH} deep",
                            mid if type(mid) is int and 0 <= mid <= MAX_INT else 0) from None
    return obj


def _check_field(event: str, name: str, typ: type | tuple[type, ...], val: Any,
                 mid: int) -> None:
    want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
    if isinstance(val, bool) or not isinstance(val, typ):
        raise ProtocolError(f"event {event!r} field {name!r} has type {type(val).__name__}, "
                            f"expected {want}", f"send {name!r} as a JSON {want}", mid)
    if isinstance(typ, tuple) and float in typ:  # a duration in seconds
        if not 0 <= val <= MAX_SECONDS:
            raise ProtocolError(f"event {event!r} field {name!r} is {_short(val)} seconds, "
                                f"outside 0..MAX_SECONDS={MAX_SECONDS:g}",
                                f"send {name!r} as a finite, non-negative number of seconds",
                                mid)
    elif isinstance(val, int) and not 0 <= val <= MAX_INT:
        raise ProtocolError(f"event {event!r} field {name!r} is {_short(val)}, outside "
                            f"0..2**64-1", f"send {name!r} as a non-negative 64-bit integer", mid)


def decode(line: bytes, expect_reply: bool = False, schema: Schema | None = None) -> Message:
    """Parse and validate one line against `schema` (default: the peer-agent REQUESTS).
    Raises ProtocolError (and nothing else) for any line that is not a valid message."""
    table = REQUESTS if schema is None else schema
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
        raise ProtocolError(f"protocol version {_short(ver)}, expected {VERSION}",
                            "run the same rxe-power version on both ends", known_id)
    if type(mid) is not int or not 0 <= mid <= MAX_INT:
        raise ProtocolError(f"message id is {_short(mid)}, not an integer in 0..2**64-1",
                            "give every message an integer id (a reply echoes its request's)")
    event, payload = obj.get("event"), obj.get("payload", {})
    if not isinstance(event, str) or not isinstance(payload, dict):
        raise ProtocolError(f"message fields have wrong types (event {type(event).__name__}, "
                            f"payload {type(payload).__name__})",
                            "send event as a string and payload as an object", mid)
    reserved = [k for k in payload if k.startswith("_")]
    if reserved:
        raise ProtocolError(f"event {_short(event)} payload has reserved field(s) "
                            f"{_short(reserved)}", "do not send fields starting with '_'", mid)
    if expect_reply:
        if event not in REPLIES:
            raise ProtocolError(f"expected a reply, got event {_short(event)}",
                                f"answer a request with one of: {', '.join(REPLIES)}", mid)
    else:
        fields = table.get(event)
        if fields is None:
            raise ProtocolError(f"unknown event {_short(event)}",
                                f"use one of: {', '.join(sorted(table))}", mid)
        for name, typ in fields.items():
            if name not in payload:
                raise ProtocolError(f"event {event!r} lacks field {name!r}",
                                    f"send {name!r} in the payload", mid)
            _check_field(event, name, typ, payload[name], mid)
    return Message(event, payload, mid)


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

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.reader = LineReader()
        self.pending: list[bytes] = []
        self.next_id = 1
        self.abandoned: set[int] = set()  # ids of requests that timed out unanswered

    def request(self, event: str, reply_timeout_s: float = REPLY_TIMEOUT_S,
                **payload: Any) -> dict:
        mid = self.next_id
        self.next_id += 1
        msg = Message(event, payload, mid)
        line = msg.encode()
        if event in REQUESTS:  # validate our own requests too
            decode(line.rstrip(b"\n"))
        self.sock.sendall(line)
        deadline = time.monotonic() + reply_timeout_s
        while True:
            while self.pending:
                try:
                    reply = decode(self.pending.pop(0), expect_reply=True)
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
    """A worker answered a request with an error."""

    def __init__(self, worker: str, event: str, payload: dict) -> None:
        self.payload = payload
        super().__init__(f"{worker} failed {event!r}: {payload.get('message', payload)}",
                         str(payload.get("fix", "")))

"""The (event, payload) protocol between the controller and its worker processes.

Framing: one JSON object per line, UTF-8, at most MAX_MESSAGE_BYTES. Never pickle.
A message is {"v": 1, "id": <int>, "event": <name>, "payload": {...}}. A request's
reply reuses its id with event "ok" or "error". Every event name has a schema
(field -> type) checked on both ends; an unknown event, a missing or mistyped
field, an oversized line or bad JSON raises ProtocolError naming the problem.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from harness.errors import BoundExceeded, ProtocolError

VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20
REPLY_TIMEOUT_S = 30.0

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
        line = json.dumps({"v": VERSION, "id": self.id, "event": self.event,
                           "payload": self.payload}, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message {self.event!r} is {len(line)} bytes, over "
                                f"MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}",
                                "send less per message (page the request)")
        return line


Schema = dict[str, dict[str, type | tuple[type, ...]]]


def decode(line: bytes, expect_reply: bool = False, schema: Schema | None = None) -> Message:
    """Parse and validate one line against `schema` (default: the peer-agent REQUESTS)."""
    table = REQUESTS if schema is None else schema
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(line)} bytes exceeds {MAX_MESSAGE_BYTES}",
                            "the peer must split its messages")
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}",
                            "send one JSON object per line") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object", "send {'v','id','event','payload'}")
    if obj.get("v") != VERSION:
        raise ProtocolError(f"protocol version {obj.get('v')!r}, expected {VERSION}",
                            "run the same rxe-power version on both ends")
    event, payload, mid = obj.get("event"), obj.get("payload", {}), obj.get("id", 0)
    if not isinstance(event, str) or not isinstance(payload, dict) or type(mid) is not int:
        raise ProtocolError("message fields have wrong types (event str, payload object, id int)",
                            "fix the sender")
    if expect_reply:
        if event not in REPLIES:
            raise ProtocolError(f"expected a reply, got event {event!r}", "fix the sender")
    else:
        fields = table.get(event)
        if fields is None:
            raise ProtocolError(f"unknown event {event!r}",
                                f"use one of: {', '.join(sorted(table))}")
        for name, typ in fields.items():
            if name not in payload:
                raise ProtocolError(f"event {event!r} lacks field {name!r}", "fix the sender")
            val = payload[name]
            if isinstance(val, bool) or not isinstance(val, typ):
                raise ProtocolError(f"event {event!r} field {name!r} has type "
                                    f"{type(val).__name__}", "fix the sender")
    return Message(event, payload, mid)


class LineReader:
    """Accumulates bytes from a socket and yields complete lines, bounded in size."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        lines = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            lines.append(line)
        if len(self.buf) > MAX_MESSAGE_BYTES:
            self.buf = b""
            raise ProtocolError(f"a line grew past {MAX_MESSAGE_BYTES} bytes without a newline",
                                "the sender must frame messages with newlines")
        return lines


class Channel:
    """The controller's end of a worker connection: request -> reply, bounded."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.reader = LineReader()
        self.pending: list[bytes] = []
        self.next_id = 1

    def request(self, event: str, reply_timeout_s: float = REPLY_TIMEOUT_S,
                **payload: Any) -> dict:
        mid = self.next_id
        self.next_id += 1
        msg = Message(event, payload, mid)
        if event in REQUESTS:  # validate our own requests too
            decode(msg.encode())
        self.sock.sendall(msg.encode())
        deadline = time.monotonic() + reply_timeout_s
        while True:
            while self.pending:
                reply = decode(self.pending.pop(0), expect_reply=True)
                if reply.id != mid:
                    raise ProtocolError(f"{self.name}: reply id {reply.id} for request {mid}",
                                        "replies must come in request order")
                if reply.event == "error":
                    raise WorkerError(self.name, event, reply.payload)
                return reply.payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BoundExceeded(f"{self.name}: request {event!r}", "REPLY_TIMEOUT_S",
                                    reply_timeout_s, f"the reply to {event!r} (id {mid})")
            r, _, _ = select.select([self.sock], [], [], remaining)
            if not r:
                continue
            data = self.sock.recv(1 << 16)
            if not data:
                raise ProtocolError(f"{self.name} closed the connection while {event!r} "
                                    "was outstanding", "see the worker's log")
            self.pending.extend(self.reader.feed(data))


class WorkerError(ProtocolError):
    """A worker answered a request with an error."""

    def __init__(self, worker: str, event: str, payload: dict) -> None:
        self.payload = payload
        super().__init__(f"{worker} failed {event!r}: {payload.get('message', payload)}",
                         payload.get("fix", ""))

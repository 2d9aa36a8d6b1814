"""The peer agent's request loop step: decode a connection's lines and answer each.

Every failure, from a line that is not a valid PEER message to a handler's exception,
is answered with protocol.error_reply; only a connection's broken framing drops it.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from harness.core.errors import FramingError, ProtocolError
from harness.core.protocol import LineReader, Message, decode, error_reply
from harness.core.schemas import ChannelKind

WAIT_EVENTS = ("arrivals", "probe", "cm_events")  # answered when done or at payload timeout_s
Waiting = list[tuple[socket.socket, Message, float]]  # (connection, request, its deadline)
Reply = dict[str, Any] | None  # a request's reply payload; None: answer later (a wait)
Handler = Callable[[Message], Reply]


def dispatch_line(conn: socket.socket, line: bytes, handle: Handler,
                  waiting: Waiting) -> None:
    """Decode one line from `conn` and answer it. `handle(msg)` returns the reply payload,
    or None to answer later (the request joins `waiting` until its deadline). Any failure,
    from a line that is not a valid message to a handler's exception, is answered with an
    "error" reply (id 0 when the line's id cannot be read) and the connection stays.
    Raises only OSError (the connection is gone)."""
    mid = 0
    try:
        msg = decode(line, ChannelKind.PEER)
        mid = msg.id
        if any(c is conn and w.id == mid for c, w, _ in waiting):
            raise ProtocolError(f"request id {mid} is already outstanding on this connection",
                                "give every request a new id", mid)
        if msg.event in WAIT_EVENTS:  # decode() keeps "_" fields out of what the sender sends
            msg.payload["_deadline"] = time.monotonic() + msg.payload["timeout_s"]
        reply = handle(msg)
        if reply is None:
            waiting.append((conn, msg, msg.payload.get("_deadline", time.monotonic())))
            return
        out = Message("ok", reply, mid).encode()
    except Exception as exc:  # a bad request must never kill the agent
        out = error_reply(exc, mid)
    conn.sendall(out)


def read_and_dispatch(conn: socket.socket, reader: LineReader,
                      handle: Handler, waiting: Waiting) -> bool:
    """Read what `conn` sent and answer every complete line. False: drop the connection
    (it is gone, or its framing broke)."""
    try:
        data = conn.recv(1 << 16)
        if not data:
            return False
        try:
            lines = reader.feed(data)
        except FramingError as exc:
            # A line over MAX_MESSAGE_BYTES without a newline: the framing is broken and
            # this sender cannot be trusted to resynchronise, so answer what came whole
            # before it, say why, and drop this connection (only this one: the agent
            # serves its other connections on; when it is the owner's, the agent ends its
            # session as it does whenever the controller goes).
            for line in exc.lines:
                dispatch_line(conn, line, handle, waiting)
            with contextlib.suppress(OSError):
                conn.sendall(error_reply(exc, 0))
            print(f"peer_agent: dropping a connection: {exc}", file=sys.stderr, flush=True)
            return False
        for line in lines:
            dispatch_line(conn, line, handle, waiting)
    except OSError as exc:
        print(f"peer_agent: dropping a connection: {exc}", file=sys.stderr, flush=True)
        return False
    return True

"""The controller's side of a peer agent it did not start: one listening on TCP behind
the run's secret (harness.core.peer_auth), in the peer guest or on another machine.

Once connected and authenticated the harness speaks to it only through the PEER
protocol (harness.core.protocol): no shared file, no process table.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from typing import Any

from harness.core.errors import BoundExceeded, ProtocolError
from harness.core.peer_auth import authenticate
from harness.core.protocol import REPLY_TIMEOUT_S, Channel
from harness.core.schemas import ChannelKind
from harness.peer.calls import PeerCalls

AGENT_CONNECT_TIMEOUT_S = 300.0  # the peer guest boots beside the local one, under TCG
SHUTDOWN_REPLY_TIMEOUT_S = 10.0  # the server's answer to "shutdown" on close
CONNECT_TRY_TIMEOUT_S = 2.0  # one connect attempt (a SYN lost while the link comes up)
# what a connect meets while the agent is not listening yet, or its guest not up
_NOT_YET = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}


def connect_when_listening(host: str, port: int,
                           timeout_s: float = AGENT_CONNECT_TIMEOUT_S) -> socket.socket:
    """A TCP connection to host:port once something listens there, within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((host, port), timeout=CONNECT_TRY_TIMEOUT_S)
        except TimeoutError as exc:
            last = f"[errno {errno.ETIMEDOUT}] {os.strerror(errno.ETIMEDOUT)} ({exc})"
        except OSError as exc:
            if exc.errno not in _NOT_YET:
                raise
            last = f"[errno {exc.errno}] {os.strerror(exc.errno or 0)}"
            # refused comes back at once: pace the tries at one per CONNECT_TRY_TIMEOUT_S
            time.sleep(min(CONNECT_TRY_TIMEOUT_S, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            raise BoundExceeded(f"connecting to the peer agent at {host}:{port}",
                                "AGENT_CONNECT_TIMEOUT_S", timeout_s,
                                f"a listening agent (last try: {last})")


def open_channel(host: str, port: int, secret: bytes, kind: ChannelKind, name: str,
                 connect_timeout_s: float = AGENT_CONNECT_TIMEOUT_S,
                 ) -> tuple[Channel, dict[str, Any]]:
    """A channel of `kind` to a server on host:port that holds the run's secret: connected
    once it listens, authenticated (harness.core.peer_auth), its hello's reply."""
    sock = connect_when_listening(host, port, connect_timeout_s)
    try:
        sock.settimeout(None)
        authenticate(sock, secret)
        chan = Channel(sock, f"{name} at {host}:{port}", kind)
        return chan, chan.request("hello", REPLY_TIMEOUT_S)
    except BaseException:
        sock.close()
        raise


def close_channel(chan: Channel) -> None:
    """Ask the server to end its session (bounded, its failure ignored: it may be gone),
    then close: the server ends when its owner goes either way."""
    with contextlib.suppress(ProtocolError, BoundExceeded, OSError):
        chan.request("shutdown", SHUTDOWN_REPLY_TIMEOUT_S)
    with contextlib.suppress(OSError):
        chan.sock.shutdown(socket.SHUT_RDWR)
    chan.sock.close()


class RemotePeer(PeerCalls):
    """A peer agent reached over TCP: connected, authenticated, said hello. Closing the
    connection ends the agent's session (it exits when its owner goes)."""

    def __init__(self, host: str, port: int, secret: bytes,
                 connect_timeout_s: float = AGENT_CONNECT_TIMEOUT_S) -> None:
        self.where = f"{host}:{port}"
        self.chan, self.hello = open_channel(host, port, secret, ChannelKind.PEER,
                                             "peer agent", connect_timeout_s)

    def request(self, event: str, reply_timeout_s: float = REPLY_TIMEOUT_S,
                **payload: Any) -> dict[str, Any]:
        return self.chan.request(event, reply_timeout_s, **payload)

    def close(self) -> None:
        close_channel(self.chan)

    def __enter__(self) -> RemotePeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The peer channel's gate over TCP: a per-run secret and a challenge-response handshake.

On a Unix socket in a private folder only our processes reach the peer agent. Over TCP
(the peer in its own guest, or on another machine) anything on its network can connect,
so before a connection may send one PEER request it proves that it holds the run's
secret, without sending it (the PEER_AUTH channel of harness.core.schemas):

    agent  -> client  challenge {nonce: Ns}
    client -> agent   auth      {nonce: Nc, mac: HMAC(secret, CLIENT_TAG | Ns | Nc)}
    agent  -> client  welcome   {mac: HMAC(secret, AGENT_TAG | Nc | Ns)}
                  or  an "error" reply, and the connection is closed

Nonces are NONCE_BYTES random bytes, MACs HMAC-SHA256, both in lower-case hex, compared
in constant time. The agent's own MAC lets the client refuse an agent without the
secret. A handshake line is at most AUTH_LINE_MAX_BYTES (an unauthenticated sender can
make the agent hold no more), the whole handshake must end within AUTH_TIMEOUT_S, and
anything else (a request before the handshake, a wrong or missing MAC, bad JSON, a
second line before the welcome) refuses the connection.

The secret: SECRET_BYTES random bytes per run, kept in hex in a file of mode 0600 that
only its owner can reach; read back only from a regular file (no symlink) owned by this
user and closed to group and other (read_secret).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import select
import socket
import stat
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from harness.core.errors import BoundExceeded, ProtocolError, RxePowerError
from harness.core.protocol import ERROR_TEXT_MAX, LineReader, Message, decode
from harness.core.schemas import ChannelKind

SECRET_BYTES = 32
NONCE_BYTES = 32
AUTH_TIMEOUT_S = 10.0  # the whole handshake, from the connection's accept or connect
AUTH_LINE_MAX_BYTES = 512  # a handshake line: ~200 bytes; an unauthenticated sender gets no more
CLIENT_TAG = b"rxe-power peer v1 client\0"
AGENT_TAG = b"rxe-power peer v1 agent\0"
_HEX = re.compile(r"^[0-9a-f]+$")
_SECRET_FIX = "the harness writes a new secret file for every run; start the peer with it"


class AuthRefused(ProtocolError):
    """A connection that did not prove it holds the run's secret (or an agent that did
    not): nothing it sent is answered."""


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def write_secret(path: Path, secret: bytes) -> None:
    """`secret` in hex to a new file `path` of mode 0600 (refused when `path` exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")


def read_secret(path: Path) -> bytes:
    """The run's secret from `path`: a regular file of ours, closed to group and other."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise RxePowerError(f"cannot open the secret file {path}: [errno {exc.errno}] "
                            f"{os.strerror(exc.errno or 0)}", _SECRET_FIX) from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise RxePowerError(f"the secret file {path} is not a regular file of uid "
                                f"{os.geteuid()} closed to group and other (mode "
                                f"{stat.S_IMODE(st.st_mode):o}, uid {st.st_uid})", _SECRET_FIX)
        text = f.read(SECRET_BYTES * 2 + 2).strip()
    if len(text) != SECRET_BYTES * 2 or not _HEX.match(text):
        raise RxePowerError(f"the secret file {path} does not hold {SECRET_BYTES} bytes in "
                            "lower-case hex", _SECRET_FIX)
    return bytes.fromhex(text)


def _mac(secret: bytes, tag: bytes, first: bytes, second: bytes) -> str:
    return hmac.new(secret, tag + first + second, hashlib.sha256).hexdigest()


def _hex_field(msg: Message, name: str, nbytes: int) -> bytes:
    value = msg.payload[name]
    if len(value) != nbytes * 2 or not _HEX.match(value):
        raise AuthRefused(f"the handshake's {name!r} is not {nbytes} bytes in lower-case hex",
                          "run the same rxe-power version on both ends", msg.id)
    return bytes.fromhex(value)


def _one_line(reader: LineReader, data: bytes) -> tuple[bytes | None, bytes]:
    """The first complete line in what arrived so far, and what followed it."""
    lines = reader.feed(data)
    if not lines:
        return None, b""
    rest = b"\n".join(lines[1:]) + (b"\n" if len(lines) > 1 else b"") + reader.buf
    reader.buf = b""
    return lines[0], rest


class Verdict(Enum):
    PENDING = "pending"  # the auth line is not complete yet
    ADMITTED = "admitted"  # welcome sent: the connection may send PEER requests
    REFUSED = "refused"  # an error sent (when possible) and the connection closed


@dataclass
class _Pending:
    nonce: bytes
    deadline: float
    reader: LineReader = field(default_factory=lambda: LineReader(AUTH_LINE_MAX_BYTES))


class AuthGate:
    """The agent's side, for a select loop: `open` a new connection (the challenge goes
    out), then `on_readable` until it is admitted or refused; `expire` refuses those past
    their bound. Never blocks longer than a send to one connection."""

    def __init__(self, secret: bytes, timeout_s: float = AUTH_TIMEOUT_S) -> None:
        self.secret = secret
        self.timeout_s = timeout_s
        self.pending: dict[socket.socket, _Pending] = {}

    def open(self, conn: socket.socket, now: float | None = None) -> Verdict:
        nonce = secrets.token_bytes(NONCE_BYTES)
        try:
            conn.sendall(Message("challenge", {"nonce": nonce.hex()}).encode())
        except OSError:
            conn.close()
            return Verdict.REFUSED
        self.pending[conn] = _Pending(nonce, (time.monotonic() if now is None else now)
                                      + self.timeout_s)
        return Verdict.PENDING

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.pending.values()), default=None)

    def on_readable(self, conn: socket.socket) -> Verdict:
        state = self.pending[conn]
        try:
            data = conn.recv(AUTH_LINE_MAX_BYTES)
            if not data:
                return self.refuse(conn, None)
            line, rest = _one_line(state.reader, data)
            if line is None:
                return Verdict.PENDING
            msg = decode(line, ChannelKind.PEER_AUTH)
            if rest:
                raise AuthRefused("the connection sent more before the agent's welcome",
                                  "wait for the welcome before the first request", msg.id)
            if msg.event != "auth":
                raise AuthRefused(f"expected the handshake's 'auth', got {msg.event!r}",
                                  "authenticate before any request (harness.core.peer_auth)",
                                  msg.id)
            theirs = _hex_field(msg, "nonce", NONCE_BYTES)
            want = _mac(self.secret, CLIENT_TAG, state.nonce, theirs)
            if not hmac.compare_digest(want, msg.payload["mac"]):
                raise AuthRefused("the connection's MAC does not match the run's secret",
                                  _SECRET_FIX, msg.id)
            conn.sendall(Message("welcome", {"mac": _mac(self.secret, AGENT_TAG, theirs,
                                                         state.nonce)}, msg.id).encode())
        except ProtocolError as exc:  # AuthRefused, bad JSON or schema, an over-long line
            return self.refuse(conn, exc)
        except OSError:
            return self.refuse(conn, None)
        del self.pending[conn]
        return Verdict.ADMITTED

    def refuse(self, conn: socket.socket, why: ProtocolError | None) -> Verdict:
        self.pending.pop(conn, None)
        if why is not None:  # the reason only: no trace to a sender not yet trusted
            with contextlib.suppress(OSError):
                conn.sendall(Message("error", {"message": why.problem[:ERROR_TEXT_MAX],
                                               "fix": why.fix[:ERROR_TEXT_MAX]}).encode())
        conn.close()
        return Verdict.REFUSED

    def expire(self, now: float) -> list[socket.socket]:
        """Refuse (and return) the connections whose handshake outlived its bound."""
        late = [c for c, p in self.pending.items() if p.deadline <= now]
        for conn in late:
            self.refuse(conn, AuthRefused(f"no handshake within AUTH_TIMEOUT_S="
                                          f"{self.timeout_s:g} s", "authenticate at once"))
        return late


def _read_line(sock: socket.socket, reader: LineReader, deadline: float, step: str) -> bytes:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BoundExceeded(step, "AUTH_TIMEOUT_S", AUTH_TIMEOUT_S, "the agent's line")
        r, _, _ = select.select([sock], [], [], remaining)
        if not r:
            continue
        data = sock.recv(AUTH_LINE_MAX_BYTES)
        if not data:
            raise AuthRefused(f"{step}: the agent closed the connection",
                              "is the agent started with this run's secret?")
        line, rest = _one_line(reader, data)
        if line is not None:
            if rest:
                raise AuthRefused(f"{step}: the agent sent more than one line",
                                  "run the same rxe-power version on both ends")
            return line


def authenticate(sock: socket.socket, secret: bytes, timeout_s: float = AUTH_TIMEOUT_S) -> None:
    """The client's side on a connected socket: answer the challenge, check the welcome.
    Raises AuthRefused (with the agent's reason when it gave one) or BoundExceeded."""
    deadline = time.monotonic() + timeout_s
    reader = LineReader(AUTH_LINE_MAX_BYTES)
    challenge = decode(_read_line(sock, reader, deadline, "the peer's challenge"),
                       ChannelKind.PEER_AUTH)
    if challenge.event != "challenge":
        raise AuthRefused(f"expected the agent's 'challenge', got {challenge.event!r}",
                          "is this an rxe-power peer agent of the same version?")
    theirs = _hex_field(challenge, "nonce", NONCE_BYTES)
    ours = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(Message("auth", {"nonce": ours.hex(),
                                  "mac": _mac(secret, CLIENT_TAG, theirs, ours)}, 1).encode())
    answer = decode(_read_line(sock, reader, deadline, "the peer's welcome"),
                    ChannelKind.PEER_AUTH)
    if answer.event == "error":
        raise AuthRefused(f"the peer agent refused this connection: "
                          f"{answer.payload['message']}", answer.payload["fix"])
    if answer.event != "welcome" or not hmac.compare_digest(
            _mac(secret, AGENT_TAG, ours, theirs), answer.payload["mac"]):
        raise AuthRefused("the peer agent did not prove it holds the run's secret",
                          "point the harness at the agent this run started")

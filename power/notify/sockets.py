"""The notice sockets' ground: where client sockets live, their names, reading one line.

Shared by the shim side (notifier.py) and the client side (endpoint.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import FramingError, OsCallError, ProtocolError, RxePowerError
from harness.core.printer import STDERR
from harness.core.protocol import LineReader
from harness.core.settings import clients_dir
from harness.core.state import StateFile

CLIENTS_DIR = clients_dir()  # RXE_POWER_CLIENTS_DIR


@contextlib.contextmanager
def private_clients_dir() -> Iterator[Path]:
    """A clients directory of our own (under CLIENTS_DIR's parent), removed afterwards:
    a matrix or stress run notifies its own clients, not others registered on the host."""
    CLIENTS_DIR.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"clients-{os.getpid()}-", dir=CLIENTS_DIR.parent))
    state = StateFile.load()
    state.record("dir", path=str(path))  # a killed run's directory is removed by cleanup
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        state.forget("dir", path=str(path))
RESUME_ACK_TIMEOUT_S = 5.0  # default bound on waiting for `resumed`
CLIENT_READ_TIMEOUT_S = 5.0  # client side: bound on reading one notice from the shim
SERVE_TICK_S = 1.0  # upper bound on one turn of serve_in_thread's loop (close() wakes it at once)
SOCKET_SUFFIX = ".sock"
LISTEN_BACKLOG = 64

CLIENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) minus the NUL



NOTIFY_OUT = STDERR.prefixed("rxe-power notify: ")  # what the notice endpoints say


def log(who: str, msg: str) -> None:
    NOTIFY_OUT.prefixed(f"{who}: ")(msg)


def socket_client_name(path: Path) -> str:
    """`<name>.<pid>.sock` -> "name (pid N)"; any other name -> the file name without .sock."""
    stem = path.name.removesuffix(SOCKET_SUFFIX)
    name, dot, pid = stem.rpartition(".")
    if dot and name and pid.isdigit():
        return f"{name} (pid {pid})"
    return stem


@contextlib.contextmanager
def sun_path(path: Path) -> Iterator[str]:
    """An address for bind/connect: `path` itself, or, when it is too long for sun_path,
    the same file reached through /proc/self/fd/<fd of its directory>."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    dfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{dfd}/{path.name}"
        if len(os.fsencode(short)) > SUN_PATH_MAX:
            raise RxePowerError(f"socket name {path.name!r} is too long for a Unix socket",
                                "use a shorter client name")
        yield short
    finally:
        os.close(dfd)


def read_line(sock: socket.socket, deadline: float) -> bytes | None:
    """One line from `sock` by `deadline` (monotonic s). None: closed before any byte.
    Raises TimeoutError, ProtocolError (oversized, or closed mid-line) or OSError."""
    reader = LineReader()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        data = sock.recv(1 << 16)
        if not data:
            if reader.buf:
                raise ProtocolError("connection closed in the middle of a message",
                                    "end every message with a newline")
            return None
        try:
            lines = reader.feed(data)
        except FramingError as exc:
            if not exc.lines:
                raise
            lines = exc.lines  # one whole line came before the overflow: that is the message
        if lines:
            return lines[0]


def check_clients_dir(path: Path) -> None:
    """Refuse a clients folder someone else could have planted sockets in: a symlink, not a
    folder, not owned by the caller, or writable by group or others. Missing: no clients."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OsCallError(f"cannot inspect the clients folder {path}", exc.errno or 0,
                          "make it readable, or set RXE_POWER_CLIENTS_DIR") from None
    fix = (f"remove {path} (clients re-create it), or set RXE_POWER_CLIENTS_DIR to a folder "
           "only you can write")
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RxePowerError(f"the clients folder {path} is a symbolic link or not a folder: "
                            "its sockets are not trusted", fix)
    if st.st_uid != os.geteuid():
        raise RxePowerError(f"the clients folder {path} is owned by uid {st.st_uid}, not the "
                            f"caller (uid {os.geteuid()}): its sockets are not trusted",
                            f"chown {os.geteuid()} {path}; or {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RxePowerError(f"the clients folder {path} is writable by others (mode "
                            f"{stat.S_IMODE(st.st_mode):o}): anyone could plant a socket",
                            f"chmod go-w {path} (clients make it 0700); or {fix}")


@dataclass(frozen=True)
class PeerCred:
    """Who serves the other end of a Unix socket (SO_PEERCRED: taken at its listen())."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, sock: socket.socket) -> PeerCred:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        pid, uid, gid = UCRED.unpack(raw)
        return cls(pid, uid, gid)

"""Telling the clients of the local RDMA device that it goes down and comes back.

The power shim takes the local HCA down and back up the way a system sleep
would. Before that it asks every client to let go of the device
(`suspend_prepare`, answered `released` or `veto` with a reason), and after it
tells them the device is back (`resume_complete`, answered `resumed`).

Two kinds of clients, told in parallel (one daemon thread each):

- in-process Python objects that follow `PowerClient`, registered with
  `Notifier.register()`;
- out-of-process programs, in any language, each listening on a Unix stream
  socket `<CLIENTS_DIR>/<name>.<pid>.sock` (CLIENTS_DIR is
  $RXE_POWER_CLIENTS_DIR, default /run/rxe-power/clients, mode 0700). The shim
  connects to every `*.sock` there each time it notifies, so a client may live
  longer than any one shim run, like a sleep hook. Python clients use
  `ClientEndpoint`.

Shim side::

    notifier = Notifier()
    answers = notifier.suspend_prepare("suspend", deadline_s=5.0)  # list[Answer]
    ...  # device down and back up
    notifier.resume_complete("suspend", DeviceInfo.from_endpoint(topo.local))

Each `Answer` has the client's name, a kind (`released`, `veto`, `resumed`,
`no-answer`, `gone`, `error`), a reason, and monotonic stamps of when the
notice was sent and answered. The calls return when every client has answered
or at the deadline, whichever is first, never later; a client that has not
answered by then is reported `no-answer` and the shim goes on without it.

Wire format (for client authors). One connection per notice: the shim
connects, sends one line, waits for one line, closes. A line is one JSON object
in UTF-8 ending in "\\n", at most 1 MiB:
{"v": 1, "id": <int>, "event": <name>, "payload": {...}}. A reply echoes the
request's "id". Unknown events, missing or mistyped fields are errors.

Shim -> client::

    {"v":1,"id":7,"event":"suspend_prepare",
     "payload":{"transition":"suspend","deadline_s":4.998}}
    {"v":1,"id":8,"event":"resume_complete",
     "payload":{"transition":"suspend",
                "device":{"dev":"rxe0","port":1,"netdev":"rxpw0","ifindex":12,
                          "addr":"198.18.0.1","gid":"::ffff:198.18.0.1","gid_index":1}}}

Client -> shim, to suspend_prepare (within deadline_s seconds of receiving it)::

    {"v":1,"id":7,"event":"released","payload":{}}
    {"v":1,"id":7,"event":"veto","payload":{"reason":"checkpoint in progress"}}

or close the connection without a reply to ignore the notice (reported
`no-answer`). To resume_complete, once the client has reopened the device::

    {"v":1,"id":8,"event":"resumed","payload":{}}

A socket file whose connection is refused is stale (its process is gone): the
shim reports the client `gone` and removes the file. A garbled reply, or a reply
that does not fit the request, is reported `error` with the problem.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import select
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from harness.core.device import DeviceInfo
from harness.core.errors import FramingError, ProtocolError, RxePowerError
from harness.core.protocol import LineReader, Message, decode, encode_checked
from harness.core.schemas import SHIM_NOTICES, ChannelKind

CLIENTS_DIR = Path(os.environ.get("RXE_POWER_CLIENTS_DIR", "/run/rxe-power/clients"))


@contextlib.contextmanager
def private_clients_dir() -> Iterator[Path]:
    """A clients directory of our own (under CLIENTS_DIR's parent), removed afterwards:
    a matrix or stress run notifies its own clients, not others registered on the host."""
    from harness.core.state import StateFile

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

_CLIENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) minus the NUL


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

    def to_json(self) -> dict:
        return {"client": self.client, "kind": str(self.kind), "reason": self.reason,
                "sent_ns": self.sent_ns, "answered_ns": self.answered_ns}

    @classmethod
    def from_json(cls, d: dict) -> Answer:
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


# --- helpers ------------------------------------------------------------------------------
def _log(who: str, msg: str) -> None:
    print(f"rxe-power notify: {who}: {msg}", file=sys.stderr, flush=True)


def socket_client_name(path: Path) -> str:
    """`<name>.<pid>.sock` -> "name (pid N)"; any other name -> the file name without .sock."""
    stem = path.name.removesuffix(SOCKET_SUFFIX)
    name, dot, pid = stem.rpartition(".")
    if dot and name and pid.isdigit():
        return f"{name} (pid {pid})"
    return stem


@contextlib.contextmanager
def _sun_path(path: Path) -> Iterator[str]:
    """An address for bind/connect: `path` itself, or, when it is too long for sun_path,
    the same file reached through /proc/self/fd/<fd of its directory>."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    dfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{dfd}/{path.name}"
        if len(os.fsencode(short)) > _SUN_PATH_MAX:
            raise RxePowerError(f"socket name {path.name!r} is too long for a Unix socket",
                                "use a shorter client name")
        yield short
    finally:
        os.close(dfd)


def _read_line(sock: socket.socket, deadline: float) -> bytes | None:
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


class _Round:
    """One notice to all clients: collects answers from the client threads until every
    client has settled or the deadline passes; later answers are dropped."""

    def __init__(self, names: list[str], deadline: float, bound_s: float) -> None:
        self.names = names
        self.deadline = deadline  # time.monotonic()
        self.bound_s = bound_s
        self.start_ns = time.monotonic_ns()
        self._cond = threading.Condition()
        self._answers: list[Answer | None] = [None] * len(names)
        self._sent_ns = [self.start_ns] * len(names)
        self._stage = ["not started"] * len(names)
        self._pending = len(names)
        self._closed = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def stage(self, i: int, what: str) -> None:
        with self._cond:
            self._stage[i] = what

    def mark_sent(self, i: int) -> int:
        now = time.monotonic_ns()
        with self._cond:
            self._sent_ns[i] = now
        return now

    def settle(self, i: int, kind: AnswerKind, reason: str = "",
               answered: bool = True) -> None:
        now = time.monotonic_ns() if answered else None
        with self._cond:
            if self._closed or self._answers[i] is not None:
                return
            self._answers[i] = Answer(self.names[i], kind, reason, self._sent_ns[i], now)
            self._pending -= 1
            self._cond.notify_all()

    def wait(self) -> list[Answer]:
        with self._cond:
            while self._pending:
                remaining = self.remaining()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._closed = True
            return [a if a is not None else
                    Answer(self.names[i], AnswerKind.NO_ANSWER,
                           f"no answer within {self.bound_s:g}s ({self._stage[i]})",
                           self._sent_ns[i], None)
                    for i, a in enumerate(self._answers)]


# --- the shim side ------------------------------------------------------------------------
_Expect = dict[str, AnswerKind]  # reply event -> answer kind


class Notifier:
    """Tells every client (in-process and socket) of a power transition, in parallel."""

    def __init__(self, clients_dir: Path = CLIENTS_DIR) -> None:
        self.clients_dir = Path(clients_dir)
        self._clients: list[PowerClient] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def register(self, client: PowerClient) -> None:
        with self._lock:
            if not any(c is client for c in self._clients):
                self._clients.append(client)

    def unregister(self, client: PowerClient) -> None:
        """Remove an in-process client; a client that is not registered is ignored."""
        with self._lock:
            self._clients = [c for c in self._clients if c is not client]

    def socket_clients(self) -> list[Path]:
        """The socket files `*.sock` in the clients dir (sockets only, sorted)."""
        try:
            entries = list(os.scandir(self.clients_dir))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for e in entries:
            if not e.name.endswith(SOCKET_SUFFIX):
                continue
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(e.stat(follow_symlinks=False).st_mode):
                    out.append(self.clients_dir / e.name)
        return sorted(out)

    def suspend_prepare(self, transition: str, deadline_s: float) -> list[Answer]:
        """Ask every client to let go of the device within `deadline_s` seconds.
        Returns one Answer per client, in-process clients first, by the deadline."""

        def call(client: PowerClient, rnd: _Round, i: int) -> None:
            reply = client.suspend_prepare(transition, max(rnd.remaining(), 0.0))
            if reply is None:
                rnd.settle(i, AnswerKind.NO_ANSWER, "ignored the notice (returned None)",
                           answered=False)
            elif not isinstance(reply, SuspendReply):
                rnd.settle(i, AnswerKind.ERROR, f"suspend_prepare returned {reply!r}, "
                           "expected a SuspendReply or None")
            elif reply.released:
                rnd.settle(i, AnswerKind.RELEASED)
            else:
                rnd.settle(i, AnswerKind.VETO, reply.reason)

        return self._round(
            deadline_s, call,
            lambda remaining: Message("suspend_prepare", {
                "transition": transition, "deadline_s": round(max(remaining, 0.0), 3)}),
            {"released": AnswerKind.RELEASED, "veto": AnswerKind.VETO})

    def resume_complete(self, transition: str, device: DeviceInfo,
                        timeout_s: float = RESUME_ACK_TIMEOUT_S) -> list[Answer]:
        """Tell every client the device is back; wait up to `timeout_s` for `resumed`."""

        def call(client: PowerClient, rnd: _Round, i: int) -> None:
            client.resume_complete(transition, device)
            rnd.settle(i, AnswerKind.RESUMED)

        dev = device.to_json()
        return self._round(
            timeout_s, call,
            lambda remaining: Message("resume_complete",
                                      {"transition": transition, "device": dev}),
            {"resumed": AnswerKind.RESUMED})

    # -- internals --
    def _round(self, bound_s: float, call: Callable[[PowerClient, _Round, int], None],
               make_msg: Callable[[float], Message], expect: _Expect) -> list[Answer]:
        if not isinstance(bound_s, int | float) or math.isnan(bound_s) or bound_s <= 0:
            raise ValueError(f"the deadline must be a positive number of seconds, "
                             f"not {bound_s!r}")
        deadline = time.monotonic() + bound_s
        with self._lock:
            inproc = list(self._clients)
        paths = self.socket_clients()
        names = [c.name for c in inproc] + [socket_client_name(p) for p in paths]
        rnd = _Round(names, deadline, bound_s)
        threads = []
        for i, client in enumerate(inproc):
            threads.append(threading.Thread(target=self._run_callback, args=(call, client, rnd, i),
                                            name=f"notify {names[i]}", daemon=True))
        for j, path in enumerate(paths, start=len(inproc)):
            threads.append(threading.Thread(target=self._exchange,
                                            args=(path, rnd, j, make_msg, expect),
                                            name=f"notify {names[j]}", daemon=True))
        for t in threads:
            t.start()
        return rnd.wait()

    @staticmethod
    def _run_callback(call: Callable[[PowerClient, _Round, int], None], client: PowerClient,
                      rnd: _Round, i: int) -> None:
        rnd.mark_sent(i)
        rnd.stage(i, "callback still running")
        try:
            call(client, rnd, i)
        except Exception as exc:
            rnd.settle(i, AnswerKind.ERROR, f"{type(exc).__name__}: {exc}")

    def _exchange(self, path: Path, rnd: _Round, i: int, make_msg: Callable[[float], Message],
                  expect: _Expect) -> None:
        """Connect to one socket client, send the notice, read and judge the reply."""
        try:
            self._exchange_inner(path, rnd, i, make_msg, expect)
        except Exception as exc:  # never let a client thread die without an answer
            rnd.settle(i, AnswerKind.ERROR, f"{type(exc).__name__}: {exc}")

    def _exchange_inner(self, path: Path, rnd: _Round, i: int,
                        make_msg: Callable[[float], Message], expect: _Expect) -> None:
        closed = "closed the connection without replying (ignored the notice)"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            rnd.stage(i, "connecting")
            rnd.mark_sent(i)
            remaining = rnd.remaining()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            try:
                with _sun_path(path) as addr:
                    sock.connect(addr)
            except ConnectionRefusedError:
                rnd.settle(i, AnswerKind.GONE, f"connection refused; {self._remove_stale(path)}",
                           answered=False)
                return
            except FileNotFoundError:
                rnd.settle(i, AnswerKind.GONE, "its socket file vanished", answered=False)
                return
            except BlockingIOError:  # AF_UNIX: the listen backlog is full
                rnd.settle(i, AnswerKind.NO_ANSWER, "not accepting connections (its listen "
                           "backlog is full)", answered=False)
                return
            except TimeoutError:
                return  # NO_ANSWER at the deadline
            except OSError as exc:
                rnd.settle(i, AnswerKind.ERROR, f"connect failed: {exc}")
                return
            msg = make_msg(rnd.remaining())
            msg.id = next(self._ids)
            line = encode_checked(msg, ChannelKind.NOTICE)
            rnd.mark_sent(i)
            rnd.stage(i, "waiting for the reply")
            try:
                sock.sendall(line)
                reply_line = _read_line(sock, rnd.deadline)
            except TimeoutError:
                return
            except (BrokenPipeError, ConnectionResetError):
                rnd.settle(i, AnswerKind.NO_ANSWER, closed, answered=False)
                return
            except ProtocolError as exc:
                rnd.settle(i, AnswerKind.ERROR, exc.problem)
                return
            except OSError as exc:
                rnd.settle(i, AnswerKind.ERROR, f"socket error: {exc}")
                return
        if reply_line is None:
            rnd.settle(i, AnswerKind.NO_ANSWER, closed, answered=False)
            return
        try:
            reply = decode(reply_line, ChannelKind.NOTICE)
        except ProtocolError as exc:
            rnd.settle(i, AnswerKind.ERROR, exc.problem)
            return
        if reply.event not in expect:
            rnd.settle(i, AnswerKind.ERROR, f"answered {msg.event!r} with {reply.event!r}, "
                       f"expected {' or '.join(repr(e) for e in expect)}")
        elif reply.id != msg.id:
            rnd.settle(i, AnswerKind.ERROR, f"reply id {reply.id} for request id {msg.id} "
                       "(a reply must echo the request's id)")
        else:
            rnd.settle(i, expect[reply.event], str(reply.payload.get("reason", "")))

    def _remove_stale(self, path: Path) -> str:
        """Remove a refused socket file, only a socket ending in .sock in the clients dir."""
        try:
            if (path.parent.resolve() != self.clients_dir.resolve()
                    or not path.name.endswith(SOCKET_SUFFIX)):
                return "file left in place (not in the clients dir)"
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                return "file left in place (not a socket)"
            path.unlink()
            return "stale socket file removed"
        except FileNotFoundError:
            return "socket file already gone"
        except OSError as exc:
            return f"could not remove the stale socket file: {exc}"


# --- the client side ----------------------------------------------------------------------
class ClientEndpoint:
    """An out-of-process client's socket: `<clients_dir>/<name>.<pid>.sock`.

    Either run `serve_in_thread()`, or put `fileno()` into your own select loop and
    call `handle_ready()` when it is readable. `on_suspend(transition, deadline_s)`
    returns SuspendReply.release(), SuspendReply.veto(reason), or None to ignore the
    notice; `on_resume(transition, device)` returns when the device is reopened.
    Callbacks run on the thread that calls handle_ready(), one notice at a time.
    """

    def __init__(self, name: str, on_suspend: Callable[[str, float], SuspendReply | None],
                 on_resume: Callable[[str, DeviceInfo], None],
                 clients_dir: Path = CLIENTS_DIR) -> None:
        if not _CLIENT_NAME.fullmatch(name):
            raise RxePowerError(f"client name {name!r} is not usable in a socket file name",
                                "use 1-64 characters of letters, digits, '_', '.', '+', '-'")
        self.name = name
        self.on_suspend = on_suspend
        self.on_resume = on_resume
        self.clients_dir = Path(clients_dir)
        self.path = self.clients_dir / f"{name}.{os.getpid()}{SOCKET_SUFFIX}"
        self._closing = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._make_dir()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._ident = self._bind()
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _make_dir(self) -> None:
        try:
            self.clients_dir.mkdir(parents=True, mode=0o700)
        except FileExistsError:
            return
        os.chmod(self.clients_dir, 0o700)  # mkdir's mode is cut by the umask

    def _bind(self) -> tuple[int, int]:
        """Bind under a name the shim ignores, listen, then rename into place, so the shim
        never sees a bound-but-not-listening socket (it would take it for stale)."""
        if os.path.lexists(self.path):
            self._clear_stale()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with contextlib.suppress(OSError):  # Linux: the bound file takes this mode
            os.fchmod(self._sock.fileno(), 0o600)
        with _sun_path(tmp) as addr:
            self._sock.bind(addr)
        try:
            os.chmod(tmp, 0o600)
            self._sock.listen(LISTEN_BACKLOG)
            os.rename(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        st = os.lstat(self.path)
        return st.st_dev, st.st_ino

    def _clear_stale(self) -> None:
        """Our file name is taken: remove it if it is a dead socket (an earlier process with
        our pid); refuse if it is live (this process already has a client of this name)."""
        if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise RxePowerError(f"{self.path} exists and is not a socket",
                                "remove it; the clients dir holds client sockets only")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                with _sun_path(self.path) as addr:
                    probe.connect(addr)
            except ConnectionRefusedError:
                self.path.unlink()
                return
            except OSError:
                pass
        raise RxePowerError(f"{self.path} is in use: this process already has a client "
                            f"named {self.name!r}", "use a different client name")

    def fileno(self) -> int:
        return self._sock.fileno()

    def handle_ready(self, timeout_s: float = 0.0) -> int:
        """Wait up to `timeout_s` for connections, then handle every pending one (one notice
        each). Returns how many notices were dispatched to on_suspend/on_resume."""
        if self._closed or self._closing.is_set():
            return 0
        try:
            ready, _, _ = select.select([self._sock, self._wake_r], [], [], max(timeout_s, 0.0))
        except (OSError, ValueError):  # closed under us
            return 0
        if not ready or self._closing.is_set():
            return 0
        handled = 0
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if not self._closing.is_set():
                    _log(self.name, f"accept failed: {exc}")
                break
            with conn:
                handled += self._serve(conn)
        return handled

    def _serve(self, conn: socket.socket) -> bool:
        deadline = time.monotonic() + CLIENT_READ_TIMEOUT_S
        try:
            line = _read_line(conn, deadline)
            if line is None:
                return False  # connected and left without a notice
            msg = decode(line, ChannelKind.NOTICE)
            if msg.event not in SHIM_NOTICES:
                raise ProtocolError(f"the shim sent {msg.event!r}, which is a client's reply",
                                    f"the shim sends only {', '.join(SHIM_NOTICES)}")
            device = (DeviceInfo.from_json(msg.payload["device"])
                      if msg.event == "resume_complete" else None)
        except TimeoutError:
            _log(self.name, f"no complete notice within CLIENT_READ_TIMEOUT_S="
                            f"{CLIENT_READ_TIMEOUT_S:g}s; dropped the connection")
            return False
        except ProtocolError as exc:
            _log(self.name, f"malformed notice, not answered: {exc.problem}")
            return False
        except OSError as exc:
            _log(self.name, f"reading the notice failed: {exc}")
            return False
        transition = msg.payload["transition"]
        try:
            if device is None:
                reply = self.on_suspend(transition, float(msg.payload["deadline_s"]))
                if reply is None:
                    return True  # ignored: close without a reply
                if not isinstance(reply, SuspendReply):
                    _log(self.name, f"on_suspend returned {reply!r}, not a SuspendReply or "
                                    "None; not answered")
                    return True
                out = (Message("released", {}, msg.id) if reply.released
                       else Message("veto", {"reason": str(reply.reason)}, msg.id))
            else:
                self.on_resume(transition, device)
                out = Message("resumed", {}, msg.id)
        except Exception:
            _log(self.name, f"the {msg.event} callback raised; not answered\n"
                            + traceback.format_exc().rstrip())
            return True
        try:
            conn.settimeout(CLIENT_READ_TIMEOUT_S)
            conn.sendall(encode_checked(out, ChannelKind.NOTICE))
        except (OSError, ProtocolError) as exc:
            _log(self.name, f"could not send {out.event!r} (past the shim's deadline?): {exc}")
        return True

    def serve_in_thread(self) -> threading.Thread:
        """Handle notices on a daemon thread until close()."""
        if self._thread is not None:
            raise RuntimeError(f"client {self.name!r} is already served by a thread")

        def loop() -> None:
            while not self._closing.is_set():
                self.handle_ready(SERVE_TICK_S)

        self._thread = threading.Thread(target=loop, name=f"rxe-power client {self.name}",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def close(self) -> None:
        """Stop serving, close the socket and remove its file (if it is still ours)."""
        if self._closed:
            return
        self._closing.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        t = self._thread
        if t is not None and t is not threading.current_thread():
            # bounded: a callback that never returns is left behind (daemon thread)
            t.join(CLIENT_READ_TIMEOUT_S + SERVE_TICK_S)
        self._closed = True
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                self.path.unlink()
        self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> ClientEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The shim side: tell every client (in-process and socket) of a transition, in parallel,
and collect one Answer each by the deadline."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness.core.device import DeviceInfo
from harness.core.errors import ProtocolError
from harness.core.protocol import Message, decode, encode_checked
from harness.core.schemas import ChannelKind
from harness.core.settings import NOTIFY_UIDS_ENV, notify_uids
from power.notify.answers import Answer, AnswerKind, PowerClient, SuspendReply
from power.notify.sockets import (
    CLIENTS_DIR,
    RESUME_ACK_TIMEOUT_S,
    SOCKET_SUFFIX,
    PeerCred,
    check_clients_dir,
    read_line,
    socket_client_name,
    sun_path,
)


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


_Expect = dict[str, AnswerKind]  # reply event -> answer kind


class Notifier:
    """Tells every client (in-process and socket) of a power transition, in parallel."""

    def __init__(self, clients_dir: Path = CLIENTS_DIR,
                 allowed_uids: frozenset[int] | None = None) -> None:
        """`allowed_uids`: whose sockets may answer (SO_PEERCRED); default the setting
        RXE_POWER_NOTIFY_UIDS, itself by default root and the caller."""
        self.clients_dir = Path(clients_dir)
        self.allowed_uids = notify_uids() if allowed_uids is None else allowed_uids
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
        """The socket files `*.sock` in the clients dir (sockets only, sorted). Raises
        RxePowerError for a clients dir someone else could write (check_clients_dir)."""
        check_clients_dir(self.clients_dir)
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
                with sun_path(path) as addr:
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
            cred = PeerCred.of(sock)
            if cred.uid not in self.allowed_uids:  # not told, not heard
                rnd.settle(i, AnswerKind.ERROR, f"refused: its socket is served by uid "
                           f"{cred.uid} (pid {cred.pid}), not allowed to answer power notices "
                           f"(allowed uids {', '.join(map(str, sorted(self.allowed_uids)))}); "
                           f"fix: add it to {NOTIFY_UIDS_ENV} if it is a client of yours",
                           answered=False)
                return
            msg = make_msg(rnd.remaining())
            msg.id = next(self._ids)
            line = encode_checked(msg, ChannelKind.NOTICE)
            rnd.mark_sent(i)
            rnd.stage(i, "waiting for the reply")
            try:
                sock.sendall(line)
                reply_line = read_line(sock, rnd.deadline)
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

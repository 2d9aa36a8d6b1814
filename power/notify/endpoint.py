"""The client side: an out-of-process client's notice socket (ClientEndpoint)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from harness.core.device import DeviceInfo
from harness.core.errors import ProtocolError, RxePowerError
from harness.core.protocol import Message, decode, encode_checked
from harness.core.schemas import SHIM_NOTICES, ChannelKind
from power.notify.answers import SuspendReply
from power.notify.sockets import (
    CLIENT_NAME,
    CLIENT_READ_TIMEOUT_S,
    CLIENTS_DIR,
    LISTEN_BACKLOG,
    SERVE_TICK_S,
    SOCKET_SUFFIX,
    log,
    read_line,
    sun_path,
)


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
        if not CLIENT_NAME.fullmatch(name):
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
        with sun_path(tmp) as addr:
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
                with sun_path(self.path) as addr:
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
            ready, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [],
                                        max(timeout_s, 0.0))
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
                    log(self.name, f"accept failed: {exc}")
                break
            with conn:
                handled += self._serve(conn)
        return handled

    def _serve(self, conn: socket.socket) -> bool:
        deadline = time.monotonic() + CLIENT_READ_TIMEOUT_S
        try:
            line = read_line(conn, deadline)
            if line is None:
                return False  # connected and left without a notice
            msg = decode(line, ChannelKind.NOTICE)
            if msg.event not in SHIM_NOTICES:
                raise ProtocolError(f"the shim sent {msg.event!r}, which is a client's reply",
                                    f"the shim sends only {', '.join(SHIM_NOTICES)}")
            device = (DeviceInfo.from_json(msg.payload["device"])
                      if msg.event == "resume_complete" else None)
        except TimeoutError:
            log(self.name, f"no complete notice within CLIENT_READ_TIMEOUT_S="
                            f"{CLIENT_READ_TIMEOUT_S:g}s; dropped the connection")
            return False
        except ProtocolError as exc:
            log(self.name, f"malformed notice, not answered: {exc.problem}")
            return False
        except OSError as exc:
            log(self.name, f"reading the notice failed: {exc}")
            return False
        transition = msg.payload["transition"]
        try:
            if device is None:
                reply = self.on_suspend(transition, float(msg.payload["deadline_s"]))
                if reply is None:
                    return True  # ignored: close without a reply
                if not isinstance(reply, SuspendReply):
                    log(self.name, f"on_suspend returned {reply!r}, not a SuspendReply or "
                                    "None; not answered")
                    return True
                out = (Message("released", {}, msg.id) if reply.released
                       else Message("veto", {"reason": str(reply.reason)}, msg.id))
            else:
                self.on_resume(transition, device)
                out = Message("resumed", {}, msg.id)
        except Exception:
            log(self.name, f"the {msg.event} callback raised; not answered\n"
                            + traceback.format_exc().rstrip())
            return True
        try:
            conn.settimeout(CLIENT_READ_TIMEOUT_S)
            conn.sendall(encode_checked(out, ChannelKind.NOTICE))
        except (OSError, ProtocolError) as exc:
            log(self.name, f"could not send {out.event!r} (past the shim's deadline?): {exc}")
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

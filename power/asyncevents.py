"""Read devices' async events (PORT_ERR, PORT_ACTIVE, GID_CHANGE, DEVICE_FATAL...) safely.

pyverbs' get_async_event() blocks holding the GIL, and an open Context is a
holder of the device (it would block the device's own delete). So the reader is
a separate process: it opens devices on command, makes their async fds
non-blocking, waits on them and on its stdin with select(), and prints one JSON
line per event stamped with CLOCK_MONOTONIC (comparable with the shim's stamps).
The controller closes a device in it before deleting that device. One reader
process serves a shim for its whole life (starting Python is slow under TCG).

    stdin:  open DEV | close DEV                (EOF: close everything and exit)
    stdout: {"ready": pid} {"opened": DEV} {"closed": DEV} {"error": TEXT, "dev": DEV}
            {"dev": DEV, "event": "PORT_ERR", "code": 10, "t_ns": N}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from harness.errors import BoundExceeded, RxePowerError
from harness.names import async_event_name
from harness.proc import wait_or_kill

READER_START_TIMEOUT_S = 30.0
READER_ACK_TIMEOUT_S = 10.0
READER_STOP_TIMEOUT_S = 5.0

OnEvent = Callable[[str, str, int, dict], None]  # (device, event name, t_ns, raw record)


def _say(**rec: object) -> None:
    os.write(1, (json.dumps(rec) + "\n").encode())


def serve() -> int:
    """The reader process body."""
    from harness.verbs import Device, verbs_call

    open_devs: dict[str, Device] = {}
    stdin = sys.stdin.fileno()
    buf = b""
    _say(ready=os.getpid())
    try:
        while True:
            by_fd = {d.async_fd: name for name, d in open_devs.items()}
            readable, _, _ = select.select([stdin, *by_fd], [], [])
            for fd in readable:
                if fd != stdin:
                    _drain(by_fd[fd], open_devs[by_fd[fd]], verbs_call)
                    continue
                data = os.read(stdin, 4096)
                if not data:
                    return 0
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    _command(line.decode().split(), open_devs, Device)
    finally:
        for dev in open_devs.values():
            dev.close()


def _command(words: list[str], open_devs: dict, device_cls: type) -> None:
    if len(words) != 2 or words[0] not in ("open", "close"):
        _say(error=f"bad command {' '.join(words)!r}", dev="")
        return
    cmd, name = words
    if cmd == "close":
        dev = open_devs.pop(name, None)
        if dev is not None:
            dev.close()
        _say(closed=name)
        return
    if name in open_devs:
        _say(opened=name)
        return
    try:
        dev = device_cls(name)
    except RxePowerError as exc:
        _say(error=str(exc), dev=name)
        return
    if dev.async_fd is None:
        dev.close()
        _say(error=f"cannot find the async event fd of {name}", dev=name)
        return
    os.set_blocking(dev.async_fd, False)
    open_devs[name] = dev
    _say(opened=name)


def _drain(name: str, dev: object, verbs_call: Callable) -> None:
    while True:
        try:
            with verbs_call(f"{name}: get async event"):
                ev = dev.ctx.get_async_event()  # type: ignore[attr-defined]
        except RxePowerError:
            return  # EAGAIN: drained
        t_ns = time.monotonic_ns()
        code = int(ev.event_type)
        ev.ack()
        _say(dev=name, event=async_event_name(code), code=code, t_ns=t_ns)


class AsyncEventReader:
    """Controller side: one reader process; open/close devices in it, collect events."""

    def __init__(self, on_event: OnEvent | None = None) -> None:
        self.on_event = on_event
        self.open_devices: set[str] = set()
        self.proc = subprocess.Popen([sys.executable, "-m", "power.asyncevents"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self._acks: queue.Queue[dict] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, name="async-events", daemon=True)
        self._thread.start()
        try:
            self._ack("ready", None, READER_START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "event" in rec:
                if self.on_event is not None:
                    self.on_event(rec["dev"], rec["event"], int(rec["t_ns"]), rec)
            else:
                self._acks.put(rec)
        self._acks.put({"exited": True})

    def _ack(self, key: str, dev: str | None, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                rec = self._acks.get(timeout=left)
            except queue.Empty:
                break
            if "exited" in rec:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RxePowerError(f"the async event reader (pid {self.pid}) exited: "
                                    f"{err.strip()[-400:] or 'no output'}",
                                    "check that pyverbs imports (python3-pyverbs)")
            if "error" in rec:
                raise RxePowerError(f"async event reader: {rec['error']}",
                                    "is the device present? see `rdma link show`")
            if key in rec and rec[key] == (dev if dev is not None else rec[key]):
                return
        raise BoundExceeded(f"async event reader (pid {self.pid}): {key} {dev or ''}".strip(),
                            "READER_ACK_TIMEOUT_S", timeout_s, f"the reader's {key!r} answer")

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RxePowerError(f"the async event reader (pid {self.pid}) is gone",
                                "see its stderr; restart the shim") from None

    def open(self, dev: str) -> None:
        self._send(f"open {dev}")
        self._ack("opened", dev, READER_ACK_TIMEOUT_S)
        self.open_devices.add(dev)

    def close(self, dev: str) -> None:
        """Close the reader's Context on `dev` (it would block the device's delete)."""
        self._send(f"close {dev}")
        self._ack("closed", dev, READER_ACK_TIMEOUT_S)
        self.open_devices.discard(dev)

    def stop(self) -> None:
        """EOF on its stdin: it closes every Context and exits; killed past the bound."""
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        wait_or_kill(self.proc, READER_STOP_TIMEOUT_S)
        self._thread.join(READER_STOP_TIMEOUT_S)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        self.open_devices.clear()

    def __enter__(self) -> AsyncEventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="power.asyncevents", description=__doc__.split("\n")[0])
    ap.parse_args(argv)
    return serve()


if __name__ == "__main__":
    raise SystemExit(main())

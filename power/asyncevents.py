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

Both directions are checked line by line (parse_command, parse_record): a
command line of more than MAX_COMMAND_BYTES, not UTF-8, or not one of the two
commands on a valid device name is answered {"error": ..., "dev": ""} and the
reader carries on; a record that is not one of the shapes above is counted in
AsyncEventReader.bad_records and reported on stderr, and the pump carries on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from harness.core.errors import BoundExceeded, FramingError, ProtocolError, RxePowerError
from harness.core.printer import STDERR
from harness.core.proc import python_child, spawn, stop_child
from harness.core.protocol import MAX_MESSAGE_BYTES, LineReader
from harness.core.strict_json import MAX_INT, loads_strict
from harness.rdma.names import async_event_name

if TYPE_CHECKING:  # imported for real only in the reader process (see serve)
    from harness.rdma.verbs import Device

READER_START_TIMEOUT_S = 30.0
READER_ACK_TIMEOUT_S = 10.0
READER_STOP_TIMEOUT_S = 5.0
MAX_COMMAND_BYTES = 4096  # one stdin command line ("open rxe0")
BAD_RECORDS_KEPT = 20  # malformed stdout records kept in AsyncEventReader.bad_records
_DEV_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # IB_DEVICE_NAME_MAX is 64
_ACK_KEYS = {"ready": int, "opened": str, "closed": str}

OnEvent = Callable[[str, str, int, dict[str, Any]], None]  # (device, event, t_ns, record)
VerbsCall = Callable[[str], AbstractContextManager[None]]  # harness.rdma.verbs.verbs_call


def _say(**rec: object) -> None:
    os.write(1, (json.dumps(rec) + "\n").encode())


def parse_command(line: bytes) -> tuple[str, str]:
    """One stdin command line -> (command, device); ProtocolError for anything else."""
    try:
        words = line.decode("utf-8").split()
    except UnicodeDecodeError:
        raise ProtocolError(f"bad command {line[:60]!r}: not UTF-8",
                            "send `open DEV` or `close DEV`") from None
    if len(words) != 2 or words[0] not in ("open", "close"):
        raise ProtocolError(f"bad command {' '.join(words)[:60]!r}",
                            "send `open DEV` or `close DEV`")
    if not _DEV_NAME.fullmatch(words[1]):
        raise ProtocolError(f"bad device name {words[1][:60]!r}",
                            "name an RDMA device (1-64 of letters, digits, '_', '.', '-')")
    return words[0], words[1]


def parse_record(line: str | bytes) -> dict[str, Any]:
    """One stdout record of the reader, checked against the shapes in the module docstring;
    ProtocolError for anything else."""
    raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
    rec = loads_strict(raw.rstrip(b"\r\n"))
    if not isinstance(rec, dict):
        raise ProtocolError(f"record is a JSON {type(rec).__name__}, not an object",
                            "the reader prints one JSON object per line")
    if "event" in rec:
        want = {"dev": str, "event": str, "code": int, "t_ns": int}
    elif "error" in rec:
        want = {"error": str, "dev": str}
    else:
        keys = [k for k in _ACK_KEYS if k in rec]
        if len(keys) != 1:
            raise ProtocolError(f"record {str(rec)[:60]} is none of event, error, "
                                f"{', '.join(_ACK_KEYS)}", "see the module docstring")
        want = {keys[0]: _ACK_KEYS[keys[0]]}
    for key, typ in want.items():
        val = rec.get(key)
        if isinstance(val, bool) or not isinstance(val, typ) or \
                (isinstance(val, int) and not 0 <= val <= MAX_INT):
            raise ProtocolError(f"record field {key!r} is {str(val)[:60]!r}, expected "
                                f"{'a non-negative ' if typ is int else 'a '}{typ.__name__}",
                                "see the module docstring")
    return rec


def serve() -> int:
    """The reader process body."""
    # pyverbs is imported only in the reader process: the controller side of this module
    # (AsyncEventReader) runs without it
    from harness.rdma.verbs import Device, verbs_call

    open_devs: dict[str, Device] = {}
    stdin = sys.stdin.fileno()
    reader = LineReader(MAX_COMMAND_BYTES)
    _say(ready=os.getpid())
    try:
        while True:
            by_fd = {d.async_fd: name for name, d in open_devs.items()
                     if d.async_fd is not None}  # always: _command keeps only those
            readable, _, _ = select.select([stdin, *by_fd], [], [])
            for fd in readable:
                if fd != stdin:
                    dev = open_devs.get(by_fd[fd])
                    if dev is not None:  # a close earlier in this turn may have taken it
                        _drain(by_fd[fd], dev, verbs_call)
                    continue
                data = os.read(stdin, 4096)
                if not data:
                    return 0
                try:
                    lines, framing = reader.feed(data), None
                except FramingError as exc:  # the reader skips to the next newline
                    lines, framing = exc.lines, exc
                for line in lines:
                    try:
                        _command(*parse_command(line), open_devs, Device, verbs_call)
                    except Exception as exc:  # a bad command never ends the reader
                        _say(error=str(exc)[:MAX_COMMAND_BYTES], dev="")
                if framing is not None:
                    _say(error=framing.problem, dev="")
    finally:
        for dev in open_devs.values():
            dev.close()


def _command(cmd: str, name: str, open_devs: dict[str, Device], device_cls: type[Device],
             verbs_call: VerbsCall) -> None:
    if cmd == "close":
        dev = open_devs.pop(name, None)
        if dev is not None:
            _drain(name, dev, verbs_call)  # what the device already delivered is reported
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


def _drain(name: str, dev: Device, verbs_call: VerbsCall) -> None:
    while True:
        try:
            with verbs_call(f"{name}: get async event"):
                ev = dev.ctx.get_async_event()
        except RxePowerError:
            return  # EAGAIN: drained
        t_ns = time.monotonic_ns()
        code = int(ev.event_type)
        ev.ack()
        _say(dev=name, event=async_event_name(code), code=code, t_ns=t_ns)


class AsyncEventReader:
    """Controller side: one reader process; open/close devices in it, collect events."""

    def __init__(self, on_event: OnEvent | None = None, wait_ready: bool = True) -> None:
        """`wait_ready=False` returns at once; the first open() waits for the reader to be
        ready (its start, Python and pyverbs imports, takes over a second under emulation,
        and can overlap other work)."""
        self.on_event = on_event
        self.ready = False
        self.open_devices: set[str] = set()
        self.bad_records: list[str] = []  # malformed stdout lines (the first few)
        self.bad_record_count = 0
        self.proc = spawn(python_child("power.asyncevents"), "async event reader",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace")
        self.pid = self.proc.pid
        self._acks: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, name="async-events", daemon=True)
        self._thread.start()
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            self._ack("ready", None, READER_START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.ready = True

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        for line in iter(lambda: stdout.readline(MAX_MESSAGE_BYTES), ""):
            try:
                rec = parse_record(line)
            except ProtocolError as exc:  # counted and reported; the pump carries on
                self._bad(f"{exc.problem}: {line[:200]!r}")
                continue
            if "event" in rec:
                if self.on_event is not None:
                    try:
                        self.on_event(rec["dev"], rec["event"], rec["t_ns"], rec)
                    except Exception as exc:  # a failing callback must not stop the acks
                        self._bad(f"on_event raised {type(exc).__name__}: {exc}")
            else:
                self._acks.put(rec)
        self._acks.put({"exited": True})

    def _bad(self, what: str) -> None:
        self.bad_record_count += 1
        if len(self.bad_records) < BAD_RECORDS_KEPT:
            self.bad_records.append(what)
        STDERR(f"rxe-power async events (pid {self.pid}): {what}")

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
            self.proc.poll()
            err = ""
            if self.proc.returncode is not None and self.proc.stderr:
                with contextlib.suppress(OSError, ValueError):
                    err = self.proc.stderr.read().strip()[-400:]
            raise RxePowerError(f"the async event reader (pid {self.pid}) is gone (exit "
                                f"{self.proc.returncode}){': ' + err if err else ''}",
                                "see its stderr; restart the shim") from None

    def open(self, dev: str) -> None:
        self.wait_ready()
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
        stop_child(self.proc, READER_STOP_TIMEOUT_S)
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

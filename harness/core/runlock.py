"""The run lock: one rxe-power run that uses the topology at a time.

    with run_lock("rxe-power matrix ..."):    # held for the whole run
        ...

A second run (or a cleanup) meanwhile is refused: "another rxe-power run (pid N,
command) is active". The lock is an flock on a file next to the state file
(`<state>.run.lock`), so the kernel releases it when its holder dies, even by SIGKILL:
a stale lock cannot exist. The holder writes its pid and command line into the file
for the message. Nested takes in one process (the CLI, then cleanup inside it) share
the one lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.core import settings
from harness.core.errors import OsCallError, RxePowerError

HOLDER_TEXT_MAX = 4096  # bytes of the lock file read for the holder's pid and command


class RunBusy(RxePowerError):
    """Another run holds the run lock."""


@dataclass(frozen=True)
class Holder:
    pid: int | None  # None: the holder has not written itself down yet
    command: str

    def describe(self) -> str:
        return f"pid {self.pid if self.pid is not None else 'unknown'}, {self.command or '?'}"


def lock_path(state: Path | None = None) -> Path:
    state = state if state is not None else settings.state_path()
    return state.with_name(state.name + ".run.lock")


_held: dict[Path, int] = {}  # lock path -> how many nested takes in this process


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _read_holder(fd: int) -> Holder:
    raw = os.pread(fd, HOLDER_TEXT_MAX, 0).decode("utf-8", "replace")
    pid_text, _, command = raw.partition("\n")
    pid = int(pid_text) if pid_text.strip().isdigit() else None
    return Holder(pid, command.strip().replace("\n", " "))


def holder(path: Path | None = None) -> Holder | None:
    """Who holds the run lock now (None: nobody; also when this process holds it)."""
    path = path if path is not None else lock_path()
    if path in _held:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy_error(who: Holder, path: Path) -> RunBusy:
    return RunBusy(f"another rxe-power run ({who.describe()}) is active: it holds {path}",
                   "wait for it to end, or stop it (kill PID; then rxe-power cleanup)")


@contextlib.contextmanager
def run_lock(command: str, path: Path | None = None) -> Iterator[None]:
    """Hold the run lock for the body; raise RunBusy at once if another run holds it."""
    path = path if path is not None else lock_path()
    if path in _held:  # nested in this process: the outer take holds it
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        fd = _open(path)
    except OSError as exc:
        raise OsCallError(f"cannot open the run lock {path}", exc.errno or errno.EIO,
                          "run as root; if it is a symlink or not a file, remove it") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy_error(_read_holder(fd), path) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{command}\n".encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock

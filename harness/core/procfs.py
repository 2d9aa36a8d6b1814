"""The one reader of /proc: what rxe-power needs to know about a process or a thread.

Standard library only (ci/rxe-setup.sh runs the holder scan with the system python).
Every reader takes a pid (or "self") and, for tests, the root `proc` to read under:

    read_stat(pid) -> ProcStat       state, parent, process group, start time, argv area
    read_cmdline(pid) -> argv        read_comm(pid, tid) -> name
    fd_targets(pid) -> {fd: target}  fd_target(pid, fd) -> target
    pids() / tids(pid)               read_wchan / read_kernel_stack / read_syscall (a thread)
    read_stable(pid, read)           read() of a process that stayed one process throughout

A process (or thread, or fd) that is gone, or whose pid names nothing, reads as None:
that is an answer, not an error. A file that is there but cannot be read is
ProcUnreadable (with the errno and its text); text that is not in the kernel's format
is ProcFormatError naming the file and what is wrong. Nothing else is raised: a comm
with spaces, parentheses or a newline, a cmdline that is not UTF-8, a line cut short
all come out typed or as one of those errors.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from harness.core.errors import ProcFormatError, ProcUnreadable

PROC = Path("/proc")
Pid = int | Literal["self"]
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})  # the process, task or fd went away
STAT_FIELDS_AFTER_COMM = 20  # state .. starttime: the fields every reader here needs
DEC_NUMBER = re.compile(r"-?[0-9]{1,20}")
HEX_NUMBER = re.compile(r"(0x)?[0-9a-f]{1,16}")
T = TypeVar("T")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat (or a task's) that rxe-power reads."""

    pid: int
    comm: str
    state: str  # R, S, D, Z, X, T, t, I...
    ppid: int
    pgrp: int
    start_ticks: int  # field 22: clock ticks after boot when it started
    arg_start: int | None  # fields 48 and 49: its argv area (None on a kernel without them)
    arg_end: int | None

    @property
    def gone(self) -> bool:
        """A zombie (or dead) task only waits for its parent to collect its exit status."""
        return self.state in ("Z", "X")


@dataclass(frozen=True)
class SyscallLine:
    """/proc/PID/task/TID/syscall: `running`, or `-1 SP PC` (blocked outside a system call),
    or `NR ARG1 .. ARG6 SP PC`."""

    running: bool  # in user space
    nr: int | None  # the call's number; None when running or not in a call
    args: tuple[int, ...]  # its arguments (hex in the file)


def _path(proc: Path, pid: Pid, *parts: str | int) -> Path:
    return proc.joinpath(str(pid), *map(str, parts))


def _read(path: Path) -> bytes | None:
    """The file's bytes; None when what it belongs to is gone."""
    try:
        return path.read_bytes()
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            return None
        raise ProcUnreadable(f"read {path}", exc.errno or 0,
                             "run as root, or the file is not there on this kernel") from None


def _text(path: Path) -> str | None:
    raw = _read(path)
    return None if raw is None else raw.decode(errors="replace")


def _int(path: Path, what: str, raw: str, base: int = 10) -> int:
    """A decimal (or, base 16, a 0x-hex) number as the kernel prints it: no sign but a
    minus, no spaces, no underscores (which int() would take)."""
    digits = HEX_NUMBER if base == 16 else DEC_NUMBER
    if not digits.fullmatch(raw):
        raise ProcFormatError(f"{path}: {what} {raw[:40]!r} is not a number",
                              "report it: the kernel's format is not what rxe-power reads")
    return int(raw, base)


def parse_stat(text: str, path: Path = Path("stat")) -> ProcStat:
    """One stat line: `PID (COMM) STATE PPID PGRP ...`. The comm may hold spaces and
    parentheses: it ends at the line's last ')'."""
    head, close, tail = text.rpartition(")")
    pid_part, open_, comm = head.partition(" (")
    fields = tail.split()
    if not close or not open_ or len(fields) < STAT_FIELDS_AFTER_COMM:
        raise ProcFormatError(f"{path}: {text[:80]!r} is not `PID (COMM) STATE ...` with "
                              f"{STAT_FIELDS_AFTER_COMM} fields after the comm",
                              "report it: the kernel's format is not what rxe-power reads")
    argv = [_int(path, "arg_start/arg_end", f) for f in fields[45:47]] if len(fields) > 46 \
        else [None, None]
    return ProcStat(_int(path, "pid", pid_part.strip()), comm, fields[0],
                    _int(path, "ppid", fields[1]), _int(path, "pgrp", fields[2]),
                    _int(path, "starttime", fields[19]), argv[0], argv[1])


def read_stat(pid: Pid, proc: Path = PROC) -> ProcStat | None:
    path = _path(proc, pid, "stat")
    text = _text(path)
    return None if text is None else parse_stat(text, path)


def read_task_stat(pid: Pid, tid: int, proc: Path = PROC) -> ProcStat | None:
    path = _path(proc, pid, "task", tid, "stat")
    text = _text(path)
    return None if text is None else parse_stat(text, path)


def read_cmdline(pid: Pid, proc: Path = PROC) -> tuple[str, ...] | None:
    """Its arguments (bytes that are not UTF-8 replaced); () for a kernel thread or a
    zombie."""
    raw = _read(_path(proc, pid, "cmdline"))
    if raw is None:
        return None
    return tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)


def read_comm(pid: Pid, proc: Path = PROC, tid: int | None = None) -> str | None:
    """Its name (the task's, with `tid`), as the kernel keeps it (at most 15 bytes)."""
    path = _path(proc, pid, "comm") if tid is None else _path(proc, pid, "task", tid, "comm")
    text = _text(path)
    return None if text is None else text.removesuffix("\n")


def fd_target(pid: Pid, fd: int, proc: Path = PROC) -> str | None:
    """What fd `fd` of `pid` names (its link target: a path, `socket:[N]`,
    `anon_inode:[...]`); None when the fd or the process is gone."""
    path = _path(proc, pid, "fd", fd)
    try:
        return os.readlink(path)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            return None
        raise ProcUnreadable(f"readlink {path}", exc.errno or 0,
                             "run as root: another user's fds cannot be read") from None


def fd_targets(pid: Pid, proc: Path = PROC) -> dict[int, str] | None:
    """Every open fd of `pid` and what it names; an fd closed while they are read is left
    out. None when the process is gone."""
    path = _path(proc, pid, "fd")
    try:
        names = os.listdir(path)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            return None
        raise ProcUnreadable(f"list {path}", exc.errno or 0,
                             "run as root: another user's fds cannot be read") from None
    out = {}
    for name in names:
        fd = _int(path, "fd", name)
        target = fd_target(pid, fd, proc)
        if target is not None:
            out[fd] = target
    return out


def _numbered(path: Path) -> list[int] | None:
    try:
        return sorted(int(n) for n in os.listdir(path) if n.isdigit() and n.isascii())
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            return None
        raise ProcUnreadable(f"list {path}", exc.errno or 0, "is /proc mounted?") from None


def pids(proc: Path = PROC) -> list[int]:
    """Every process there is now (each may be gone by the time it is read)."""
    return _numbered(proc) or []


def tids(pid: Pid, proc: Path = PROC) -> list[int] | None:
    """Its threads; None when it is gone."""
    return _numbered(_path(proc, pid, "task"))


def read_wchan(pid: Pid, tid: int, proc: Path = PROC) -> str | None:
    """Where the thread sleeps in the kernel ("0" or "" when it runs)."""
    text = _text(_path(proc, pid, "task", tid, "wchan"))
    return None if text is None else text.strip()


def parse_stack(text: str) -> tuple[str, ...]:
    """A kernel stack -> ("func [module]", ...), innermost first, offsets dropped. A line
    reads `[<0>] ib_uverbs_remove_one+0x4f/0xb0 [ib_uverbs]`; one that does not is left
    out."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        func = parts[1].split("+", 1)[0]
        out.append(f"{func} {parts[2]}" if len(parts) > 2 else func)
    return tuple(out)


def read_kernel_stack(pid: Pid, tid: int, proc: Path = PROC) -> tuple[str, ...] | None:
    """The thread's kernel stack (parse_stack); reading it needs root (ProcUnreadable)."""
    text = _text(_path(proc, pid, "task", tid, "stack"))
    return None if text is None else parse_stack(text)


def parse_syscall(text: str, path: Path = Path("syscall")) -> SyscallLine:
    parts = text.split()
    if not parts:
        raise ProcFormatError(f"{path} is empty", "report it: the kernel's format is not "
                              "what rxe-power reads")
    if parts[0] == "running":
        return SyscallLine(True, None, ())
    nr = _int(path, "system call number", parts[0])
    if nr < 0:
        return SyscallLine(False, None, ())
    return SyscallLine(False, nr, tuple(_int(path, "argument", a, 16) for a in parts[1:7]))


def read_syscall(pid: Pid, tid: int, proc: Path = PROC) -> SyscallLine | None:
    """The system call the thread is in; reading it needs root (ProcUnreadable)."""
    path = _path(proc, pid, "task", tid, "syscall")
    text = _text(path)
    return None if text is None else parse_syscall(text, path)


def read_stable(pid: int, read: Callable[[], T], proc: Path = PROC) -> tuple[int, T] | None:
    """(its start time, read()) when `pid` was one and the same live process before and
    after read() (a pid the kernel reused in between, or a process that went, is None)."""
    before = read_stat(pid, proc)
    if before is None or before.gone:
        return None
    value = read()
    after = read_stat(pid, proc)
    if after is None or after.gone or after.start_ticks != before.start_ticks:
        return None
    return before.start_ticks, value

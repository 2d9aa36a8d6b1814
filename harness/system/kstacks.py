"""What a process is doing in the kernel, read from /proc: for each of its threads the
state, the system call it is in (by name, with the file its fd argument names), where it
sleeps (wchan) and its kernel stack (function names, /proc/PID/task/TID/stack: root
only), read through harness.core.procfs.

A blocked `rdma link delete` is explained by two views taken at the same moment: the
delete's own stack (which kernel function it waits in, e.g. ib_uverbs_remove_one ->
uverbs_destroy_ufile_hw -> down_write: a holder's uverbs command still running) and
each holder's threads (which call they are in, on which file). Standard library only.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness.core import procfs
from harness.core.errors import ProcError, ProcFormatError
from harness.core.procfs import PROC, SyscallLine

T = TypeVar("T")
# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the calls a
# verbs process or a delete can be found in; others are shown by number
SYSCALLS_X86_64 = {
    0: "read", 1: "write", 3: "close", 7: "poll", 9: "mmap", 11: "munmap", 16: "ioctl",
    23: "select", 35: "nanosleep", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
    47: "recvmsg", 60: "exit", 61: "wait4", 202: "futex", 230: "clock_nanosleep",
    231: "exit_group", 232: "epoll_wait", 257: "openat", 270: "pselect6", 271: "ppoll",
    281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2",
}
# calls whose first argument is a file descriptor: the file it names is shown
FD_SYSCALLS = frozenset({"read", "write", "close", "ioctl", "sendto", "recvfrom", "sendmsg",
                         "recvmsg"})
MAX_THREADS = 64  # threads read per process (a verbs worker has 1-3)
MAX_BLOCKED = 32  # tasks in state D listed by blocked_tasks()


@dataclass(frozen=True)
class ThreadInKernel:
    tid: int
    comm: str
    state: str  # R, S, D, ... (/proc/.../stat); "?" once gone
    syscall: str  # "ioctl", "syscall 999", "running" (in user space), "-" (not in a call)
    fd: int | None  # the call's fd argument, for the calls in FD_SYSCALLS
    file: str  # what that fd names (readlink), "" when none or unreadable
    wchan: str  # where it sleeps, "0"/"" when running
    stack: tuple[str, ...]  # kernel functions, innermost first ("func [module]")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stack"] = list(self.stack)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ThreadInKernel:
        return cls(**{**d, "stack": tuple(d.get("stack") or ())})

    def describe(self) -> str:
        call = self.syscall + (f"(fd {self.fd}: {self.file or '?'})" if self.fd is not None
                               else "")
        where = " <- ".join(self.stack[:4]) or self.wchan or "-"
        return f"tid {self.tid} [{self.state}] in {call} at {where}"


def parse_syscall(text: str, arch: str) -> tuple[str, int | None]:
    """/proc/PID/syscall -> (name, the fd argument or None): "running" (in user space),
    "-" (blocked, not in a system call), "?" (not in the kernel's format)."""
    try:
        return syscall_name(procfs.parse_syscall(text), arch)
    except ProcFormatError:
        return "?", None


def syscall_name(line: SyscallLine | None, arch: str) -> tuple[str, int | None]:
    """A thread's system call by name (x86_64; others by number), with its fd argument for
    the calls in FD_SYSCALLS; ("?", None) when it could not be read."""
    if line is None:
        return "?", None
    if line.running:
        return "running", None
    if line.nr is None:
        return "-", None
    nr = line.nr
    name = SYSCALLS_X86_64.get(nr, f"syscall {nr}") if arch == "x86_64" else f"syscall {nr}"
    fd = line.args[0] if name in FD_SYSCALLS and line.args else None
    return name, fd


def _quiet(read: Callable[..., T | None], *args: Any) -> T | None:
    """What read(*args) gives; None also when the file cannot be read or parsed (this view
    is taken while a delete is stuck: a thread that cannot be read is shown as unknown)."""
    try:
        return read(*args)
    except ProcError:
        return None


def thread_in_kernel(pid: int, tid: int, proc: Path = PROC,
                     arch: str | None = None) -> ThreadInKernel:
    stat = _quiet(procfs.read_task_stat, pid, tid, proc)
    state, comm = (stat.state, stat.comm) if stat is not None else ("?", "")
    name, fd = syscall_name(_quiet(procfs.read_syscall, pid, tid, proc),
                            arch or platform.machine())
    file = "" if fd is None else _quiet(procfs.fd_target, pid, fd, proc) or ""
    return ThreadInKernel(tid, comm, state, name, fd, file,
                          _quiet(procfs.read_wchan, pid, tid, proc) or "",
                          _quiet(procfs.read_kernel_stack, pid, tid, proc) or ())


def process_in_kernel(pid: int, proc: Path = PROC) -> list[ThreadInKernel]:
    """Every thread of `pid` (at most MAX_THREADS); [] when it is gone."""
    tids = _quiet(procfs.tids, pid, proc) or []
    return [thread_in_kernel(pid, t, proc) for t in tids[:MAX_THREADS]]


def blocked_tasks(proc: Path = PROC, limit: int = MAX_BLOCKED) -> list[dict[str, Any]]:
    """Every task in uninterruptible sleep (state D) now, with its process and kernel view:
    what else the kernel is waiting on (a kernel worker, a process that holds no uverbs
    file)."""
    out: list[dict[str, Any]] = []
    for pid in _quiet(procfs.pids, proc) or []:
        for tid in _quiet(procfs.tids, pid, proc) or []:
            stat = _quiet(procfs.read_task_stat, pid, tid, proc)
            if stat is None or stat.state != "D":
                continue
            out.append({"pid": pid, **thread_in_kernel(pid, tid, proc).to_json()})
            if len(out) >= limit:
                return out
    return out

"""What a process is doing in the kernel, read from /proc: for each of its threads the
state, the system call it is in (by name, with the file its fd argument names), where it
sleeps (wchan) and its kernel stack (function names, /proc/PID/task/TID/stack: root
only).

A blocked `rdma link delete` is explained by two views taken at the same moment: the
delete's own stack (which kernel function it waits in, e.g. ib_uverbs_remove_one ->
uverbs_destroy_ufile_hw -> down_write: a holder's uverbs command still running) and
each holder's threads (which call they are in, on which file). Standard library only.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
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


def parse_stack(text: str) -> tuple[str, ...]:
    """/proc/PID/stack -> ("func [module]", ...), innermost first, offsets dropped.
    A line reads `[<0>] ib_uverbs_remove_one+0x4f/0xb0 [ib_uverbs]`."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        func = parts[1].split("+", 1)[0]
        out.append(f"{func} {parts[2]}" if len(parts) > 2 else func)
    return tuple(out)


def parse_syscall(text: str, arch: str) -> tuple[str, int | None]:
    """/proc/PID/syscall -> (name, the fd argument or None). It reads `running`, or
    `-1 SP PC` (blocked, not in a system call), or `NR ARG1 .. ARG6 SP PC` (hex args)."""
    parts = text.split()
    if not parts:
        return "?", None
    if parts[0] == "running":
        return "running", None
    try:
        nr = int(parts[0])
    except ValueError:
        return "?", None
    if nr < 0:
        return "-", None
    name = SYSCALLS_X86_64.get(nr, f"syscall {nr}") if arch == "x86_64" else f"syscall {nr}"
    fd = None
    if name in FD_SYSCALLS and len(parts) > 1:
        try:
            fd = int(parts[1], 16)
        except ValueError:
            fd = None
    return name, fd


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _state_and_comm(stat: str) -> tuple[str, str]:
    if ")" not in stat:
        return "?", ""
    head, tail = stat.rsplit(")", 1)
    fields = tail.split()
    return (fields[0] if fields else "?"), head.split("(", 1)[-1]


def thread_in_kernel(pid: int, tid: int, proc: Path = PROC,
                     arch: str | None = None) -> ThreadInKernel:
    task = proc / str(pid) / "task" / str(tid)
    state, comm = _state_and_comm(_read(task / "stat"))
    name, fd = parse_syscall(_read(task / "syscall"), arch or platform.machine())
    file = ""
    if fd is not None:
        try:
            file = os.readlink(proc / str(pid) / "fd" / str(fd))
        except OSError:
            file = ""
    return ThreadInKernel(tid, comm, state, name, fd, file, _read(task / "wchan").strip(),
                          parse_stack(_read(task / "stack")))


def process_in_kernel(pid: int, proc: Path = PROC) -> list[ThreadInKernel]:
    """Every thread of `pid` (at most MAX_THREADS); [] when it is gone."""
    try:
        tids = sorted(int(t.name) for t in (proc / str(pid) / "task").iterdir()
                      if t.name.isdigit())
    except OSError:
        return []
    return [thread_in_kernel(pid, t, proc) for t in tids[:MAX_THREADS]]


def blocked_tasks(proc: Path = PROC, limit: int = MAX_BLOCKED) -> list[dict[str, Any]]:
    """Every task in uninterruptible sleep (state D) now, with its process and kernel view:
    what else the kernel is waiting on (a kernel worker, a process that holds no uverbs
    file)."""
    out: list[dict[str, Any]] = []
    try:
        pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    except OSError:
        return out
    for pid in pids:
        try:
            tids = [int(t.name) for t in (proc / str(pid) / "task").iterdir()
                    if t.name.isdigit()]
        except OSError:
            continue
        for tid in sorted(tids):
            state, _ = _state_and_comm(_read(proc / str(pid) / "task" / str(tid) / "stat"))
            if state != "D":
                continue
            out.append({"pid": pid, **thread_in_kernel(pid, tid, proc).to_json()})
            if len(out) >= limit:
                return out
    return out

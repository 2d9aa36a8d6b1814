"""A child of ours that runs a Python function in a fork of this process: a Popen.

Under TCG a new interpreter pays its imports again (measured in the guest: 4 client
workers spent about 5 s from spawn to an open device, 2 vCPUs importing pyverbs and
our packages), while a fork has them already. `ForkedPython` is a `subprocess.Popen`
whose child is that fork: the same pid semantics (our child: waitpid, returncode,
signals, the state file's pid and start time), the standard streams and `pass_fds` the
caller asked for. Before the function runs, the child is made to look like a fresh
start:

- every other file descriptor is closed (our run lock, the state file, sockets of the
  peer agent, pytest's capture files: none of them may live on in the child);
- every signal handler is the default again (SIGPIPE ignored and SIGINT raising
  KeyboardInterrupt, as in a new interpreter); the random generator is seeded afresh;
  logging has no handlers (the parent's would capture into memory nobody reads);
- sys.stdout and sys.stderr write to fds 1 and 2, line by line;
- the parent's objects are frozen for the collector (gc.freeze before the fork), so no
  finalizer of the parent's garbage can close a file of the child's, and the child does
  not copy the parent's heap page by page by walking it;
- its command line (what /proc/PID/cmdline and so the holder scan shows) names what it
  runs, not the parent's command.

It never returns into the parent's code: the function's return value is its exit
status, an exception is printed and exits 1, and the exit is os._exit (no atexit
handler, no finalizer of the parent's objects runs in the child).

Only where this Python's Popen has the private method it overrides, with the
arguments of 3.11-3.13 (`fork_supported()`); elsewhere callers start a new interpreter.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import io
import logging
import os
import random
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from harness.core import procfs
from harness.core.errors import ProcError

_EXPECTED = ("self", "args", "executable", "preexec_fn", "close_fds", "pass_fds", "cwd", "env",
             "startupinfo", "creationflags", "shell", "p2cread", "p2cwrite", "c2pread",
             "c2pwrite", "errread", "errwrite", "restore_signals", "gid", "gids", "uid",
             "umask", "start_new_session", "process_group")
_MAX_FD = 65536  # closed up to this (RLIMIT_NOFILE raised by the workers stays below)


def fork_supported() -> bool:
    """True where Popen._execute_child takes the arguments ForkedPython expects."""
    execute = getattr(subprocess.Popen, "_execute_child", None)
    if execute is None or os.name != "posix":
        return False
    return tuple(inspect.signature(execute).parameters) == _EXPECTED


class ForkedPython(subprocess.Popen[Any]):
    """`Popen` whose child runs `target(argv)` in a fork of this process (see above)."""

    def __init__(self, target: Callable[[list[str]], int], argv: Sequence[str], title: str,
                 **popen_kw: Any) -> None:
        self._target, self._argv, self._title = target, list(argv), title
        super().__init__([title, *argv], **popen_kw)

    def _execute_child(self, args: Any, executable: Any, preexec_fn: Any, close_fds: Any,
                       pass_fds: Sequence[int], cwd: Any, env: Any, startupinfo: Any,
                       creationflags: Any, shell: Any, p2cread: int, p2cwrite: int,
                       c2pread: int, c2pwrite: int, errread: int, errwrite: int,
                       restore_signals: Any, gid: Any, gids: Any, uid: Any, umask: Any,
                       start_new_session: Any, process_group: Any) -> None:
        for fh in (sys.stdout, sys.stderr):  # nothing buffered here is written twice
            with contextlib.suppress(OSError, ValueError):
                fh.flush()
        gc.freeze()  # see _fresh_process_state: the child never collects what is here now
        try:
            pid = os.fork()
            if pid == 0:  # the child: never returns
                _child(self._target, self._argv, self._title, p2cread, c2pwrite, errwrite,
                       tuple(pass_fds))
        finally:  # only the parent gets here: the child ends in os._exit
            gc.unfreeze()  # the parent collects as before
        self.pid = pid
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite,  # type: ignore[attr-defined]
                             errread, errwrite)


def _child(target: Callable[[list[str]], int], argv: list[str], title: str, stdin: int,
           stdout: int, stderr: int, pass_fds: tuple[int, ...]) -> None:
    code = 1
    try:
        for fd, want in ((0, stdin), (1, stdout), (2, stderr)):
            if want != -1 and want != fd:
                os.dup2(want, fd)
        keep = sorted({0, 1, 2, *pass_fds})
        for low, high in zip(keep, [*keep[1:], _MAX_FD], strict=True):
            os.closerange(low + 1, high)
        _fresh_process_state()
        set_cmdline(title)
        code = target(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code & 0xFF)


def _fresh_process_state() -> None:
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        want: Any = signal.SIG_DFL
        if sig == signal.SIGPIPE:
            want = signal.SIG_IGN
        elif sig == signal.SIGINT:
            want = signal.default_int_handler
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, want)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    random.seed()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr  # type: ignore[misc]
    # Every object of the parent's was frozen before the fork (gc.freeze): the child's
    # collector never visits them (no copy-on-write of the parent's heap for it) and never
    # finalizes the parent's garbage (a finalizer closing an fd number the child reused
    # would close the child's file). What the child itself drops is finalized while every
    # inherited fd above 2 but pass_fds is already closed.


def set_cmdline(title: str) -> bool:
    """Write `title` over this process's argv area (what /proc/self/cmdline shows, as the
    setproctitle package does), cut to the area's length; False when that cannot be done."""
    try:
        stat = procfs.read_stat("self")
        if stat is None or stat.arg_start is None or stat.arg_end is None:
            return False
        start, end = stat.arg_start, stat.arg_end
        size = end - start
        if size <= 1:
            return False
        raw = title.encode(errors="replace").replace(b" ", b"\0")[: size - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(raw + b"\0" * (size - len(raw)))
        return True
    except (OSError, ValueError, ProcError):
        return False

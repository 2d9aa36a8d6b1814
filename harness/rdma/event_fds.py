"""The event fds pyverbs does not expose, found in /proc/self/fd, and waiting on them.

A completion channel, an async event queue and an rdma_cm event channel each open one
fd when created; pyverbs gives no handle to it. We find it (predicted as the lowest
free fd, or by comparing /proc/self/fd before and after, under FD_LOCK), make it
non-blocking and wait on it with select(), which releases the GIL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import threading
from collections.abc import Callable
from typing import Any

from harness.core import procfs
from harness.core.errors import ProcError, RxePowerError

EVENT_FD_KIND = "anon_inode:[infinibandevent]"
FD_LOCK = threading.Lock()  # serialises fd discovery within this process


def fds_of_kind(kind: str = EVENT_FD_KIND) -> set[int]:
    """Our open fds whose /proc link target is `kind`."""
    return {fd for fd, target in (procfs.fd_targets("self") or {}).items() if target == kind}


def set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def new_event_fd(before: set[int], what: str, kind: str = EVENT_FD_KIND) -> int:
    """The one fd of `kind` that appeared since `before`, made non-blocking."""
    new = fds_of_kind(kind) - before
    if len(new) != 1:
        raise RxePowerError(f"cannot identify the event fd of {what} (found {sorted(new)})",
                            "create verbs objects from one thread at a time")
    fd = new.pop()
    set_nonblocking(fd)
    return fd


def lowest_free_fd() -> int:
    """The fd number the next open() gets (the kernel hands out the lowest free one)."""
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return fd


def predicted_event_fd(guess: int, kind: str = EVENT_FD_KIND) -> int | None:
    """`guess` made non-blocking if it is an fd of `kind`: the object just created took the
    lowest free fd, as predicted (under FD_LOCK). None when it did not (another thread
    opened something): the caller falls back to scanning /proc/self/fd. The scan costs
    O(open fds) per object, which for a peer agent with 1,024 QPs was most of its setup."""
    try:
        if procfs.fd_target("self", guess) != kind:
            return None
    except ProcError:
        return None
    set_nonblocking(guess)
    return guess


def with_event_fd(create: Callable[[], Any], what: str) -> tuple[Any, int]:
    """(obj, its event fd) for an object whose creation opens one event fd: predicted
    (the lowest free fd), or, when another thread got in between, found by scanning."""
    with FD_LOCK:
        guess = lowest_free_fd()
        obj = create()
        fd = predicted_event_fd(guess)
        if fd is not None:
            return obj, fd
        obj.close()
        before = fds_of_kind()
        obj = create()
        return obj, new_event_fd(before, what)


def wait_readable(fd: int, timeout_s: float) -> bool:
    """select() on one fd; releases the GIL while waiting."""
    if timeout_s <= 0:
        timeout_s = 0
    r, _, _ = select.select([fd], [], [], timeout_s)
    return bool(r)


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: every QP has a completion channel fd, and
    the default soft limit (1,024) is below what a 1,024-QP run needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

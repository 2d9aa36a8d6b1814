"""Several commands that each boot a guest, run at once: the engine of `--jobs N`.

    done = run_parallel([Child("1/2", argv1, env1), Child("2/2", argv2, env2)],
                        timeout_s=7200, out=out)     # [Finished(child, exit_code, seconds)]

Each child runs in its own session (its own process group), recorded in the state file
(`rxe-power cleanup` ends its group if all else fails); every line of its merged output is
copied to `out` as it comes, prefixed with its label (`[1/2] ...`). Nothing is left
running, however this process ends:

- killed, even by SIGKILL: each child gets SIGTERM from the kernel when its parent dies
  (PR_SET_PDEATHSIG, set before it runs anything; a parent already gone by then is
  noticed and the child exits at once). A child that runs a guest ends it on SIGTERM
  (harness.vm.process, within GUEST_STOP_TIMEOUT_S) and the rest of its group
  (harness.cli.shard_job);
- a stop signal (SIGTERM, SIGHUP, Ctrl-C), an error here, or `timeout_s` passed: SIGTERM to
  every child's group, CHILD_STOP_GRACE_S for them to end their guests, then SIGKILL.

The death signal comes when the *thread* that started the child ends, so the children are
started from, and waited for in, the calling thread (the main thread of the CLI).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

from harness.core.errors import BoundExceeded
from harness.core.printer import Printer
from harness.core.proc import STOP_GRACE_S, ProcessRef, Stopped, stop_processes
from harness.core.state import track, untrack
from harness.vm.process import (
    GUEST_STOP_TIMEOUT_S,
    READER_DRAIN_BOUND_S,
    STOP_SIGNALS,
    TIMEOUT_EXIT_CODE,
    StopSignal,
    stop_signals_caught,
)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHANED_EXIT = 125  # a child whose parent died before it could ask for its death signal
# SIGTERM -> SIGKILL for a child: time to end its guest (GUEST_STOP_TIMEOUT_S) and itself
CHILD_STOP_GRACE_S = GUEST_STOP_TIMEOUT_S + STOP_GRACE_S
WAIT_POLL_S = 0.2  # how often the waiting loop looks at every child


@dataclass(frozen=True)
class Child:
    """One command to run beside the others: its label (the prefix of its lines), its argv
    and what it adds to this process's environment."""

    label: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    """How one child ended: its exit code (128+N: killed by signal N; TIMEOUT_EXIT_CODE: we
    stopped it at the bound), its seconds from start to end, and how it was stopped when it
    was (None: it ended by itself)."""

    child: Child
    exit_code: int
    seconds: float
    stopped: Stopped | None = None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def dies_with_parent(parent_pid: int, libc: ctypes.CDLL | None = None) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when its parent (`parent_pid`) dies. Loaded
    here, before the fork (the child must not load a library between fork and exec)."""
    lib = libc if libc is not None else _libc()
    prctl = lib.prctl

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0 \
                or os.getppid() != parent_pid:  # no death signal, or the parent is gone
            os._exit(ORPHANED_EXIT)

    return preexec


class _Running:
    """One started child: its process, its output pump, when it started."""

    def __init__(self, child: Child, out: Printer, lock: threading.Lock) -> None:
        self.child = child
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            child.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **child.env}, preexec_fn=dies_with_parent(os.getpid()))
        self.ended: float | None = None
        try:
            track(self.proc, f"--jobs child {child.label}", group=True)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        self.pump = threading.Thread(target=_pump, args=(self.proc.stdout, out, lock,
                                                         f"[{child.label}] "),
                                     name=f"jobs-pump-{child.label}", daemon=True)
        self.pump.start()

    def poll(self) -> bool:
        """True once it has ended (its end time taken then)."""
        if self.ended is None and self.proc.poll() is not None:
            self.ended = time.monotonic()
        return self.ended is not None

    def finish(self, stopped: Stopped | None = None) -> Finished:
        """Its end, once it is gone (or left after SIGKILL: then as killed, and kept on the
        state file's record for `rxe-power cleanup`)."""
        self.pump.join(READER_DRAIN_BOUND_S)
        if self.proc.stdout is not None and not self.pump.is_alive():
            self.proc.stdout.close()
        code = self.proc.returncode
        if code is None:
            exit_code = 128 + int(signal.SIGKILL)
        else:
            untrack(self.proc.pid)
            exit_code = 128 - code if code < 0 else code
        end = self.ended if self.ended is not None else time.monotonic()
        return Finished(self.child, exit_code, end - self.started, stopped)


def _pump(stream: IO[bytes] | None, out: Printer, lock: threading.Lock, prefix: str) -> None:
    if stream is None:
        return
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        with lock, contextlib.suppress(OSError, ValueError):  # our stdout went away
            out(prefix + line)


def _stop_all(running: Sequence[_Running]) -> dict[int, Stopped]:
    """SIGTERM to every child's group still there, CHILD_STOP_GRACE_S, SIGKILL; each reaped.
    Further stop signals meanwhile are ignored (a second Ctrl-C must not cut this short)."""
    refs = [r for r in (ProcessRef.now(run.proc.pid, group=True) for run in running
                        if not run.poll()) if r is not None]
    ignoring = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS} if ignoring else {}
    try:
        how = stop_processes(refs, grace_s=CHILD_STOP_GRACE_S) if refs else {}
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
    for run in running:
        if how.get(run.proc.pid, Stopped.EXITED).gone:
            run.proc.wait()  # gone by now: at once
            run.poll()
    return how


def run_parallel(children: Sequence[Child], timeout_s: float, out: Printer,
                 bound_name: str = "timeout_s") -> list[Finished]:
    """Run `children` at once and wait for all of them (see the module's docstring). A
    child still running after `timeout_s` is stopped (exit TIMEOUT_EXIT_CODE) and the
    bound said to `out` with what was outstanding. A stop signal stops them all and is
    raised again (StopSignal) once they are gone."""
    lock = threading.Lock()
    running: list[_Running] = []
    with stop_signals_caught() as stops:
        try:
            for child in children:
                running.append(_Running(child, out, lock))
            stops.arm()
            deadline = time.monotonic() + timeout_s
            while not all(run.poll() for run in running) and time.monotonic() < deadline:
                time.sleep(WAIT_POLL_S)
        except BaseException:  # a stop signal or an error here: end every child first
            _stop_all(running)
            raise
        late = [run for run in running if not run.poll()]
        if late:
            with lock:
                out(BoundExceeded("the shards", bound_name, timeout_s, ", ".join(
                    f"{run.child.label} (pid {run.proc.pid})" for run in late)).problem
                    + "; they are stopped")
        how = _stop_all(late)
    done = []
    for run in running:
        stopped = how.get(run.proc.pid) if run in late else None
        fin = run.finish(stopped)
        done.append(Finished(fin.child, TIMEOUT_EXIT_CODE, fin.seconds, stopped)
                    if run in late else fin)
    return done


__all__ = ["CHILD_STOP_GRACE_S", "Child", "Finished", "StopSignal", "dies_with_parent",
           "run_parallel"]

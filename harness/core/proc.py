"""Processes: start a child on the record, stop any process within bounds, and end what a
dead run left.

Every long-lived child (peer agent, client workers, async event reader, the VM) is
started with `spawn` (or recorded with `state.track`), which writes it into the state
file with its start time. Stopping is one procedure for all of them (`stop_processes`):
SIGTERM, up to STOP_GRACE_S for it to go, SIGKILL, up to GONE_TIMEOUT_S. A process
still there after that is uninterruptible in the kernel (D state): it is left and
reported, never waited on without a bound. A process is signalled only while its pid
*and* start time match the record, so a pid the kernel reused is never signalled.

`reap_stale` ends every recorded process whose owner (the run that started it) is
dead; every setup starts with it, and so does `rxe-power cleanup`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.core.errors import BoundExceeded
from harness.core.forked import ForkedPython, fork_supported
from harness.core.printer import NULL, Printer
from harness.core.state import Entry, StateFile, alive, process_start, track, untrack

STOP_GRACE_S = 3.0  # SIGTERM -> SIGKILL: the one grace every stop gives a process
GONE_TIMEOUT_S = 3.0  # SIGKILL -> gone; still there then: uninterruptible (D state), left
STOP_POLL_S = 0.02  # polling interval of the bounded waits above
RUN_DIR = Path("/run/rxe-power")  # the only place reap_stale removes recorded directories


class Stopped(StrEnum):
    """How the stop of one process ended."""

    ALREADY_GONE = "already gone"  # before any signal (or its pid is another process now)
    EXITED = "exited"  # by itself, within the wait it was given before any signal
    SIGTERM = "SIGTERM"  # went within the grace after SIGTERM
    SIGKILL = "SIGKILL"  # went after SIGKILL
    SURVIVED = "survived SIGKILL"  # still there GONE_TIMEOUT_S after SIGKILL: left alone

    @property
    def gone(self) -> bool:
        return self is not Stopped.SURVIVED


@dataclass(frozen=True)
class ProcessRef:
    """One process as recorded: its pid and its start time (clock ticks since boot)."""

    pid: int
    start: float
    group: bool = False  # it leads its own process group: signals go to the whole group

    @classmethod
    def now(cls, pid: int, group: bool = False) -> ProcessRef | None:
        """The process that has `pid` now; None when there is none."""
        start = process_start(pid)
        return None if start is None else cls(pid, start, group)

    def present(self) -> bool:
        """Is the recorded process still there (a zombie is not)?"""
        return process_start(self.pid) == self.start

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig`, but only to the recorded process (checked just before)."""
        if not self.present():
            return
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(refs: Sequence[ProcessRef], timeout_s: float) -> list[ProcessRef]:
    """Wait up to `timeout_s` for every process to go; the ones still there."""
    deadline = time.monotonic() + timeout_s
    while (left := [r for r in refs if r.present()]) and time.monotonic() < deadline:
        time.sleep(STOP_POLL_S)
    return left


def stop_processes(
    refs: Sequence[ProcessRef],
    *,
    exit_wait_s: float = 0.0,
    grace_s: float = STOP_GRACE_S,
    gone_timeout_s: float = GONE_TIMEOUT_S,
    terminate: Callable[[ProcessRef], None] | None = None,
) -> dict[int, Stopped]:
    """Stop processes together: up to `exit_wait_s` for them to exit by themselves (they
    were asked to), SIGTERM (or `terminate(ref)`), up to `grace_s`, SIGKILL, up to
    `gone_timeout_s`. Returns how each pid ended; one that survived SIGKILL is left."""
    out = {r.pid: Stopped.ALREADY_GONE for r in refs if not r.present()}
    left = [r for r in refs if r.pid not in out]
    if exit_wait_s > 0 and left:
        still = _wait_gone(left, exit_wait_s)
        out |= {r.pid: Stopped.EXITED for r in left if r not in still}
        left = still
    for r in left:
        (terminate or (lambda ref: ref.signal(signal.SIGTERM)))(r)
    still = _wait_gone(left, grace_s)
    out |= {r.pid: Stopped.SIGTERM for r in left if r not in still}
    left = still
    for r in left:
        r.signal(signal.SIGKILL)
    still = _wait_gone(left, gone_timeout_s)
    out |= {r.pid: Stopped.SIGKILL for r in left if r not in still}
    out |= {r.pid: Stopped.SURVIVED for r in still}
    return out


def kill_bounded(proc: subprocess.Popen[Any]) -> str:
    """SIGKILL a child of ours and give it GONE_TIMEOUT_S to go, never more: a child stuck
    in the kernel (D state, what a blocked delete is) cannot die, and waiting for it
    without a bound would hang us with it. Returns "" once it is gone, else a note for
    the caller's report (the child is left)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    try:
        proc.wait(timeout=GONE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return (f"pid {proc.pid} did not die within GONE_TIMEOUT_S={GONE_TIMEOUT_S:g}s of "
                "SIGKILL (stuck in the kernel?) and was left")
    return ""


def run_bounded(argv: Sequence[str], timeout_s: float, *, step: str, bound_name: str,
                outstanding: str, capture: bool = True,
                **popen_kw: Any) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(argv, timeout=timeout_s)` whose bound holds however the child ends.

    subprocess.run kills a child that overran its timeout and then waits for it and for
    its output without a bound: forever for a child stuck in the kernel, or while a
    grandchild keeps its pipes open. Here the child gets SIGKILL (kill_bounded) and its
    pipes are closed; BoundExceeded(step, bound_name, ...) says what was outstanding and
    whether the child was left."""
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe,
                            text=True, **popen_kw)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        left = kill_bounded(proc)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        raise BoundExceeded(step, bound_name, timeout_s,
                            f"{outstanding}; it was killed{'; ' + left if left else ''}"
                            ) from None
    return subprocess.CompletedProcess(list(argv), proc.returncode, out or "", err or "")


# Children start without `site` (-S): it costs about a second per Python start under TCG
# (measured in the guest: `import site` 1.2-1.3 s, its .pth files and sitecustomize; a bare
# start 0.36 s with -S), and the suite starts well over a hundred children. The child's
# import path is handed over explicitly instead: our packages' root, then this process's
# own path (its site directories included), never '' or the working directory.
_CHILD_BOOT = ("import runpy, sys; sys.path[:0] = sys.argv.pop(1).split(sys.argv.pop(1)); "
               "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")
PACKAGES_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds harness/


def child_import_path() -> list[str]:
    """What a child of ours imports from (besides the standard library): the folder of
    our packages, then the directories on this process's path, minus '' and the cwd."""
    cwd = os.getcwd()
    path = [str(PACKAGES_ROOT)]
    for entry in sys.path:
        if entry and entry != cwd and entry not in path and os.path.isdir(entry):
            path.append(entry)
    return path


def python_child(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args` in a child of ours: with -P, so the
    child's sys.path never starts with its working directory. Root runs this tool, often
    from a folder someone else can write: a `harness/` or `clients/` planted there must
    never be imported in place of ours. Our packages come from the installed tree (the
    folder of the harness package this process runs); a user's own policy module is
    handed over explicitly (clients.userspace.worker --import-root). Without `site` (-S), with the
    path of child_import_path: see _CHILD_BOOT."""
    return [sys.executable, "-P", "-S", "-c", _CHILD_BOOT, os.pathsep.join(child_import_path()),
            os.pathsep, module, *args]


def spawn_python(main: Callable[[list[str]], int], module: str, args: list[str], role: str,
                 **popen_kw: Any) -> subprocess.Popen[Any]:
    """A child of ours that runs `main(args)` of `module`, recorded under `role`: a fork of
    this process where harness.core.forked can make one (its imports are done already:
    seconds per child under TCG), else a new interpreter (`python_child(module, *args)`)."""
    if not fork_supported():
        return spawn(python_child(module, *args), role, **popen_kw)
    title = f"python -m {module} (forked from pid {os.getpid()}) {' '.join(args)}"
    return _tracked(ForkedPython(main, args, title, **popen_kw), role)


def spawn(argv: list[str], role: str, **popen_kw: Any) -> subprocess.Popen[Any]:
    """Popen, recorded in the state file under `role`."""
    return _tracked(subprocess.Popen(argv, **popen_kw), role)


def _tracked(proc: subprocess.Popen[Any], role: str) -> subprocess.Popen[Any]:
    """`proc` recorded in the state file under `role`; killed if it cannot be recorded."""
    try:
        track(proc, role)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def stop_child(
    proc: subprocess.Popen[Any],
    exit_wait_s: float,
    *,
    grace_s: float = STOP_GRACE_S,
    group: bool = False,
    terminate: Callable[[ProcessRef], None] | None = None,
) -> Stopped:
    """Stop a child we started (`stop_processes`), reap it, and take it off the state
    file's record once it is gone. One that survived SIGKILL stays on the record (the
    next cleanup tries again) and is not reaped: the caller reports it."""
    ref = ProcessRef.now(proc.pid, group)
    how = Stopped.EXITED if ref is None else stop_processes(
        [ref], exit_wait_s=exit_wait_s, grace_s=grace_s, terminate=terminate)[proc.pid]
    if how is Stopped.ALREADY_GONE:
        how = Stopped.EXITED  # our own child: it cannot have been replaced before reaping
    if how.gone:
        proc.wait()  # a zombie by now: returns at once
        untrack(proc.pid)
    return how


def end_recorded(entry: Entry, out: Printer = NULL) -> str | None:
    """Stop the process a state file entry records (its group if it leads one).
    Returns a problem, or None once it is gone (or was never there)."""
    pid = int(entry["pid"])
    how = stop_processes([ProcessRef(pid, entry["start"], bool(entry.get("group")))])[pid]
    if how is Stopped.SURVIVED:
        return (f"{entry['role']} pid {pid} survived SIGKILL for {GONE_TIMEOUT_S:g} s "
                "(uninterruptible in the kernel?)")
    if how is not Stopped.ALREADY_GONE:
        out(f"ended {entry['role']} pid {pid} ({how.value})")
    return None


def reap_stale(out: Printer = NULL, state_path: Path | None = None) -> list[str]:
    """End every recorded process, and remove every recorded directory, whose owner is
    dead. Returns the problems left (a process that would not die)."""
    state = StateFile.load(state_path)
    problems = list(state.problems)  # malformed entries: reported, never acted on
    for entry in state.created:
        if entry["kind"] not in ("process", "dir") or alive(entry.get("owner")):
            continue
        if entry["kind"] == "process":
            problem = end_recorded(entry, out)
            if problem:
                problems.append(problem)
                continue
        else:
            problem = remove_recorded_dir(Path(entry["path"]), out)
            if problem:
                problems.append(problem)
                continue
        state.forget(**entry)
    return problems


def remove_recorded_dir(path: Path, out: Printer = NULL) -> str | None:
    """Remove a directory a dead run recorded, only if it really lies under RUN_DIR: the
    path is resolved first (no `..`, no symlink anywhere on it leads out), and a symlink
    is never followed. Returns a problem, or None once it is gone."""
    run_dir = RUN_DIR.resolve()
    real = path.resolve()
    if path.is_symlink() or real == run_dir or not real.is_relative_to(run_dir):
        return (f"state file entry dir {path} (really {real}) lies outside {run_dir} or "
                "leads there through a symlink or '..': not removed; check it, then remove "
                "the entry from the state file")
    if real.exists():
        shutil.rmtree(real, ignore_errors=True)  # rmtree itself never follows a symlink
        out(f"removed {real}")
    return None

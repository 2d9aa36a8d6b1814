"""A bounded process group with its output logged: the runner under every guest boot.

A waiter thread enforces the bound, leaves before parents are signalled (so each parent
reaps its child), then SIGKILL to what is left; the merged output goes to a console log
and to the terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from harness.core import procfs
from harness.core.errors import ProcError
from harness.core.files import open_new
from harness.core.proc import GONE_TIMEOUT_S, STOP_GRACE_S, stop_child
from harness.core.state import track, untrack
from harness.vm.messages import say

GROUP_GONE_BOUND_S = 2.0  # how long to wait for SIGKILLed group members to vanish
READER_DRAIN_BOUND_S = 5.0  # how long to wait for the output pipe to close after exit

# a stop signal to the runner -> guest gone: SIGTERM to qemu, its grace, SIGKILL to the
# group, the wait for it to vanish, the wait for stragglers
GUEST_STOP_TIMEOUT_S = STOP_GRACE_S + GONE_TIMEOUT_S + GROUP_GONE_BOUND_S
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

TIMEOUT_EXIT_CODE = 124  # as coreutils timeout(1)
HARNESS_ERROR_EXIT_CODE = 125  # the runner itself failed (as timeout(1) does)


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_tree(pgid: int) -> dict[int, int]:
    """Live (non-zombie) processes in process group `pgid`: {pid: parent pid}, from /proc."""
    tree: dict[int, int] = {}
    for pid in procfs.pids():
        try:
            stat = procfs.read_stat(pid)
        except ProcError:
            continue
        if stat is not None and stat.state != "Z" and stat.pgrp == pgid:
            tree[pid] = stat.ppid
    return tree


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    return sorted(_group_tree(pgid))


def terminate_leaves(pgid: int) -> None:
    """SIGTERM the group's leaf processes (qemu), not their parents (vng, virtme-run).

    Each parent then sees its child exit, reaps it and exits in turn, so nothing is
    orphaned as a zombie for init to collect. Signalling the whole group at once kills
    vng and virtme-run before they reap qemu.
    """
    tree = _group_tree(pgid)
    parents = set(tree.values())
    leaves = [pid for pid in tree if pid not in parents and pid != pgid] or [pgid]
    for pid in leaves:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


def kill_stragglers(pgid: int) -> None:
    """SIGKILL what is left of the group (e.g. qemu after vng died) and wait it out."""
    signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + GROUP_GONE_BOUND_S
    while (left := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    if left:
        say(f"processes {left} of group {pgid} survived SIGKILL for {GROUP_GONE_BOUND_S:g} s")


class StopSignal(BaseException):
    """A stop signal (SIGTERM, SIGHUP, SIGINT) arrived while a guest ran. Raised after
    the guest was ended; the command exits 128 + signum, as if the signal had killed it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """SIGTERM/SIGHUP/SIGINT, caught while a guest runs (their default would end this
    process at once and orphan the guest). Until `arm()` a signal is held back (the
    guest is still being started: there is nothing to end yet); armed, it raises
    StopSignal in the main thread. Outside the main thread: nothing is caught."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.armed = False

    def handler(self, signum: int, _frame: object) -> None:
        if self.armed:
            raise StopSignal(signum)
        self.pending = self.pending or signum

    def arm(self) -> None:
        self.armed = True
        if self.pending is not None:
            raise StopSignal(self.pending)


@contextlib.contextmanager
def stop_signals_caught() -> Iterator[StopSignals]:
    stops = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stops
        return
    old = {sig: signal.signal(sig, stops.handler) for sig in STOP_SIGNALS}
    try:
        yield stops
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def end_guest(proc: subprocess.Popen[bytes], why: str, kill_grace_s: float) -> None:
    """End a guest (its process group) now, within GUEST_STOP_TIMEOUT_S, and say so.
    Further stop signals meanwhile are ignored: a second Ctrl-C must not cut this short."""
    ignoring = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS} if ignoring else {}
    t0 = time.monotonic()
    try:
        members = _group_members(proc.pid)
        stop_child(proc, 0.0, grace_s=kill_grace_s, group=True,
                   terminate=lambda ref: terminate_leaves(ref.pid))
        kill_stragglers(proc.pid)
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
    left = _group_members(proc.pid)
    took = time.monotonic() - t0
    with contextlib.suppress(OSError):  # stderr gone (a --jobs shard whose controller died)
        _say_ended(why, proc.pid, members, left, took)


def _say_ended(why: str, pgid: int, members: list[int], left: list[int], took: float) -> None:
    if left:
        say(f"{why}: the guest's processes {left} (group {pgid}) are still there after "
            f"{took:.1f} s (bound GUEST_STOP_TIMEOUT_S={GUEST_STOP_TIMEOUT_S:g} s); "
            "rxe-power cleanup ends them")
    else:
        say(f"{why}: ended the guest (processes {members}, group {pgid}) in {took:.1f} s "
            f"(bound GUEST_STOP_TIMEOUT_S={GUEST_STOP_TIMEOUT_S:g} s)")


@dataclass
class RunOutcome:
    exit_code: int
    timed_out: bool
    duration_s: float
    poweroff_hung: bool = False  # the command exited (its mark), the guest did not go


GUEST_POWEROFF_TIMEOUT_S = 30.0  # the guest command's exit mark -> the guest gone by itself
WAIT_TICK_S = 0.5  # the waiter's look at the exit mark (a bounded wait, not a pacing sleep)


class ExitMark:
    """The guest command's exit as its last line says: `TAG CODE`, TAG with a token made
    per boot (harness.vm.runner), so no other output passes for it. After it, the guest's
    init powers the kernel off; a kernel whose device shutdown hangs (a task stuck in the
    kernel holds a device: measured with an nvme controller wedged in `connecting`) would
    keep the guest up until the run's whole bound: the waiter ends it
    GUEST_POWEROFF_TIMEOUT_S after the mark instead, with the command's own code."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.code: int | None = None
        self.seen_at: float | None = None

    def feed(self, line: str) -> None:
        if self.seen_at is None and line.startswith(self.tag):
            word = line[len(self.tag):].strip()
            if word.isdigit() and len(word) <= 3:
                self.code, self.seen_at = int(word), time.monotonic()


def run_logged(
    argv: list[str],
    *,
    log_path: Path,
    timeout_s: float,
    header: Iterable[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    kill_grace_s: float = STOP_GRACE_S,
    echo: IO[str] | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
    exit_mark: ExitMark | None = None,
    poweroff_timeout_s: float = GUEST_POWEROFF_TIMEOUT_S,
) -> RunOutcome:
    """Run `argv` in its own session; copy its merged output to `echo` and `log_path`.

    A waiter thread enforces `timeout_s`: SIGTERM to the group's leaf processes (so
    each parent reaps its child), then SIGKILL to the whole process group if the leader
    is still alive after `kill_grace_s`; then SIGKILL to any stragglers. A timeout gives
    exit code 124; death by signal N gives 128+N. `on_start(proc)` hears of the process
    as soon as it runs (harness.vm.guardian watches it). `exit_mark`: the guest command's
    exit line; once seen, the guest has `poweroff_timeout_s` to end before it is ended
    (ExitMark) and the outcome carries the command's code.
    """
    out = echo if echo is not None else sys.stdout
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open_new(log_path, errors="replace", buffering=1) as log:
        for line in header:
            log.write(f"# {line}\n")
        with stop_signals_caught() as stops:
            start = time.monotonic()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
            track(proc, f"vm ({Path(argv[0]).name})", group=True)  # cleanup ends its group
            if on_start is not None:
                on_start(proc)
            timed_out, hung = threading.Event(), threading.Event()

            def wait() -> None:
                deadline = start + timeout_s
                while True:
                    limit = deadline
                    if exit_mark is not None and exit_mark.seen_at is not None:
                        limit = min(limit, exit_mark.seen_at + poweroff_timeout_s)
                    try:
                        proc.wait(timeout=max(0.0, min(limit - time.monotonic(), WAIT_TICK_S)))
                        break
                    except subprocess.TimeoutExpired:
                        if time.monotonic() < limit:
                            continue
                    (timed_out if limit == deadline else hung).set()
                    stop_child(proc, 0.0, grace_s=kill_grace_s, group=True,
                               terminate=lambda ref: terminate_leaves(ref.pid))
                    break
                kill_stragglers(proc.pid)

            def pump() -> None:
                assert proc.stdout is not None
                echoing = True
                for raw in iter(proc.stdout.readline, b""):
                    line = raw.decode("utf-8", "replace").replace("\r\n", "\n")
                    if exit_mark is not None:
                        exit_mark.feed(line)
                    with contextlib.suppress(ValueError):  # log closed after the drain bound
                        log.write(line)
                    if echoing:
                        try:
                            out.write(line)
                            out.flush()
                        except (OSError, ValueError):  # our stdout went away; keep logging
                            echoing = False

            waiter = threading.Thread(target=wait, name="vm-waiter", daemon=True)
            reader = threading.Thread(target=pump, name="vm-reader", daemon=True)
            reader.start()
            waiter.start()
            try:
                stops.arm()
                waiter.join()
            except StopSignal as stop:  # SIGTERM, SIGHUP, Ctrl-C: do not leave a guest behind
                end_guest(proc, f"{signal.Signals(stop.signum).name}", kill_grace_s)
                log.write(f"# stopped by {signal.Signals(stop.signum).name}: guest ended\n")
                raise
            except BaseException:  # anything else: do not leave a guest behind either
                end_guest(proc, "interrupted", kill_grace_s)
                raise
        duration = time.monotonic() - start
        untrack(proc.pid)
        reader.join(READER_DRAIN_BOUND_S)
        if proc.stdout is not None and not reader.is_alive():
            proc.stdout.close()
        code = proc.returncode
        if hung.is_set() and exit_mark is not None and exit_mark.code is not None:
            exit_code = exit_mark.code
            log.write(f"# the guest's command exited {exit_code}, and its kernel did not power "
                      f"off within GUEST_POWEROFF_TIMEOUT_S={poweroff_timeout_s:g} s (a "
                      "device shutdown held by a task stuck in the kernel?): ended by us\n")
            say(f"the guest's command exited {exit_code}, but its kernel did not power off "
                f"within GUEST_POWEROFF_TIMEOUT_S={poweroff_timeout_s:g} s: ended by us")
        elif timed_out.is_set():
            exit_code = TIMEOUT_EXIT_CODE
        elif code < 0:
            exit_code = 128 - code
        else:
            exit_code = code
        log.write(
            f"# finished: {'TIMED OUT, ' if timed_out.is_set() else ''}exit code {exit_code} "
            f"after {duration:.1f} s\n"
        )
    return RunOutcome(exit_code, timed_out.is_set(), duration, hung.is_set())

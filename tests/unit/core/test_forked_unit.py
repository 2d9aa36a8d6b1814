"""harness.core.forked: a child that runs a function in a fork of this process, as a Popen.

Real forks on this host: what the child keeps (the fds it was given, fresh signal
handlers, its own command line), what it never does (run the parent's atexit handlers),
and that the parent sees an ordinary child (exit status, signals, wait).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core import forked, proc

WAIT_S = 30.0  # a forked child's whole life in these tests

pytestmark = pytest.mark.skipif(not forked.fork_supported(),
                                reason="this Python's Popen has no _execute_child to fork")


def report(argv: list[str]) -> int:
    """Writes what it sees to stdout, one fact a line; exits with argv[0]."""
    print("argv", " ".join(argv))
    print("sigterm", "default" if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else "set")
    for fd in (int(a) for a in argv[1:]):
        try:
            os.fstat(fd)
            print("fd", fd, "open")
        except OSError:
            print("fd", fd, "closed")
    return int(argv[0])


def wait_for_a_line(argv: list[str]) -> int:
    with os.fdopen(int(argv[0]), "rb") as r:
        r.readline()
    return 0


def fail(argv: list[str]) -> int:
    raise RuntimeError("planned failure in the child")


def test_the_child_runs_the_function_with_its_streams_and_only_the_given_fds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = signal.signal(signal.SIGTERM, lambda *a: None)  # the parent's own handler
    try:
        kept_r, kept_w = os.pipe()
        other = os.open(tmp_path, os.O_RDONLY)
        with open(tmp_path / "out", "w") as out:
            p = forked.ForkedPython(report, ["7", str(kept_r), str(other)], "python -m x",
                                    pass_fds=[kept_r], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        assert p.wait(WAIT_S) == 7 and p.returncode == 7
    finally:
        signal.signal(signal.SIGTERM, old)
        for fd in (kept_r, kept_w, other):
            os.close(fd)
    lines = (tmp_path / "out").read_text().splitlines()
    assert lines == [f"argv 7 {kept_r} {other}", "sigterm default", f"fd {kept_r} open",
                     f"fd {other} closed"]


def test_the_child_shows_its_own_command_line_and_dies_of_a_signal_like_any_child(
        tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        p = forked.ForkedPython(wait_for_a_line, [str(r)], "python -m clients.worker --fd 9",
                                pass_fds=[r], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        cmdline = b""
        while b"clients.worker" not in cmdline and time.monotonic() < deadline:
            cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
            time.sleep(0.01)  # polling interval of a bounded wait
        words = [c.decode() for c in cmdline.split(b"\0") if c]
        assert words == ["python", "-m", "clients.worker", "--fd", "9"], words
        p.send_signal(signal.SIGTERM)
        assert p.wait(WAIT_S) == -signal.SIGTERM
    finally:
        os.close(r)
        os.close(w)


def test_an_exception_exits_1_with_its_traceback_and_no_atexit_handler_runs(
        tmp_path: Path) -> None:
    marker = tmp_path / "atexit-ran"
    handler = atexit.register(marker.write_text, "parent's handler ran in the child")
    try:
        with open(tmp_path / "err", "w") as err:
            p = forked.ForkedPython(fail, [], "python -m fail", stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=subprocess.STDOUT)
        assert p.wait(WAIT_S) == 1
    finally:
        atexit.unregister(handler)
    assert "RuntimeError: planned failure in the child" in (tmp_path / "err").read_text()
    assert not marker.exists()


def test_spawn_python_forks_where_it_can_else_starts_a_new_interpreter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    monkeypatch.setattr(proc, "track", lambda p, role, group=False: seen.append((p, role)))
    p = proc.spawn_python(report, "tests.x", ["0"], "a test child", stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL)
    assert isinstance(p, forked.ForkedPython) and p.wait(WAIT_S) == 0
    monkeypatch.setattr(proc, "fork_supported", lambda: False)
    argv: list[list[str]] = []

    class Recorder:
        def __init__(self, a: list[str], **kw: object) -> None:
            argv.append(a)
            self.pid = os.getpid()

    monkeypatch.setattr(proc.subprocess, "Popen", Recorder)
    proc.spawn_python(report, "tests.x", ["0"], "a test child")
    assert argv == [proc.python_child("tests.x", "0")]
    assert argv[0][:3] == [sys.executable, "-P", "-S"]
    assert [role for _, role in seen] == ["a test child", "a test child"]

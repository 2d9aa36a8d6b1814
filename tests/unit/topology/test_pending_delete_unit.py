"""A pending delete is one the state file records, never a look-alike command line
(issue 17, defect 5): any user could run a process whose command line ends in
`rdma link delete rxe0` and so block every transition, recover and cleanup."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.core import state
from harness.core.state import StateFile, process_start
from harness.topology import devices

LOOK_ALIKE_TIMEOUT_S = 30.0


@pytest.fixture
def look_alike() -> Iterator[subprocess.Popen[bytes]]:
    """A process anyone could start: its command line ends in `rdma link delete rxe0`."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; print(flush=True); "
                             "time.sleep(30)", "rdma", "link", "delete", "rxe0"],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # it has exec'd and runs: its command line is in /proc
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=LOOK_ALIKE_TIMEOUT_S)


def test_a_look_alike_process_is_not_a_pending_delete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        look_alike: subprocess.Popen[bytes]) -> None:
    monkeypatch.setattr(state, "STATE_PATH", tmp_path / "state.json")
    cmdline = Path(f"/proc/{look_alike.pid}/cmdline").read_bytes()
    assert cmdline.endswith(b"rdma\0link\0delete\0rxe0\0")  # what the old check matched
    assert devices.pending_deletes("rxe0") == []


def test_a_recorded_delete_is_pending_while_that_process_lives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        look_alike: subprocess.Popen[bytes]) -> None:
    path = tmp_path / "state.json"
    monkeypatch.setattr(state, "STATE_PATH", path)
    start = process_start(look_alike.pid)
    StateFile.load(path).record("delete", dev="rxe0", pid=look_alike.pid, start=start)
    StateFile.load(path).record("delete", dev="rxe0", pid=look_alike.pid, start=start - 1)
    assert devices.pending_deletes("rxe0") == [look_alike.pid]  # the reused-pid one is not
    assert devices.pending_deletes("rxe1") == []
    look_alike.kill()
    look_alike.wait(timeout=LOOK_ALIKE_TIMEOUT_S)
    assert devices.pending_deletes("rxe0") == []
    assert [e for e in StateFile.load(path).created if e["kind"] == "delete"] == []

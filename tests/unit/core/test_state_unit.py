"""The state file's ownership records and the cleanup of what a dead run left: any host."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core import proc, state
from harness.core.errors import TopologyError
from harness.core.printer import RecordingPrinter


@pytest.fixture
def state_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "topology.json"
    monkeypatch.setattr(state, "STATE_PATH", path)
    monkeypatch.setattr(proc, "RUN_DIR", tmp_path)
    return path


def dead_owner() -> dict:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = {"pid": p.pid, "start": state.process_start(p.pid)}
    p.wait()
    return owner


def test_owner_identity_is_pid_and_start_time() -> None:
    me = state.me()
    assert me["pid"] == os.getpid() and state.alive(me)
    assert not state.alive({**me, "start": me["start"] + 1})  # a reused pid is not us
    assert not state.alive(dead_owner()) and not state.alive(None)


def test_record_forget_ignore_bookkeeping(state_path: Path) -> None:
    st = state.StateFile.load()
    st.record("netdev", keep=True, name="rxpw0", peer="rxpw0s")
    st.record("netdev", name="rxpw0", peer="rxpw0s")  # idempotent, whatever the owner
    (entry,) = state.StateFile.load().created
    assert entry["owner"] == state.me() and entry["keep"] is True
    assert st.has("netdev", name="rxpw0", peer="rxpw0s") and st.owns_netdev("rxpw0s")
    st.forget(**entry)
    assert state.StateFile.load().created == []


def _record_many(path: str, tag: str) -> None:
    state.STATE_PATH = Path(path)
    for i in range(30):
        state.StateFile.load().record("dir", path=f"/run/rxe-power/{tag}-{i}")


def test_concurrent_records_are_not_lost(state_path: Path) -> None:
    """Two processes recording at once: the lock makes every entry survive."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(str(state_path), t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert len(state.StateFile.load().created) == 60


def test_spawn_records_and_stop_child_forgets(state_path: Path) -> None:
    child = proc.spawn(["sleep", "30"], "test sleeper")
    (entry,) = state.StateFile.load().processes()
    assert entry["pid"] == child.pid and entry["role"] == "test sleeper"
    assert entry["start"] == state.process_start(child.pid)
    assert proc.stop_child(child, 0.1) is proc.Stopped.SIGTERM
    assert state.StateFile.load().processes() == []


def test_reap_stale_ends_only_what_a_dead_owner_left(state_path: Path, tmp_path: Path) -> None:
    orphan = subprocess.Popen(["sleep", "30"])
    bystander = subprocess.Popen(["sleep", "30"])  # its pid is recorded with a wrong start
    live = subprocess.Popen(["sleep", "30"])  # recorded by a live owner: a running run's
    gone_owner = dead_owner()
    leftover_dir = tmp_path / "clients-1"
    leftover_dir.mkdir()
    body = {"schema": 1, "config": {}, "created": [
        {"kind": "process", "pid": orphan.pid, "start": state.process_start(orphan.pid),
         "role": "client worker", "owner": gone_owner},
        {"kind": "process", "pid": bystander.pid, "start": 1.0, "role": "reused pid",
         "owner": gone_owner},
        {"kind": "process", "pid": live.pid, "start": state.process_start(live.pid),
         "role": "peer agent", "owner": state.me()},
        {"kind": "dir", "path": str(leftover_dir), "owner": gone_owner},
        {"kind": "netdev", "name": "rxpw0", "peer": "rxpw0s", "owner": gone_owner}]}
    state_path.write_text(json.dumps(body))
    logs: list[str] = []
    try:
        assert proc.reap_stale(RecordingPrinter(lines=logs)) == []
        assert orphan.wait(5) == -15  # SIGTERM was enough
        assert bystander.poll() is None and live.poll() is None
        assert not leftover_dir.exists()
        kinds = [(e["kind"], e.get("role")) for e in state.StateFile.load().created]
        assert kinds == [("process", "peer agent"), ("netdev", None)]
        assert any(f"client worker pid {orphan.pid}" in m for m in logs)
    finally:
        for p in (orphan, bystander, live):
            p.kill()
            p.wait()


def test_corrupt_state_file_is_a_clear_error(state_path: Path) -> None:
    state_path.write_text('{"schema": 1, "created": 42}')  # a bad entry alone: skipped
    with pytest.raises(TopologyError, match="unreadable or corrupt") as exc:
        state.StateFile.load()
    assert f"rm {state_path}" in exc.value.fix


def test_tracer_work_dirs_are_recorded_and_a_dead_runs_are_reaped(state_path: Path) -> None:
    """The tracer's log folders (matrix --client-cmd, the tracer bench) live under the run
    directory and are in the state file while they exist: a run killed with one in place
    leaves it to `cleanup` (reap_stale), not in /tmp for ever."""
    from clients.tracer.traced import recorded_work_dir

    with recorded_work_dir("trace") as work:
        assert work.is_dir() and work.parent == proc.RUN_DIR
        (entry,) = [e for e in state.StateFile.load().created if e["kind"] == "dir"]
        assert entry["path"] == str(work) and entry["owner"] == state.me()
    assert not work.exists()
    assert not [e for e in state.StateFile.load().created if e["kind"] == "dir"]
    # a dead run's folder: recorded by an owner that is gone, removed by reap_stale
    left = proc.RUN_DIR / "trace-1-x"
    left.mkdir()
    st = state.StateFile.load()
    st.record("dir", path=str(left))
    data = json.loads(state_path.read_text())
    for e in data["created"]:
        e["owner"] = dead_owner()
    state_path.write_text(json.dumps(data))
    assert proc.reap_stale() == [] and not left.exists()

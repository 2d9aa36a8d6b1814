"""Issue 17 #10: the state file is not trusted whole. Paths are resolved before the
containment check, each entry kind's fields are checked (a malformed entry is reported
and skipped, never a crash), and a state file or folder that someone else could have
written is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.core import proc, state
from harness.core.errors import TopologyError


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    monkeypatch.setattr(proc, "RUN_DIR", run)
    monkeypatch.setattr(state, "STATE_PATH", run / "topology.json")
    return run


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "precious").write_text("keep me\n")
    return v


def dead_owner() -> dict[str, Any]:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = {"pid": p.pid, "start": state.process_start(p.pid)}
    p.wait()
    return owner


def write_state(path: Path, created: list[Any]) -> None:
    path.write_text(json.dumps({"schema": state.STATE_SCHEMA, "config": {},
                                "created": created}))
    path.chmod(0o644)


def test_a_dir_entry_with_dotdot_is_not_removed(run_dir: Path, victim: Path) -> None:
    write_state(run_dir / "topology.json",
                [{"kind": "dir", "path": f"{run_dir}/../victim", "owner": dead_owner()}])
    problems = proc.reap_stale()
    assert (victim / "precious").exists()
    assert any("outside" in p and "victim" in p for p in problems)


def test_a_dir_entry_through_a_symlink_is_not_removed(run_dir: Path, victim: Path) -> None:
    (run_dir / "up").symlink_to(victim.parent)
    write_state(run_dir / "topology.json",
                [{"kind": "dir", "path": f"{run_dir}/up/victim", "owner": dead_owner()}])
    problems = proc.reap_stale()
    assert (victim / "precious").exists()
    assert any("outside" in p for p in problems)


def test_a_dir_entry_inside_the_run_dir_is_still_removed(run_dir: Path) -> None:
    ours = run_dir / "clients-1"
    ours.mkdir()
    write_state(run_dir / "topology.json",
                [{"kind": "dir", "path": str(ours), "owner": dead_owner()}])
    assert proc.reap_stale() == []
    assert not ours.exists() and state.StateFile.load().created == []


MALFORMED: list[Any] = [
    {"kind": "process"},
    {"kind": "process", "pid": "12", "start": 1.0, "role": "x"},
    {"kind": "process", "pid": True, "start": 1.0, "role": "x"},
    {"kind": "dir", "path": 5},
    {"kind": "dir"},
    {"kind": "netdev"},
    {"kind": "netdev", "name": "../../x", "peer": None},
    {"kind": "rdma_link", "name": "rxe0", "netdev": ["rxpw0"]},
    {"kind": "sysctl", "key": "kernel.core_pattern", "old": "|/tmp/evil"},
    {"kind": "local_rule_moved", "new_pref": "nope"},
    {"kind": "rule", "args": "pref 5"},
    {"kind": "table", "table": {"a": 1}},
    {"kind": "process", "pid": 1, "start": 1.0, "role": "x", "owner": {"pid": "x"}},
    {"kind": "nonsense"},
]


def test_malformed_entries_are_reported_and_skipped(run_dir: Path) -> None:
    good = {"kind": "netdev", "name": "rxpw0", "peer": "rxpw0s", "owner": dead_owner()}
    write_state(run_dir / "topology.json", [*MALFORMED, good])
    st = state.StateFile.load()
    assert st.created == [good]
    assert len(st.problems) == len(MALFORMED)
    assert all("skipped" in p for p in st.problems)
    assert st.topology_entries() == [good] and st.processes() == []
    assert len(proc.reap_stale()) == len(MALFORMED)  # no KeyError/ValueError
    st.record("table", table="1000")  # a write keeps the malformed entries for inspection
    assert len(json.loads((run_dir / "topology.json").read_text())["created"]) == \
        len(MALFORMED) + 2


def test_a_state_file_others_can_write_is_refused(run_dir: Path) -> None:
    path = run_dir / "topology.json"
    write_state(path, [])
    path.chmod(0o666)
    with pytest.raises(TopologyError, match=r"writable by others(.|\n)*fix: .*chmod go-w"):
        state.StateFile.load()


def test_a_state_folder_others_can_write_is_refused(run_dir: Path) -> None:
    write_state(run_dir / "topology.json", [])
    run_dir.chmod(0o777)
    with pytest.raises(TopologyError, match="writable by others"):
        state.StateFile.load()
    with pytest.raises(TopologyError, match="writable by others"):
        state.StateFile(run_dir / "new.json").save()


def test_a_state_file_owned_by_someone_else_is_refused(run_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    path = run_dir / "topology.json"
    write_state(path, [])
    os.chown(path, 65534, 65534)
    with pytest.raises(TopologyError, match=r"owned by uid 65534(.|\n)*fix: .*chown"):
        state.StateFile.load()


def test_the_lock_file_does_not_follow_a_planted_symlink(run_dir: Path,
                                                         tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (run_dir / "topology.json.lock").symlink_to(target)
    with pytest.raises(TopologyError, match="symbolic link"):
        state.StateFile.load().record("table", table="1000")
    assert target.read_text() == "keep me\n"

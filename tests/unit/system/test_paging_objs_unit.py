"""The paging lane's kernel objects on recorded tables and a fake cgroup root: what is
refused before anything is made, what is recorded, what undo leaves and says."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import NotOurs, SettingError
from harness.core.state import StateFile
from harness.system import paging_objs
from harness.system.paging_objs import PagingCgroup, Swap, SwapArea, swaps

RECORDED_SWAPS = """Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/nvme0n1                            partition\t131068\t\t52224\t\t-2
/var/tmp/my\\040swap                     file\t\t65532\t\t0\t\t-3
"""
# recorded in the guest after standby hca-first took the namespace away under the area
RECORDED_DELETED = """Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/nvme0n1\\040(deleted)                  partition\t98300\t\t256\t\t-2
"""


def test_proc_swaps_reads_as_data() -> None:
    assert swaps(RECORDED_SWAPS) == [SwapArea("/dev/nvme0n1", "partition", 131068, 52224, -2),
                                     SwapArea("/var/tmp/my swap", "file", 65532, 0, -3)]
    assert swaps("Filename Type Size Used Priority\n") == []
    assert swaps(RECORDED_DELETED) == [SwapArea("/dev/nvme0n1", "partition", 98300, 256, -2,
                                                deleted=True)]


def test_only_our_namespaces_and_only_swap(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    state = StateFile.load(tmp_path / "state.json")
    for bad in ("/dev/sda", "/dev/nvme0n1p1", "/etc/passwd", "/dev/nvme0n1/../sda"):
        with pytest.raises(NotOurs):
            Swap(Path(bad), state)
    monkeypatch.setattr(paging_objs, "swaps", lambda text=None: swaps(RECORDED_SWAPS))
    with pytest.raises(SettingError, match="already active on /var/tmp/my swap"):
        Swap(Path("/dev/nvme0n1"), state).on()
    assert state.created == []  # refused before anything was recorded or made
    with pytest.raises(NotOurs):
        paging_objs.undo({"kind": "paging_swap", "path": "/dev/sda", "major": 8, "minor": 0})
    with pytest.raises(NotOurs, match="no device number"):
        paging_objs.undo({"kind": "paging_swap", "path": "/dev/nvme0n1"})


def fake_root(tmp_path: Path, subtree: str = "") -> Path:
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text(subtree)
    return root


def test_a_cgroup_is_recorded_before_it_is_made(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    state = StateFile.load(tmp_path / "state.json")
    grp = PagingCgroup(state, 64 << 20, root, memory_high=12 << 20).make()
    assert [e["kind"] for e in state.created] == ["paging_subtree", "paging_cgroup"]
    assert (root / "cgroup.subtree_control").read_text() == "+memory"
    assert (grp.path / "memory.max").read_text() == str(64 << 20)
    assert (grp.path / "memory.swap.max").read_text() == "max"
    assert (grp.path / "memory.high").read_text() == str(12 << 20)
    grp.add(1234)
    assert (grp.path / "cgroup.procs").read_text() == "1234"
    (grp.path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert grp.events() == {"low": 0, "high": 0, "max": 12, "oom": 1, "oom_kill": 1}
    # memory already on in the root: not ours to switch off later
    state2 = StateFile.load(tmp_path / "state2.json")
    PagingCgroup(state2, 1 << 20, fake_root(tmp_path / "b", "memory pids")).make()
    assert [e["kind"] for e in state2.created] == ["paging_cgroup"]


def test_a_cgroup_that_keeps_a_process_is_left_and_said(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_root(tmp_path)
    grp = PagingCgroup(StateFile.load(tmp_path / "s.json"), 1 << 20, root).make()
    (grp.path / "cgroup.kill").write_text("")
    (grp.path / "cgroup.procs").write_text("4321\n")
    monkeypatch.setattr(paging_objs, "CGROUP_EMPTY_TIMEOUT_S", 0.3)
    left = paging_objs.undo({"kind": "paging_cgroup", "name": grp.name}, root=root)
    assert "kept processes ['4321']" in left and "left" in left
    assert (grp.path / "cgroup.kill").read_text() == "1"  # it was asked to kill them
    with pytest.raises(NotOurs):
        paging_objs.undo({"kind": "paging_cgroup", "name": "system.slice"}, root=root)
    with pytest.raises(NotOurs):
        paging_objs.undo({"kind": "paging_cgroup", "name": "../x"}, root=root)
    assert paging_objs.undo({"kind": "paging_subtree"}, root=root) == ""
    assert (root / "cgroup.subtree_control").read_text() == "-memory"

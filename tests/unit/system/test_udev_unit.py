"""udev.settle: a no-op without udevd, udevadm's answer otherwise, a named bound when the
queue stays busy (a fake udevadm stands in for the real one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.core.errors import BoundExceeded
from harness.system import udev


def fake_udevadm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    prog = tmp_path / "udevadm"
    prog.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\n{body}\n")
    prog.chmod(0o755)
    control = tmp_path / "control"
    control.touch()
    monkeypatch.setattr(udev.shutil, "which", lambda name, path=None: str(prog))
    monkeypatch.setattr(udev, "UDEV_CONTROL", control)
    monkeypatch.setattr(udev, "UDEV_QUEUE", tmp_path / "queue")
    return tmp_path


def test_no_udevd_is_nothing_to_wait_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_udevadm(tmp_path, monkeypatch, "exit 0")
    monkeypatch.setattr(udev, "UDEV_CONTROL", tmp_path / "absent")
    assert udev.settle() is False
    assert not (tmp_path / "calls").exists()


def test_settle_asks_udevadm_with_a_bound_inside_ours(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    d = fake_udevadm(tmp_path, monkeypatch, "exit 0")
    assert udev.settle(10.0) is True
    assert (d / "calls").read_text().split() == ["settle", "--timeout=8"]


def test_a_busy_queue_is_a_named_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = fake_udevadm(tmp_path, monkeypatch, "echo 'timeout waiting' >&2; exit 1")
    (d / "queue").touch()
    with pytest.raises(BoundExceeded) as e:
        udev.settle(10.0)
    assert e.value.bound_name == "UDEV_SETTLE_TIMEOUT_S" and "timeout waiting" in str(e.value)
    os.unlink(d / "queue")  # the queue emptied as udevadm gave up: nothing outstanding
    assert udev.settle(10.0) is True


def test_a_hung_udevadm_is_killed_at_the_bound(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake_udevadm(tmp_path, monkeypatch, "exec sleep 30")
    with pytest.raises(BoundExceeded) as e:
        udev.settle(0.5)
    assert "event queue was not empty" in e.value.outstanding

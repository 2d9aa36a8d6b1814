"""The CLI tests' guest: runner.run_in_vm replaced by a recorder (no guest boots), results
and the working directory in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import launch
from harness.vm import pair, runner
from tests.helpers.guest_recorder import GuestRecorder


@pytest.fixture
def guest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> GuestRecorder:
    rec = GuestRecorder()
    monkeypatch.setattr(runner, "run_in_vm", rec)
    monkeypatch.setattr(pair, "run_pair", rec.pair)
    monkeypatch.setattr(launch, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    return rec

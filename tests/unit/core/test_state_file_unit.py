"""The state file (the ownership record). Pure logic: any host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.core.errors import TopologyError
from harness.core.state import StateFile


def test_state_file_roundtrip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    st_ = StateFile(path)
    st_.record("netdev", name="rxpw0", peer="rxpw1")
    st_.record("netdev", name="rxpw0", peer="rxpw1")  # idempotent
    loaded = StateFile.load(path)
    assert loaded.created == [{"kind": "netdev", "name": "rxpw0", "peer": "rxpw1",
                               "owner": {"pid": os.getpid(),
                                         "start": loaded.created[0]["owner"]["start"]}}]
    assert loaded.owns_netdev("rxpw1") and not loaded.owns_netdev("eth0")
    path.write_text('{"schema": 1, "created": [')
    with pytest.raises(TopologyError, match="corrupt") as exc:
        StateFile.load(path)
    assert "rm " in exc.value.fix

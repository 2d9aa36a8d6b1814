"""A harness SIGKILLed at several points leaves a state that cleanup, or the next run, removes.

The killed harness is a real `python -m harness.cli` child running a matrix or a
stress on the session's topology. SIGKILL hits only that process (as `kill -9 PID`
would): its client workers, its peer agent, its async event reader and a blocked
`rdma link delete` live on. Everything they are is in the state file, with the
start time of each process, so cleanup ends exactly those and puts the local side
back (the session, a live owner, keeps its topology).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.core.printer import STDOUT
from harness.core.state import StateFile, process_start
from harness.topology import devices, lifecycle
from harness.topology.config import TopologyConfig
from tests.helpers.killing import POINTS, run_and_kill


def assert_clean(pid: int, left: list[dict], cfg: TopologyConfig) -> None:
    assert all(process_start(e["pid"]) != e["start"] for e in left), left
    assert not [e for e in StateFile.load().created if e["owner"]["pid"] == pid]
    assert not devices.pending_deletes(cfg.local_dev)
    topo = devices.discover(cfg)
    assert topo.local.state == topo.peer.state == "ACTIVE"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("point", list(POINTS))
def test_cleanup_after_sigkill(point: str, rxe_config, rxe_topology, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    argv, reached = POINTS[point]
    pid, left = run_and_kill(argv, reached, rxe_config, tmp_path / "run")
    roles = sorted(e["role"] for e in left)
    assert any(r.startswith("peer agent") for r in roles), roles
    assert any(process_start(e["pid"]) == e["start"] for e in left)  # orphans live on
    assert cli_main.main(["cleanup"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "a live rxe-power process" in out  # the session's topology is kept
    assert_clean(pid, left, rxe_config)
    assert (tmp_path / "run" / "results.jsonl").exists()  # what ran is kept


@pytest.mark.timeout(240)
def test_next_run_cleans_up_by_itself(rxe_config, rxe_topology, tmp_path: Path) -> None:
    """No cleanup command: the next setup (as every run starts) ends the orphans, waits for
    the blocked delete and repairs the local side."""
    argv, reached = POINTS["delete-blocked"]
    pid, left = run_and_kill(argv, reached, rxe_config, tmp_path / "run")
    _topo, built = lifecycle.setup(rxe_config, out=STDOUT)
    assert not built  # the session owns the topology, and keeps it
    assert_clean(pid, left, rxe_config)

"""Nothing that is not in the state file is deleted or changed.

A foreign veth pair and a foreign rxe device on it exist before anything runs; they
must be exactly as they were after a transition, a cleanup, a teardown and a fresh
setup, and after a harness that built its own topology is SIGKILLed and cleaned up.
This module takes the session's topology down and puts it back, so it requests no
peer agent (the module-scoped agent would hold rxe1).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.core.printer import STDOUT
from harness.core.state import StateFile
from harness.system import command, inventory
from harness.topology import lifecycle
from harness.topology.config import TopologyConfig
from tests.helpers.killing import POINTS, run_and_kill

FOREIGN = ("fgn0", "fgn1", "fgnrxe")  # veth pair and an rxe device on fgn0: not ours


def ip(*args: str) -> None:
    command.run(["ip", *args])


def foreign_snapshot() -> dict:
    return {"netdevs": sorted((asdict(n) for n in inventory.ip_links()
                               if n.ifname in FOREIGN[:2]), key=lambda d: d["ifname"]),
            "rdma": [asdict(lk) for lk in inventory.rdma_links() if lk.ifname == FOREIGN[2]],
            "addrs": sorted(f"{a}" for a in inventory.ip_addrs() if a.ifname in FOREIGN[:2])}


@pytest.fixture
def foreign(rxe_topology) -> Iterator[dict]:
    ip("link", "add", FOREIGN[0], "type", "veth", "peer", "name", FOREIGN[1])
    ip("addr", "add", "198.51.100.7/32", "dev", FOREIGN[0])
    for n in FOREIGN[:2]:
        ip("link", "set", n, "up")
    command.run(["rdma", "link", "add", FOREIGN[2], "type", "rxe", "netdev", FOREIGN[0]])
    try:
        snap = foreign_snapshot()
        assert len(snap["netdevs"]) == 2 and len(snap["rdma"]) == 1
        yield snap
    finally:
        subprocess.run(["rdma", "link", "delete", FOREIGN[2]], timeout=30, check=False)
        subprocess.run(["ip", "link", "del", FOREIGN[0]], timeout=30, check=False)


def whole_again(cfg: TopologyConfig) -> None:
    _topo, built = lifecycle.setup(cfg, out=STDOUT)
    assert built


@pytest.mark.timeout(300)
def test_foreign_objects_survive_everything(foreign: dict, power_shim, rxe_config,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("standby", "hibernate"):
        assert power_shim.run(name, hold_ms=100).verdict.value == "completed"
        assert foreign_snapshot() == foreign, name
    power_shim.shim.close()
    assert cli_main.main(["cleanup"]) == 0, capsys.readouterr()
    assert foreign_snapshot() == foreign
    try:
        assert lifecycle.teardown(out=STDOUT) == []
        assert foreign_snapshot() == foreign
        assert not StateFile.load().topology_entries()
    finally:
        whole_again(rxe_config)
    assert foreign_snapshot() == foreign


@pytest.mark.timeout(300)
def test_killed_run_that_built_its_topology_is_removed_completely(
        foreign: dict, rxe_config, tmp_path: Path) -> None:
    """With no topology up, the harness builds its own; SIGKILLed with the local device
    gone mid-standby, `rxe-power cleanup` (no live owner) removes every object it made:
    processes, devices, netdevs, rules, routes, and the moved `lookup local` goes back."""
    rules_before = sorted(" ".join(r.selector_args()) for r in inventory.ip_rules())
    assert lifecycle.teardown(out=STDOUT) == []
    bare_rules = sorted(" ".join(r.selector_args()) for r in inventory.ip_rules())
    try:
        argv, reached = POINTS["device-gone"]
        _pid, left = run_and_kill(argv, reached, rxe_config, tmp_path / "run")
        assert StateFile.load().topology_entries()  # it had built one
        assert cli_main.main(["cleanup"]) == 0
        assert not StateFile.load().created
        ours = {rxe_config.local_dev, rxe_config.peer_dev}
        assert not ours & {lk.ifname for lk in inventory.rdma_links()}
        nets = {n.ifname for n in inventory.ip_links()}
        assert not nets & {rxe_config.local_netdev, rxe_config.peer_netdev, rxe_config.switch}
        assert sorted(" ".join(r.selector_args()) for r in inventory.ip_rules()) == bare_rules
        assert foreign_snapshot() == foreign
        assert left
    finally:
        whole_again(rxe_config)
    assert sorted(" ".join(r.selector_args()) for r in inventory.ip_rules()) == rules_before

"""What an `rxe` test drives traffic and transitions with: the results folder, the peer
agent on the peer HCA, an open device on the local HCA, a connected RC pair, and the
power shim (after which the local side must be whole)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.core import settings
from harness.peer.controller import PeerAgent
from harness.peer.traffic import Pair, connected_pair
from harness.rdma.verbs import Device
from harness.topology import lifecycle
from harness.topology.config import Topology, TopologyConfig
from power.notify import Notifier
from power.result import TransitionRequest, TransitionResult
from power.shim import Shim


@pytest.fixture(scope="session")
def results_dir() -> Path:
    path = settings.results_dir()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def peer_agent(rxe_topology: Topology, results_dir: Path) -> Iterator[PeerAgent]:
    """The remote peer agent process on the peer HCA, for one test module (so a module
    that takes the topology down and up again has no holder of rxe1 in its way)."""
    with PeerAgent(rxe_topology.peer, log_dir=results_dir / "logs") as agent:
        yield agent


@pytest.fixture
def local_device(rxe_topology: Topology) -> Iterator[Device]:
    """An open Context+PD on the local HCA, closed after the test."""
    with Device(rxe_topology.local.dev, rxe_topology.local.port,
                rxe_topology.local.gid_index) as dev:
        yield dev


@pytest.fixture
def rc_pair(local_device: Device, peer_agent: PeerAgent) -> Iterator[Pair]:
    """A connected RC pair: our QP on the local HCA <-> the agent's QP on the peer HCA."""
    with connected_pair(local_device, peer_agent) as pair:
        yield pair


class ShimFixture:
    """The power shim for one test: a private clients directory, results written as JSON."""

    def __init__(self, cfg: TopologyConfig, clients_dir: Path, out_dir: Path,
                 test_name: str) -> None:
        self.clients_dir = clients_dir
        self.shim = Shim(cfg, Notifier(clients_dir))
        self.shim.start()  # the reader starts while the test sets up its clients
        self.out_dir = out_dir
        self.test_name = test_name
        self.results: list[TransitionResult] = []

    def run(self, name: str, **kwargs: Any) -> TransitionResult:
        """Run one transition (TransitionRequest fields as keywords); keep its JSON."""
        result = self.shim.run(TransitionRequest(name, **kwargs))
        self.results.append(result)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.test_name)
        result.write(self.out_dir / f"{safe}-{len(self.results)}.json")
        return result


@pytest.fixture
def power_shim(rxe_config: TopologyConfig, rxe_topology: Topology,
               results_dir: Path, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[ShimFixture]:
    """The power shim on the local HCA. After the test the local side must be whole."""
    fx = ShimFixture(rxe_config, tmp_path / "clients", results_dir / "transitions",
                     request.node.name)
    try:
        yield fx
    finally:
        fx.shim.close()
    problems = lifecycle.restore_local_side(rxe_config)
    assert not problems, f"the topology was not whole after the test: {problems}"

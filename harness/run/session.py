"""One run's rig, shared by matrix, stress and bench.

    with RunSession(cfg, out_dir) as session:          # the topology: built here (and
        out(f"on {session.topo.local.dev}")            # removed at the end) or found up
        with session.rig(results=ResultsHeader("matrix", spec.to_json())) as rig:
            rig.results.write(...)                     # out_dir/results.jsonl, fsynced
            run_scenario(rig.shim, rig.agent, ...)     # peer agent, private clients
                                                       # directory, shim notifying it

Everything the session opens it closes, newest first, also when the body raises;
the topology is removed only if this session built it (topology.setup says so). Where the
peer HCA lives is the session's `peer` (harness.run.placements): in this kernel, or in
the peer guest's, reached through its service; `session.cfg` is then the pair's names. The run's
provenance (`session.provenance`: kernel, rdma_rxe, removal mode, versions, commit) is
collected once, when the topology is up, and heads the results file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.core.errors import RxePowerError
from harness.core.settings import PeerPlacement
from harness.core.shards import ShardPlan
from harness.peer.controller import PeerAgent
from harness.run.placements import Placed, place
from harness.run.resultsfile import ResultsWriter
from harness.system.provenance import Provenance
from harness.system.provenance_collect import collect
from harness.topology.config import Topology, TopologyConfig
from harness.topology.sides import SameKernelSides, Sides
from power.notify import Notifier, private_clients_dir
from power.plan import get_transition
from power.shim import Shim

RESULTS_FILE = "results.jsonl"
LOGS_DIR = "logs"


@dataclass(frozen=True)
class ResultsHeader:
    """What opens a run's results file: the command and its spec (the header record)."""

    command: str
    spec: dict[str, Any]
    shard: ShardPlan | None = None  # --shard I/N: what this shard of the run runs


@dataclass
class Rig:
    """What a run drives: the topology, the peer agent on the peer HCA, the private
    clients directory, and (once opened) the shim and the results file."""

    cfg: TopologyConfig
    topo: Topology
    _agent: PeerAgent | None  # None: the peer is in its own guest (no verbs agent there)
    clients_dir: Path
    log_dir: Path
    _stack: ExitStack
    _results: ResultsWriter | None = None
    _shim: Shim | None = field(default=None)
    sides: Sides = field(default_factory=SameKernelSides)
    services: Any = None  # the peer guest's service (PeerServiceClient); None: one kernel

    @property
    def agent(self) -> PeerAgent:
        if self._agent is None:
            raise RxePowerError("the peer is in its own guest, where no verbs agent runs yet: "
                                "only kernel clients (nvme-rdma) run with --peer guest",
                                "run the userspace policies with --peer same-kernel")
        return self._agent

    @property
    def results(self) -> ResultsWriter:
        if self._results is None:
            raise RxePowerError("this run opened no results file",
                                "open the rig with results=ResultsHeader(...)")
        return self._results

    @property
    def shim(self) -> Shim:
        if self._shim is None:
            raise RxePowerError("this run started no shim",
                                "open the rig with shim=True, or call open_shim() first")
        return self._shim

    def open_shim(self) -> Shim:
        """Start the shim (its async event reader) now, notifying this run's clients; it
        stops with the rig. Idempotent."""
        if self._shim is None:
            self._shim = self._stack.enter_context(Shim(self.cfg, Notifier(self.clients_dir),
                                                        sides=self.sides))
        return self._shim


class RunSession:
    """The topology for one run, and the rig on it (see the module docstring)."""

    def __init__(self, cfg: TopologyConfig, out_dir: Path, *,
                 transitions: tuple[str, ...] = (),
                 peer: PeerPlacement = PeerPlacement.SAME_KERNEL) -> None:
        """`transitions`: the names of the transitions the run makes (their fault models
        go into the provenance; none for a run that makes none)."""
        self.cfg = cfg
        self.peer = place(peer)
        self._placed: Placed | None = None
        self.faults = tuple(get_transition(t).fault_model for t in transitions)
        self.out_dir = out_dir
        self.log_dir = out_dir / LOGS_DIR
        self.results_path = out_dir / RESULTS_FILE
        self._provenance: Provenance | None = None

    @property
    def placed(self) -> Placed:
        """The topology as placed: its names, devices, the shim's sides, the peer's
        services."""
        if self._placed is None:
            raise RxePowerError("the run session is not open", "use it as `with RunSession(...)`")
        return self._placed

    @property
    def topo(self) -> Topology:
        return self.placed.topo

    @property
    def provenance(self) -> Provenance:
        """What makes this run (collected once the topology and its module are up)."""
        if self._provenance is None:
            raise RxePowerError("the run session is not open", "use it as `with RunSession(...)`")
        return self._provenance

    def __enter__(self) -> RunSession:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._placed = self.peer.open(self.cfg)
            self.cfg = self._placed.cfg
            # never raises for what it cannot read
            self._provenance = collect(faults=self.faults, peer_host=self._placed.peer_host)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.peer.close()

    @contextmanager
    def rig(self, *, results: ResultsHeader | None = None, shim: bool = True) -> Iterator[Rig]:
        """Open, in this order, the results file (if `results`), the peer agent, a
        private clients directory and (if `shim`) the shim; close them in reverse."""
        with ExitStack() as stack:
            writer = None
            if results is not None:
                writer = stack.enter_context(
                    ResultsWriter(self.results_path, results.command, results.spec,
                                  provenance=self.provenance, shard=results.shard))
            placed = self.placed
            agent = (stack.enter_context(PeerAgent(self.topo.peer, log_dir=self.log_dir))
                     if placed.services is None else None)
            clients_dir = stack.enter_context(private_clients_dir())
            rig = Rig(self.cfg, self.topo, agent, clients_dir, self.log_dir, stack, writer,
                      sides=placed.sides, services=placed.services)
            if shim:
                rig.open_shim()
            yield rig

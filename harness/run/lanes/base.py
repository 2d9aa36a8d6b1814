"""What every lane shares: the kinds of lane, a parsed policy name (PolicyRef), a matrix
scenario, and the Lane protocol each lane (userspace policies, kernel clients, outside
programs) implements. The lanes themselves import only this module of the package, never
each other (pyproject.toml's independence contract); harness.run.lanes holds the table.

    ref = parse_policy("nvme-rdma:fast-fail")     # harness.run.lanes: the one parser
    ref.lane, ref.name, ref.options, ref.text     # KERNEL, "nvme-rdma", "fast-fail", as given
    lane = LANES[ref.lane]()                      # one lane object per run (its own state)
    lane.validate(ref, spec); lane.groups(refs, spec, transition)
    res = lane.run(ctx, scenario); res.rows(scenario.key()); res.to_json()
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from harness.run.records import ScenarioKey
from harness.run.rows import Row
from harness.workload.ledger import WorkloadSpec
from power.plan import Ordering
from power.result import TransitionRequest


class LaneKind(StrEnum):
    """What runs under a transition (the table's key, in the order a matrix runs them)."""

    KERNEL = "kernel"  # a kernel ULP client: nvme-rdma, NFS over RDMA (its own scenario)
    USERSPACE = "userspace"  # a policy client worker (clients.*), several per transition
    OUTSIDE = "outside"  # a program that is not ours, under the verbs tracer


@dataclass(frozen=True)
class PolicyRef:
    """A policy name as parsed once, at the edge (harness.run.lanes.parse_policy). Its JSON
    form, and what results files and the table show, is `text`, as it was given.

    lane     which lane runs it
    name     what the lane knows it by: a userspace policy's short name or module:Class,
             a kernel client's ULP (nvme-rdma, nfs-rdma), an outside program's basename
    options  a kernel client's preset or key=val list after the ULP's name ("" if none)
    """

    lane: LaneKind
    name: str
    options: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Scenario:
    """One matrix scenario: one transition in one ordering under a group of one lane's
    clients, with one operation mix."""

    transition: str
    ordering: Ordering
    policies: tuple[PolicyRef, ...]
    mix: str

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(p.text for p in self.policies)

    @property
    def lane(self) -> LaneKind:
        return self.policies[0].lane

    @property
    def id(self) -> str:
        return f"{self.transition}/{self.ordering}/{'+'.join(self.texts)}/{self.mix}"

    def to_json(self) -> dict[str, Any]:
        return {"transition": self.transition, "ordering": self.ordering.value,
                "policies": list(self.texts), "mix": self.mix, "id": self.id}

    def key(self) -> ScenarioKey:
        return ScenarioKey(self.transition, self.ordering.value, self.texts, self.mix, self.id)


class RunSpec(Protocol):
    """What a lane reads of the run's spec (harness.run.matrix.MatrixSpec is one)."""

    @property
    def together(self) -> bool: ...
    @property
    def kernel_transitions(self) -> tuple[str, ...]: ...
    @property
    def count(self) -> int: ...
    @property
    def rate_per_s(self) -> float: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def hold_ms(self) -> int: ...
    @property
    def client_cmd(self) -> str: ...
    @property
    def server_cmd(self) -> str: ...
    @property
    def client_exit_timeout_s(self) -> float: ...
    def workload(self, mix: str) -> WorkloadSpec: ...


@dataclass
class LaneContext:
    """What one scenario is run with: the rig's parts, the spec and where its logs go."""

    spec: RunSpec
    shim: Any  # power.shim.Shim
    rig: Any  # harness.run.session.Rig
    cfg: Any  # harness.topology.config.TopologyConfig
    topo: Any  # harness.topology.config.Topology
    request: TransitionRequest
    clients_dir: Path
    log_dir: Path  # this scenario's
    services: Any = None  # the peer guest's service (PeerServiceClient); None: one kernel

    @property
    def agent(self) -> Any:
        """The peer agent (harness.peer.controller.PeerAgent); RxePowerError naming why not
        when the peer is in its own guest (no verbs agent runs there yet)."""
        return self.rig.agent


class LaneResult(Protocol):
    """One scenario's result in one lane: its table rows and its JSON (the record's
    `result`: the same shape as before lanes had a type)."""

    def rows(self, sc: ScenarioKey) -> list[Row]: ...
    def to_json(self) -> dict[str, Any]: ...


class Lane(Protocol):
    """One way of running clients under a transition. A lane object lives for one run
    (state across its scenarios is its own: the kernel lane's wedge)."""

    kind: LaneKind

    def claims(self, text: str) -> bool:
        """This lane runs the policy named `text` (only the parser asks)."""
        ...

    def parse(self, text: str) -> PolicyRef:
        """The PolicyRef of a name this lane claims (no import, no option check)."""
        ...

    def validate(self, ref: PolicyRef, spec: RunSpec) -> None:
        """SettingError naming the problem and the fix, before anything runs."""
        ...

    def groups(self, refs: tuple[PolicyRef, ...], spec: RunSpec,
               transition: str) -> list[tuple[PolicyRef, ...]]:
        """This lane's clients, grouped one group per scenario of `transition`."""
        ...

    def run(self, ctx: LaneContext, sc: Scenario) -> LaneResult: ...

    def result_from_json(self, d: dict[str, Any], schema: int) -> LaneResult:
        """A stored result read back (RESULT_PARSE_ERRORS on a malformed one)."""
        ...

"""The lanes: what runs under a transition, one table keyed by the lane's kind.

    ref = parse_policy("graceful")         # THE one place a policy name is interpreted
    LANES[ref.lane]                        # the lane's class (a run makes one of each)

    kind        claims                          runs
    kernel      nvme-rdma[:opts], nfs-rdma:..   the ULP's own scenario (lanes/kernel.py)
    userspace   anything else: a policy name    worker processes (lanes/userspace.py)
                or module:Class
    outside     cmd:<program>                   a traced program (lanes/outside.py)

A new lane is a module with a Lane (lanes/base.py) and its entry here. The lanes import
only lanes.base of this package, never each other (pyproject.toml's contract).
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.run.lanes.base import Lane, LaneKind, PolicyRef
from harness.run.lanes.kernel import KernelLane
from harness.run.lanes.outside import OutsideLane
from harness.run.lanes.userspace import UserspaceLane

# the order is the order of the matrix's groups in a transition, and of claiming: the
# userspace lane, which claims every name, comes after the lanes with a prefix
LANES: dict[LaneKind, type[Lane]] = {
    LaneKind.KERNEL: KernelLane,
    LaneKind.OUTSIDE: OutsideLane,
    LaneKind.USERSPACE: UserspaceLane,
}


def parse_policy(text: str) -> PolicyRef:
    """The PolicyRef of a policy name as given (the command line, a results file): the
    first lane that claims it parses it. Options are checked by the lane's validate."""
    for lane in LANES.values():
        if lane().claims(text):
            return lane().parse(text)
    raise AssertionError(f"no lane claims {text!r}")  # the userspace lane claims any name


def parse_policies(texts: Iterable[str]) -> tuple[PolicyRef, ...]:
    return tuple(parse_policy(t) for t in texts)


def new_lanes() -> dict[LaneKind, Lane]:
    """One lane object of each kind, for one run."""
    return {kind: cls() for kind, cls in LANES.items()}

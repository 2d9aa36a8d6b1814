"""What a client's I/O path keeps per connection and measures, and the policy interface."""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from harness.core.device import DeviceInfo
from harness.core.errors import RxePowerError
from harness.rdma.qp_types import QpInfo
from harness.rdma.verbs import RcQp
from harness.workload.spec import Op
from power.notify import SuspendReply

if TYPE_CHECKING:  # the policies' hooks take the core that calls them
    from clients.userspace.core import ClientCore


class PeerUnreachable(RxePowerError):
    """The peer agent's socket is closed, reset or silent: no QP can be connected to it."""


class Policy(Protocol):
    name: str

    def on_suspend(self, core: ClientCore, deadline_s: float) -> SuspendReply | None: ...

    def on_resume(self, core: ClientCore, info: DeviceInfo) -> None: ...

    def on_error(self, core: ClientCore, what: str) -> None: ...


GOODBYE_WR_ID = 0  # the orderly disconnect's SEND; request slot s posts with wr_id s + 1


@dataclass
class Conn:
    """One QP generation on one QP index, with the agent's QP it is connected to. Slot s
    of the MR holds request slot_req[s] (-1: free); its WR's wr_id is s + 1 (0 is the
    goodbye)."""

    qp_index: int
    generation: int
    qp: RcQp
    agent_qp_id: int
    remote: QpInfo
    free_slots: list[int]
    slot_req: list[int] = field(default_factory=list)
    # (slot, op, size) -> its prebuilt SendWR
    wrs: dict[tuple[int, Op, int], Any] = field(default_factory=dict)
    n_inflight: int = 0
    broken: bool = False
    order: collections.deque[int] = field(default_factory=collections.deque)  # slots as posted
    unsignaled: int = 0  # WRs posted unsignaled since the last signaled one
    # (op, size) -> the window's WRs, linked
    chains: dict[tuple[Op, int], list[Any]] = field(default_factory=dict)

    @property
    def inflight(self) -> dict[int, tuple[int, int]]:
        """wr_id -> (request, slot) of what is posted and not completed."""
        return {s + 1: (r, s) for s, r in enumerate(self.slot_req) if r >= 0}


@dataclass
class Metrics:
    suspend_ns: int | None = None
    quiesced_ns: int | None = None
    quiesce: str = ""  # "drained" / "aborted (flushed N)" / "no chance: the device went first"
    error_ns: int | None = None  # first error seen from the verbs layer
    resume_ns: int | None = None
    first_ok_after_resume_ns: int | None = None
    goodbye_ns: int | None = None
    reconnects: int = 0
    # completions whose wr_id named no request in flight (not the goodbye's): an HCA that
    # completed something twice, or a WR the client did not post; each is also a note
    extra_completions: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

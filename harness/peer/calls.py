"""The peer agent's requests as typed calls, over whatever channel reaches it: the agent
this process started (controller.PeerAgent) or one it connected to (remote.RemotePeer)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from harness.core.protocol import REPLY_TIMEOUT_S
from harness.rdma.qp_types import QpInfo


class PeerCalls(ABC):
    """create_qp, connect_qp, arrivals: each one `request` (or a few) of the PEER channel."""

    @abstractmethod
    def request(self, event: str, reply_timeout_s: float = REPLY_TIMEOUT_S,
                **payload: Any) -> dict[str, Any]:
        """One request on the PEER channel, its reply's payload."""

    def create_qp(self, mr_size: int = 1 << 16, recv_slots: int = 16,
                  slot_size: int = 4096, write_slots: int = 0) -> tuple[int, QpInfo]:
        rep = self.request("create_qp", mr_size=mr_size, recv_slots=recv_slots,
                           slot_size=slot_size, write_slots=write_slots)
        return int(rep["qp_id"]), QpInfo.from_json(rep["info"])

    def connect_qp(self, qp_id: int, remote: QpInfo) -> str:
        return str(self.request("connect_qp", qp_id=qp_id, remote=remote.to_json())["state"])

    def arrivals(self, qp_id: int, count: int, timeout_s: float = 10.0) -> dict[str, Any]:
        """The QP's new arrivals and events once `count` arrived (or at `timeout_s`): all
        of them, read page by page (the agent sends at most ARRIVALS_PAGE per reply)."""
        rep = self.request("arrivals", timeout_s + REPLY_TIMEOUT_S, qp_id=qp_id, count=count,
                           timeout_s=timeout_s)
        while rep.get("more"):
            more = self.request("arrivals", REPLY_TIMEOUT_S, qp_id=qp_id, count=0,
                                timeout_s=0)
            rep = {**more, "arrivals": rep["arrivals"] + more["arrivals"],
                   "events": rep["events"] + more["events"],
                   "complete": len(rep["arrivals"]) + len(more["arrivals"]) >= count}
        return rep


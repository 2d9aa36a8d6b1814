"""The peer agent's rdma_cm passive side: one listener, its event channel, the connections
it accepts (each an AgentQp driven through INIT -> RTR -> RTS by its CM events) and the
events it saw, reported on request.

AgentCm is a part of harness.peer.agent.Agent (its base class): the state it uses is the
agent's, set in Agent.__init__; it handles the PEER requests cm_listen, cm_events (a
wait, asked again by the agent's loop through wait_cm_events) and cm_stop.
"""

from __future__ import annotations

import contextlib
import selectors
import time
from typing import Any

from harness.core.errors import RxePowerError
from harness.core.protocol import Message
from harness.peer.agent_qp import AgentQp
from harness.peer.dispatch import Reply
from harness.rdma import cm
from harness.rdma.verbs import Device


class AgentCm:
    # the agent's, set in Agent.__init__
    addr: str
    device_name: str
    gid_index: int
    qps: dict[int, AgentQp]
    sel: selectors.BaseSelector
    cm_listener: cm.CMID | None
    cm_channel: cm.EventChannel | None
    cm_params: dict[str, Any]
    cm_events: list[dict[str, Any]]
    cm_delivered: int

    def _new_qp(self, mr_size: int, recv_slots: int, slot_size: int, dev: Device) -> AgentQp:
        raise NotImplementedError  # Agent's

    def _destroy_qp(self, aq: AgentQp) -> None:
        raise NotImplementedError  # Agent's

    def peer_cm_listen(self, msg: Message) -> Reply:
        return self._cm_listen(msg.payload)

    def peer_cm_events(self, msg: Message) -> Reply:
        return self._cm_wait_done(msg, time.monotonic())

    def wait_cm_events(self, msg: Message, deadline: float) -> Reply:
        return self._cm_wait_done(msg, time.monotonic())

    def peer_cm_stop(self, msg: Message) -> Reply:
        self._cm_stop()
        return {}

    def _cm_listen(self, p: dict[str, Any]) -> dict[str, Any]:
        if self.cm_listener is not None:
            raise RxePowerError("already listening", "send cm_stop first")
        self.cm_channel = cm.EventChannel()
        listener = cm.CMID(creator=self.cm_channel.ch, port_space=cm.ce.RDMA_PS_TCP)
        ai = cm.AddrInfo(src=self.addr, src_service=str(p["port"]),
                         port_space=cm.ce.RDMA_PS_TCP, flags=cm.ce.RAI_PASSIVE)
        listener.bind_addr(ai)
        listener.listen()
        self.cm_listener = listener
        self.cm_params = p
        self.sel.register(self.cm_channel.fd, selectors.EVENT_READ, "cm")
        return {"port": p["port"]}

    def _cm_on_event(self) -> None:
        assert self.cm_channel is not None
        ev = self.cm_channel.try_get()
        if ev is None:
            return
        name = cm.cm_event_name(int(ev.event_type))
        rec: dict[str, Any] = {"event": name, "t": time.monotonic(), "qp_id": None}
        try:
            if name == "CONNECT_REQUEST":
                listener = self.cm_listener
                if listener is None:
                    raise RxePowerError("a CONNECT_REQUEST with no listener",
                                        "send cm_listen before connecting")
                cmid = cm.CMID(creator=ev, listen_id=listener)
                dev = Device.borrow(self.device_name, listener.context, listener.pd,
                                    self.gid_index)
                p = self.cm_params
                aq = self._new_qp(p["mr_size"], p["recv_slots"], p["slot_size"], dev)
                aq.cmid = cmid
                cm.drive_qp(cmid, aq.qp, cm.e.IBV_QPS_INIT, "RESET->INIT")
                aq.post_all_recvs()
                cm.drive_qp(cmid, aq.qp, cm.e.IBV_QPS_RTR, "INIT->RTR")
                cmid.accept(cm.conn_param(aq.qp.qpn))
                rec["qp_id"] = aq.qp_id
                rec["info"] = aq.info()
            else:
                known = self._qp_of_event(ev)
                rec["qp_id"] = known.qp_id if known else None
                if known is None or known.cmid is None:
                    pass
                elif name == "ESTABLISHED":
                    cm.drive_qp(known.cmid, known.qp, cm.e.IBV_QPS_RTS, "RTR->RTS")
                elif name == "DISCONNECTED":
                    with contextlib.suppress(Exception):
                        known.cmid.disconnect()  # complete our half of the disconnect
                    known.qp.to_err()  # flush our posted receives; counted as wc_error events
        finally:
            ev.ack_cm_event()
        self.cm_events.append(rec)

    def _qp_of_event(self, ev: object) -> AgentQp | None:
        # pyverbs does not expose which cm_id an event names; with one connection at a
        # time (what the tests do) it is the one CM-connected QP still alive.
        live = [aq for aq in self.qps.values() if aq.cmid is not None]
        return live[-1] if live else None

    def _cm_wait_done(self, msg: Message, now: float) -> dict[str, Any] | None:
        new = self.cm_events[self.cm_delivered:]
        deadline = msg.payload.get("_deadline", now + msg.payload["timeout_s"])
        msg.payload["_deadline"] = deadline
        if len(new) >= msg.payload["count"] or now >= deadline:
            self.cm_delivered = len(self.cm_events)
            return {"events": new, "complete": len(new) >= msg.payload["count"]}
        return None

    def _cm_stop(self) -> None:
        for aq in [a for a in self.qps.values() if a.cmid is not None]:
            self._destroy_qp(aq)
        if self.cm_listener is not None:
            self.cm_listener.close()
            self.cm_listener = None
        if self.cm_channel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.cm_channel.fd)
            self.cm_channel.close()
            self.cm_channel = None

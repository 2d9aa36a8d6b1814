"""The remote peer: a stand-alone process bound to the peer HCA (rxe1).

    python -m harness.peer.agent --device rxe1 --gid-index 1 --addr 198.18.0.2 --socket PATH

It listens on a Unix socket for its controller (and client workers), speaks the
(event, payload) protocol of harness.core.protocol (the PEER channel; each line is
answered by harness.peer.dispatch, with the agent's peer_<event> method: one per
event of harness.core.schemas.PEER_REQUESTS), and runs one select() loop over the
control socket, every QP's completion channel and the rdma_cm event channel, so no
pyverbs call ever blocks. Its QPs (harness.peer.agent_qp) record every arrival and
every event of their own; its rdma_cm passive side (harness.peer.agent_cm) adds the
CM events and reports them on request. It
exits when the controller goes away; every verbs object is closed by construction
on the way out. The QPs a client made over its own connection are destroyed
PARTNER_KEEPALIVE_TIMEOUT_S after that connection closes, as a target's keep-alive
would (harness.peer.keepalive); `holders` says whose each live QP is.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import struct
import sys
import time
from typing import Any

from harness.core.errors import RxePowerError
from harness.core.handlers import handler_for
from harness.core.peer_auth import AuthGate, Verdict
from harness.core.protocol import LineReader, Message, error_reply
from harness.peer.agent_cm import AgentCm
from harness.peer.agent_listen import add_listen_arguments, listen_problems, listener
from harness.peer.agent_qp import PROBE_WR_ID, AgentQp
from harness.peer.dispatch import Reply, Waiting, read_and_dispatch
from harness.peer.keepalive import Owner, PartnerWatch, peer_pid
from harness.rdma import cm, payload
from harness.rdma.event_fds import raise_fd_limit
from harness.rdma.qp_types import QpInfo, QpParams
from harness.rdma.verbs import Device, RcQp, opcode

SELECT_TICK_S = 0.5  # upper bound on one loop turn (deadline checks), not a sleep
ARRIVALS_PAGE = 4000  # arrivals per "arrivals" reply at most (~170 bytes each); "more" follows


class Agent(AgentCm):
    def __init__(self, device: str, gid_index: int, addr: str) -> None:
        self.device_name = device
        self.gid_index = gid_index
        self.addr = addr
        self.stack = contextlib.ExitStack()
        self.dev = self.stack.enter_context(Device(device, gid_index=gid_index))
        self.qps: dict[int, AgentQp] = {}
        # QPs destroyed for a gone client (keep-alive): the verbs objects are gone, the
        # record of what arrived stays readable ("arrivals") until the controller's
        # destroy_qp, since the controller accounts a client after it has gone
        self.reaped: dict[int, AgentQp] = {}
        self.next_qp_id = 1
        self.waiting: Waiting = []
        self.cm_listener: cm.CMID | None = None
        self.cm_channel: cm.EventChannel | None = None
        self.cm_params: dict[str, Any] = {}
        self.cm_events: list[dict[str, Any]] = []
        self.cm_delivered = 0
        self.running = True
        self.watch = PartnerWatch()  # whose each QP is; a gone client's QPs, when to reap
        self.current: Owner | None = None  # the connection whose request is being handled
        # epoll: no FD_SETSIZE limit (a QP's completion channel is one fd; 1,024 QPs...)
        self.sel = selectors.DefaultSelector()

    # -- requests: one peer_<event> method per PEER_REQUESTS event (harness.core.handlers)
    def handle(self, msg: Message) -> Reply:
        """Answer a request with its handler; None means "reply later" (a wait)."""
        handler = handler_for(self, "peer_", msg.event, "update the agent", msg.id)
        reply: Reply = handler(msg)
        return reply

    def peer_hello(self, msg: Message) -> Reply:
        return {"device": self.device_name, "pid": os.getpid(), "gid": self.dev.gid,
                "gid_index": self.gid_index}

    def peer_create_qp(self, msg: Message) -> Reply:
        p = msg.payload
        new = self._new_qp(p["mr_size"], p["recv_slots"], p["slot_size"], self.dev)
        new.write_slots = p["write_slots"]
        if self.current is not None:
            self.watch.own(new.qp_id, self.current)
        return {"qp_id": new.qp_id, "info": new.info()}

    def peer_shutdown(self, msg: Message) -> Reply:
        self.running = False
        return {}

    def peer_holders(self, msg: Message) -> Reply:
        return {"pid": os.getpid(), **self.watch.report(time.monotonic())}

    def _qp(self, msg: Message) -> AgentQp:
        """The QP a request names by its qp_id."""
        aq = self.qps.get(msg.payload["qp_id"])
        if aq is None:
            raise RxePowerError(f"no QP with id {msg.payload['qp_id']}", "create it first")
        return aq

    def peer_connect_qp(self, msg: Message) -> Reply:
        aq = self._qp(msg)
        aq.qp.connect(QpInfo.from_json(msg.payload["remote"]))
        aq.post_all_recvs()
        return {"state": aq.qp.state().name}

    def peer_fill(self, msg: Message) -> Reply:
        aq, p = self._qp(msg), msg.payload
        off = aq.rdma_offset(p["offset"], p["length"])
        aq.qp.write_local(off, payload.encode(p["seq"], p["length"]))
        return {}

    def peer_verify(self, msg: Message) -> Reply:
        aq, p = self._qp(msg), msg.payload
        off = aq.rdma_offset(p["offset"], p["length"])
        chk = payload.verify(aq.qp.read_local(off, p["length"]), p["seq"], p["length"])
        return {"ok": chk.ok, "reason": chk.reason, "crc": chk.crc}

    def peer_read_u64(self, msg: Message) -> Reply:
        aq = self._qp(msg)
        off = aq.rdma_offset(msg.payload["offset"], 8)
        return {"value": struct.unpack("<Q", aq.qp.read_local(off, 8))[0]}

    def peer_write_u64(self, msg: Message) -> Reply:
        aq = self._qp(msg)
        off = aq.rdma_offset(msg.payload["offset"], 8)
        aq.qp.write_local(off, struct.pack("<Q", msg.payload["value"] & (2**64 - 1)))
        return {}

    def peer_arrivals(self, msg: Message) -> Reply:
        p = msg.payload
        gone = self.reaped.get(p["qp_id"])
        if gone is not None:  # nothing more can arrive: what there is, now
            return self._arrivals_done(gone, p["count"], 0.0, True)
        aq = self._qp(msg)
        return self._arrivals_done(aq, p["count"], time.monotonic() + p["timeout_s"], False)

    def peer_probe_start(self, msg: Message) -> Reply:
        """Post the probe now, ask for its outcome later ("probe")."""
        self._start_probe(self._qp(msg))
        return {}

    def peer_probe(self, msg: Message) -> Reply:
        """Does our side notice the client is gone? (answered when done)"""
        aq, p = self._qp(msg), msg.payload
        if aq.probe_started is None:
            self._start_probe(aq)
        else:  # started earlier (probe_start): the bound counts from then
            p["_deadline"] = min(p.get("_deadline", float("inf")),
                                 aq.probe_started + p["timeout_s"])
        return self._probe_done(aq, msg)

    def peer_qp_state(self, msg: Message) -> Reply:
        return {"state": self._qp(msg).qp.state().name}

    def peer_to_err(self, msg: Message) -> Reply:
        aq = self._qp(msg)
        aq.qp.to_err()
        return {"state": aq.qp.state().name}

    def peer_destroy_qp(self, msg: Message) -> Reply:
        if self.reaped.pop(msg.payload["qp_id"], None) is not None:
            return {"reaped": True}  # its verbs objects went at the keep-alive bound
        self._destroy_qp(self._qp(msg))
        return {}

    def _new_qp(self, mr_size: int, recv_slots: int, slot_size: int, dev: Device) -> AgentQp:
        if recv_slots < 1 or slot_size < 1 or recv_slots * slot_size >= mr_size:
            raise RxePowerError(f"mr_size {mr_size} must exceed recv_slots*slot_size "
                                f"({recv_slots}*{slot_size})", "enlarge mr_size")
        params = QpParams(max_send_wr=16, max_recv_wr=recv_slots, mr_size=mr_size)
        qp = RcQp(dev, params)
        aq = AgentQp(self.next_qp_id, qp, recv_slots, slot_size)
        self.qps[aq.qp_id] = aq
        self.sel.register(qp.channel_fd, selectors.EVENT_READ, aq)
        self.next_qp_id += 1
        return aq

    def _destroy_qp(self, aq: AgentQp) -> None:
        del self.qps[aq.qp_id]
        self.watch.forget(aq.qp_id)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(aq.qp.channel_fd)  # before the fd closes
        aq.qp.close()
        if aq.cmid is not None:
            aq.cmid.close()

    def _start_probe(self, aq: AgentQp) -> None:
        if aq.probe_started is None:
            aq.probe_started, aq.probe_done = time.monotonic(), None
            aq.qp.post_send(PROBE_WR_ID, opcode("SEND"), aq.rdma_base, 16)

    def _probe_done(self, aq: AgentQp, msg: Message) -> dict[str, Any] | None:
        if aq.probe_done is None and time.monotonic() < msg.payload["_deadline"]:
            return None
        started = aq.probe_started or time.monotonic()
        status, t = aq.probe_done or ("NO_COMPLETION", time.monotonic())
        aq.probe_started = None
        return {"status": status, "seconds": round(t - started, 4)}

    def _arrivals_done(self, aq: AgentQp, count: int, deadline: float,
                       final: bool) -> dict[str, Any] | None:
        """New arrivals once `count` are there (or at the deadline), at most ARRIVALS_PAGE
        per reply: "more" says the rest follows on the next request."""
        pending = len(aq.arrivals) - aq.delivered
        if pending >= count or final or time.monotonic() >= deadline:
            new = aq.arrivals[aq.delivered:aq.delivered + ARRIVALS_PAGE]
            aq.delivered += len(new)
            events, aq.events = aq.events, []
            return {"arrivals": [a.to_json() for a in new], "events": events,
                    "complete": pending >= count, "more": pending > len(new)}
        return None

    # -- loop
    def serve(self, listen_sock: socket.socket, gate: AuthGate | None = None) -> None:
        """The first connection is the owner: the agent exits when it goes. Client workers
        may connect later to set up their own QPs; their going changes nothing else. With
        `gate` (TCP), a connection counts only once it passed the handshake
        (harness.core.peer_auth); before, nothing it sends is answered."""
        conns: dict[socket.socket, LineReader] = {}
        whose: dict[socket.socket, Owner] = {}
        owner: socket.socket | None = None
        sel = self.sel
        sel.register(listen_sock, selectors.EVENT_READ, "listen")

        def admit(conn: socket.socket) -> None:
            nonlocal owner
            owner = owner or conn
            conns[conn] = LineReader()
            whose[conn] = Owner(len(whose), peer_pid(conn), conn is owner)
            sel.register(conn, selectors.EVENT_READ, "conn")
        try:
            while self.running:
                timeout = SELECT_TICK_S
                if self.waiting:
                    timeout = max(0.0, min(timeout, *(d - time.monotonic()
                                                        for _, _, d in self.waiting)))
                due = self.watch.next_due()
                if due is not None:
                    timeout = max(0.0, min(timeout, due - time.monotonic()))
                ready = sel.select(timeout)
                # completions first (only the QPs whose channel fired), then the rest
                for key, _ in ready:
                    if isinstance(key.data, AgentQp) and key.data.qp_id in self.qps:
                        key.data.handle_completions(True)
                for key, _ in ready:
                    if key.data == "cm" and self.cm_channel is not None:
                        self._cm_on_event()
                    elif key.data == "listen":
                        conn, _ = listen_sock.accept()
                        if gate is None:
                            admit(conn)
                        elif gate.open(conn) is Verdict.PENDING:
                            sel.register(conn, selectors.EVENT_READ, "auth")
                    elif key.data == "auth" and gate is not None and key.fileobj in gate.pending:
                        conn = key.fileobj
                        verdict = gate.on_readable(conn)
                        if verdict is not Verdict.PENDING:
                            sel.unregister(conn)
                        if verdict is Verdict.ADMITTED:
                            admit(conn)
                    elif key.data == "conn" and key.fileobj in conns:
                        conn = key.fileobj
                        self.current = whose[conn]
                        try:
                            alive = self._read(conn, conns[conn])
                        finally:
                            self.current = None
                        if not alive:
                            if conn is owner:
                                return  # controller gone: exit and close everything
                            self.watch.partner_gone(whose.pop(conn).conn, time.monotonic())
                            conns.pop(conn)
                            sel.unregister(conn)
                            conn.close()
                            self.waiting = [w for w in self.waiting if w[0] is not conn]
                for late in gate.expire(time.monotonic()) if gate is not None else []:
                    sel.unregister(late)  # refused and closed by the gate
                self._finish_waits()
                self._reap_gone_partners()
        finally:
            for conn in [*conns, *(gate.pending if gate is not None else ())]:
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(conn)
                conn.close()
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(listen_sock)

    def _reap_gone_partners(self) -> None:
        """Destroy the QPs of clients gone for the keep-alive bound (harness.peer.keepalive)."""
        now = time.monotonic()
        for qp_id in self.watch.due(now):
            rec = self.watch.destroyed(qp_id, now)
            if qp_id in self.qps:
                self.reaped[qp_id] = self.qps[qp_id]
                self._destroy_qp(self.qps[qp_id])
            print(f"peer_agent: destroyed QP {qp_id} of pid {rec.owner_pid}: its connection "
                  f"closed {rec.gone_s} s ago (keep-alive bound {self.watch.timeout_s:g} s)",
                  file=sys.stderr, flush=True)

    def _read(self, conn: socket.socket, reader: LineReader) -> bool:
        """Handle what one connection sent; False when it is gone or misbehaved."""
        return read_and_dispatch(conn, reader, self.handle, self.waiting)

    # -- waits: one wait_<event> method per WAIT_EVENTS event, asked again each loop turn
    def wait_arrivals(self, msg: Message, deadline: float) -> Reply:
        aq = self.qps.get(msg.payload["qp_id"])
        if aq is None:
            return {"error": "QP destroyed while waiting"}
        return self._arrivals_done(aq, msg.payload["count"], deadline, False)

    def wait_probe(self, msg: Message, deadline: float) -> Reply:
        aq = self.qps.get(msg.payload["qp_id"])
        if aq is None:
            return {"error": "QP destroyed while waiting"}
        return self._probe_done(aq, msg)

    def _finish_waits(self) -> None:
        still: Waiting = []
        for c, msg, deadline in self.waiting:
            try:
                wait = handler_for(self, "wait_", msg.event, "update the agent", msg.id)
                reply: Reply = wait(msg, deadline)
                if reply is None:
                    still.append((c, msg, deadline))
                else:
                    c.sendall(Message("ok", reply, msg.id).encode())
            except OSError:
                continue  # the connection is gone: the select loop notices and drops it
            except Exception as exc:  # a wait that fails is answered, never kills the agent
                with contextlib.suppress(OSError):
                    c.sendall(error_reply(exc, msg.id))
        self.waiting = still

    def close(self) -> None:
        self._cm_stop()
        for aq in list(self.qps.values()):
            self._destroy_qp(aq)
        self.stack.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="peer_agent", description="rxe-power remote peer agent")
    ap.add_argument("--device", required=True)
    ap.add_argument("--gid-index", type=int, required=True)
    ap.add_argument("--addr", required=True, help="the peer's IPv4 address (for rdma_cm)")
    add_listen_arguments(ap)
    args = ap.parse_args(argv)
    for problem in listen_problems(args):
        print(f"peer_agent: error: {problem}\n  fix: give the peer's own address on the "
              "test link (e.g. 198.18.0.2), a port, and the run's secret file",
              file=sys.stderr, flush=True)
        return 2
    raise_fd_limit()
    try:
        agent = Agent(args.device, args.gid_index, args.addr)
    except RxePowerError as exc:
        print(f"peer_agent: error: {exc}", file=sys.stderr, flush=True)
        return 2
    srv: socket.socket | None = None
    try:
        srv, gate, where_text = listener(args)
        srv.listen(8)
        print(f"READY {os.getpid()} {where_text}", flush=True)
        agent.serve(srv, gate)
    except RxePowerError as exc:  # the secret file
        print(f"peer_agent: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        if srv is not None:
            srv.close()
        agent.close()
        if args.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

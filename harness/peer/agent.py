"""The remote peer: a stand-alone process bound to the peer HCA (rxe1).

    python -m harness.peer_agent --device rxe1 --gid-index 1 --addr 198.18.0.2 --socket PATH

It listens on a Unix socket for its controller (and client workers), speaks the (event, payload)
protocol of harness.protocol, and runs one select() loop over the control socket,
every QP's completion channel and the rdma_cm event channel, so no pyverbs call
ever blocks. It records every arrival (seq, opcode, length, checksum verdict,
QP generation, time) and every event of its own (completion errors, flushed
receives, CM events) and reports them on request. It exits when the controller
goes away; every verbs object is closed by construction on the way out.

Memory layout of each QP's MR: `recv_slots` receive slots of `slot_size` bytes,
then the RDMA area (the remote side's target for WRITE/READ/atomics); offsets
in fill/verify/read_u64/write_u64 are relative to the RDMA area. A
WRITE_WITH_IMM with imm = seq must land in slot (seq mod write_slots) of the
area (slots of `slot_size`), where the agent checks it on arrival like a SEND.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.core.errors import FramingError, ProtocolError, RxePowerError
from harness.core.protocol import LineReader, Message, decode, error_reply
from harness.core.schemas import ChannelKind
from harness.rdma import payload
from harness.rdma.names import wc_status_name
from harness.rdma.payload import GOODBYE_SEQ
from harness.rdma.verbs import Device, QpInfo, QpParams, RcQp, opcode, raise_fd_limit

SELECT_TICK_S = 0.5  # upper bound on one loop turn (deadline checks), not a sleep
POLL_BATCH = 64  # completions taken per poll call
ARRIVALS_PAGE = 4000  # arrivals per "arrivals" reply at most (~170 bytes each); "more" follows
WC_RECV, WC_RECV_RDMA_WITH_IMM = 128, 129  # enum ibv_wc_opcode
WAIT_EVENTS = ("arrivals", "probe", "cm_events")  # answered when done or at payload timeout_s
IBV_WC_WITH_IMM = 1 << 1
Waiting = list[tuple[socket.socket, Message, float]]  # (connection, request, its deadline)
PROBE_WR_ID = 0xFFFF_FFFF_0000  # the agent's own probe SEND


@dataclass(slots=True)
class Arrival:
    seq: int | None
    opcode: str
    length: int
    ok: bool
    reason: str
    crc: int
    generation: int
    t: float

    def to_json(self) -> dict:
        return {"seq": self.seq, "opcode": self.opcode, "length": self.length, "ok": self.ok,
                "reason": self.reason, "crc": self.crc, "generation": self.generation,
                "t": self.t}


@dataclass
class AgentQp:
    qp_id: int
    qp: RcQp
    recv_slots: int
    slot_size: int
    generation: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    delivered: int = 0  # arrivals already handed to the controller
    write_slots: int = 0  # WRITE_WITH_IMM slots at the start of the area (0: all of it)
    probe_started: float | None = None
    probe_done: tuple[str, float] | None = None
    cmid: object | None = None
    recv_wrs: list = field(default_factory=list)  # one prebuilt receive WR per slot

    @property
    def rdma_base(self) -> int:
        return self.recv_slots * self.slot_size

    def info(self) -> dict:
        base = self.qp.info()
        return QpInfo(base.qpn, base.psn, base.gid, base.rkey, base.addr + self.rdma_base,
                      base.length - self.rdma_base).to_json()

    def post_all_recvs(self) -> None:
        if not self.recv_wrs:
            self.recv_wrs = [self.qp.recv_wr(slot, slot * self.slot_size, self.slot_size)
                             for slot in range(self.recv_slots)]
        for wr in self.recv_wrs:
            self.qp.post_recv_wr(wr)

    def handle_completions(self, ready: bool | None = None) -> None:
        """Take every completion there is, in batches. `ready`: the channel is known to
        be readable (the agent's selector said so)."""
        while True:
            wcs = self.qp.poll(POLL_BATCH, ready)
            ready = False
            for wc in wcs:
                self._completion(wc)
            if len(wcs) < POLL_BATCH:
                return

    def _completion(self, wc: object) -> None:
        code, wr_id = wc.status, wc.wr_id
        if wr_id == PROBE_WR_ID:
            self.probe_done = (wc_status_name(code), time.monotonic())
            return
        if code:
            self.events.append({"kind": "wc_error", "status": wc_status_name(code),
                                "wr_id": wr_id, "vendor_err": wc.vendor_err,
                                "t": time.monotonic()})
            return
        op = wc.opcode
        if op != WC_RECV and op != WC_RECV_RDMA_WITH_IMM:
            return
        seq = wc.imm_data if wc.wc_flags & IBV_WC_WITH_IMM else None
        n = wc.byte_len
        if op == WC_RECV:
            if seq == GOODBYE_SEQ:  # the client's orderly disconnect
                self.arrivals.append(Arrival(seq, "GOODBYE", 0, True, "", 0, self.generation,
                                             time.monotonic()))
                self.qp.to_err()  # our half: flush our receives (reported as events)
                return
            off = wr_id * self.slot_size
            chk = payload.verify(self.qp.view[off:off + n], expect_seq=seq)  # in place
            self.arrivals.append(Arrival(chk.seq, "RECV", n, chk.ok, chk.reason, chk.crc,
                                         self.generation, time.monotonic()))
        elif seq is None:  # cannot happen for WITH_IMM; recorded, not checked
            self.arrivals.append(Arrival(None, "RECV_RDMA_WITH_IMM", n, False, "no imm", 0,
                                         self.generation, time.monotonic()))
        else:  # WRITE_WITH_IMM: the writer put seq's payload in seq's slot of the area
            off = self.write_slot(seq)
            chk = payload.verify(self.qp.view[off:off + n], expect_seq=seq)
            self.arrivals.append(Arrival(chk.seq, "RECV_RDMA_WITH_IMM", n, chk.ok, chk.reason,
                                         chk.crc, self.generation, time.monotonic()))
        self.qp.post_recv_wr(self.recv_wrs[wr_id])

    def write_slot(self, seq: int) -> int:
        """Where a WRITE_WITH_IMM carrying `seq` lands: slot (seq mod write_slots) of the
        area (write_slots 0: as many slots as the area holds)."""
        slots = self.write_slots or max(1, (self.qp.params.mr_size - self.rdma_base)
                                        // self.slot_size)
        return self.rdma_base + (seq % slots) * self.slot_size

    def rdma_offset(self, offset: int, length: int) -> int:
        area = self.qp.params.mr_size - self.rdma_base
        if offset < 0 or length < 0 or offset + length > area:
            raise RxePowerError(f"[{offset}, {offset + length}) is outside the RDMA area of "
                                f"{area} bytes", "ask for a larger mr_size in create_qp")
        return self.rdma_base + offset


class Agent:
    def __init__(self, device: str, gid_index: int, addr: str) -> None:
        self.device_name = device
        self.gid_index = gid_index
        self.addr = addr
        self.stack = contextlib.ExitStack()
        self.dev = self.stack.enter_context(Device(device, gid_index=gid_index))
        self.qps: dict[int, AgentQp] = {}
        self.next_qp_id = 1
        self.waiting: Waiting = []
        self.cm_listener: object | None = None
        self.cm_channel = None
        self.cm_params: dict = {}
        self.cm_events: list[dict] = []
        self.cm_delivered = 0
        self.running = True
        # epoll: no FD_SETSIZE limit (a QP's completion channel is one fd; 1,024 QPs...)
        self.sel = selectors.DefaultSelector()

    # -- requests
    def handle(self, msg: Message) -> dict | None:
        """Answer a request; None means "reply later" (a wait)."""
        p = msg.payload
        ev = msg.event
        if ev == "hello":
            return {"device": self.device_name, "pid": os.getpid(), "gid": self.dev.gid,
                    "gid_index": self.gid_index}
        if ev == "create_qp":
            aq = self._new_qp(p["mr_size"], p["recv_slots"], p["slot_size"], self.dev)
            aq.write_slots = p["write_slots"]
            return {"qp_id": aq.qp_id, "info": aq.info()}
        if ev == "cm_listen":
            return self._cm_listen(p)
        if ev == "cm_events":
            return self._cm_wait_done(msg, time.monotonic())
        if ev == "cm_stop":
            self._cm_stop()
            return {}
        if ev == "shutdown":
            self.running = False
            return {}
        aq = self.qps.get(p["qp_id"])
        if aq is None:
            raise RxePowerError(f"no QP with id {p['qp_id']}", "create it first")
        if ev == "connect_qp":
            aq.qp.connect(QpInfo.from_json(p["remote"]))
            aq.post_all_recvs()
            return {"state": aq.qp.state().name}
        if ev == "fill":
            off = aq.rdma_offset(p["offset"], p["length"])
            aq.qp.write_local(off, payload.encode(p["seq"], p["length"]))
            return {}
        if ev == "verify":
            off = aq.rdma_offset(p["offset"], p["length"])
            chk = payload.verify(aq.qp.read_local(off, p["length"]), p["seq"], p["length"])
            return {"ok": chk.ok, "reason": chk.reason, "crc": chk.crc}
        if ev == "read_u64":
            off = aq.rdma_offset(p["offset"], 8)
            return {"value": struct.unpack("<Q", aq.qp.read_local(off, 8))[0]}
        if ev == "write_u64":
            off = aq.rdma_offset(p["offset"], 8)
            aq.qp.write_local(off, struct.pack("<Q", p["value"] & (2**64 - 1)))
            return {}
        if ev == "arrivals":
            return self._arrivals_done(aq, p["count"], time.monotonic() + p["timeout_s"], False)
        if ev == "probe_start":  # post the probe now, ask for its outcome later ("probe")
            self._start_probe(aq)
            return {}
        if ev == "probe":  # does our side notice the client is gone? (answered when done)
            if aq.probe_started is None:
                self._start_probe(aq)
            else:  # started earlier (probe_start): the bound counts from then
                p["_deadline"] = min(p.get("_deadline", float("inf")),
                                     aq.probe_started + p["timeout_s"])
            return self._probe_done(aq, msg)
        if ev == "qp_state":
            return {"state": aq.qp.state().name}
        if ev == "to_err":
            aq.qp.to_err()
            return {"state": aq.qp.state().name}
        if ev == "destroy_qp":
            self._destroy_qp(aq)
            return {}
        raise ProtocolError(f"event {ev!r} has no handler", "update the agent")

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
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(aq.qp.channel_fd)  # before the fd closes
        aq.qp.close()
        if aq.cmid is not None:
            aq.cmid.close()

    def _start_probe(self, aq: AgentQp) -> None:
        if aq.probe_started is None:
            aq.probe_started, aq.probe_done = time.monotonic(), None
            aq.qp.post_send(PROBE_WR_ID, opcode("SEND"), aq.rdma_base, 16)

    def _probe_done(self, aq: AgentQp, msg: Message) -> dict | None:
        if aq.probe_done is None and time.monotonic() < msg.payload["_deadline"]:
            return None
        started = aq.probe_started or time.monotonic()
        status, t = aq.probe_done or ("NO_COMPLETION", time.monotonic())
        aq.probe_started = None
        return {"status": status, "seconds": round(t - started, 4)}

    def _arrivals_done(self, aq: AgentQp, count: int, deadline: float,
                       final: bool) -> dict | None:
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

    # -- rdma_cm (passive side)
    def _cm_listen(self, p: dict) -> dict:
        from harness.rdma import cm

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
        from harness.rdma import cm

        assert self.cm_channel is not None
        ev = self.cm_channel.try_get()
        if ev is None:
            return
        name = cm.cm_event_name(int(ev.event_type))
        rec: dict = {"event": name, "t": time.monotonic(), "qp_id": None}
        try:
            if name == "CONNECT_REQUEST":
                cmid = cm.CMID(creator=ev, listen_id=self.cm_listener)
                dev = Device.borrow(self.device_name, self.cm_listener.context,
                                    self.cm_listener.pd, self.gid_index)
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
                aq = self._qp_of_event(ev)
                rec["qp_id"] = aq.qp_id if aq else None
                if name == "ESTABLISHED" and aq is not None:
                    cm.drive_qp(aq.cmid, aq.qp, cm.e.IBV_QPS_RTS, "RTR->RTS")
                elif name == "DISCONNECTED" and aq is not None:
                    with contextlib.suppress(Exception):
                        aq.cmid.disconnect()  # complete our half of the disconnect
                    aq.qp.to_err()  # flush our posted receives; counted as wc_error events
        finally:
            ev.ack_cm_event()
        self.cm_events.append(rec)

    def _qp_of_event(self, ev: object) -> AgentQp | None:
        # pyverbs does not expose which cm_id an event names; with one connection at a
        # time (what the tests do) it is the one CM-connected QP still alive.
        live = [aq for aq in self.qps.values() if aq.cmid is not None]
        return live[-1] if live else None

    def _cm_wait_done(self, msg: Message, now: float) -> dict | None:
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

    # -- loop
    def serve(self, listen_sock: socket.socket) -> None:
        """The first connection is the owner: the agent exits when it goes. Client workers
        may connect later to set up their own QPs; their going changes nothing else."""
        owner, _ = listen_sock.accept()
        conns: dict[socket.socket, LineReader] = {owner: LineReader()}
        sel = self.sel
        sel.register(listen_sock, selectors.EVENT_READ, "listen")
        sel.register(owner, selectors.EVENT_READ, "conn")
        try:
            while self.running:
                timeout = SELECT_TICK_S
                if self.waiting:
                    timeout = max(0.0, min(timeout, *(d - time.monotonic()
                                                        for _, _, d in self.waiting)))
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
                        conns[conn] = LineReader()
                        sel.register(conn, selectors.EVENT_READ, "conn")
                    elif key.data == "conn" and key.fileobj in conns:
                        conn = key.fileobj
                        if not self._read(conn, conns[conn]):
                            if conn is owner:
                                return  # controller gone: exit and close everything
                            conns.pop(conn)
                            sel.unregister(conn)
                            conn.close()
                            self.waiting = [w for w in self.waiting if w[0] is not conn]
                self._finish_waits()
        finally:
            for conn in conns:
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(conn)
                conn.close()
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(listen_sock)

    def _read(self, conn: socket.socket, reader: LineReader) -> bool:
        """Handle what one connection sent; False when it is gone or misbehaved."""
        return read_and_dispatch(conn, reader, self.handle, self.waiting)

    def _finish_waits(self) -> None:
        still = []
        for c, msg, deadline in self.waiting:
            try:
                if msg.event in ("arrivals", "probe"):
                    aq = self.qps.get(msg.payload["qp_id"])
                    if aq is None:
                        reply = {"error": "QP destroyed while waiting"}
                    elif msg.event == "probe":
                        reply = self._probe_done(aq, msg)
                    else:
                        reply = self._arrivals_done(aq, msg.payload["count"], deadline, False)
                else:
                    reply = self._cm_wait_done(msg, time.monotonic())
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


def dispatch_line(conn: socket.socket, line: bytes, handle: Callable[[Message], dict | None],
                  waiting: Waiting) -> None:
    """Decode one line from `conn` and answer it. `handle(msg)` returns the reply payload,
    or None to answer later (the request joins `waiting` until its deadline). Any failure,
    from a line that is not a valid message to a handler's exception, is answered with an
    "error" reply (id 0 when the line's id cannot be read) and the connection stays.
    Raises only OSError (the connection is gone)."""
    mid = 0
    try:
        msg = decode(line, ChannelKind.PEER)
        mid = msg.id
        if any(c is conn and w.id == mid for c, w, _ in waiting):
            raise ProtocolError(f"request id {mid} is already outstanding on this connection",
                                "give every request a new id", mid)
        if msg.event in WAIT_EVENTS:  # decode() keeps "_" fields out of what the sender sends
            msg.payload["_deadline"] = time.monotonic() + msg.payload["timeout_s"]
        reply = handle(msg)
        if reply is None:
            waiting.append((conn, msg, msg.payload.get("_deadline", time.monotonic())))
            return
        out = Message("ok", reply, mid).encode()
    except Exception as exc:  # a bad request must never kill the agent
        out = error_reply(exc, mid)
    conn.sendall(out)


def read_and_dispatch(conn: socket.socket, reader: LineReader,
                      handle: Callable[[Message], dict | None], waiting: Waiting) -> bool:
    """Read what `conn` sent and answer every complete line. False: drop the connection
    (it is gone, or its framing broke)."""
    try:
        data = conn.recv(1 << 16)
        if not data:
            return False
        try:
            lines = reader.feed(data)
        except FramingError as exc:
            # A line over MAX_MESSAGE_BYTES without a newline: the framing is broken and
            # this sender cannot be trusted to resynchronise, so answer what came whole
            # before it, say why, and drop this connection (only this one: the agent
            # serves its other connections on; when it is the owner's, the agent ends its
            # session as it does whenever the controller goes).
            for line in exc.lines:
                dispatch_line(conn, line, handle, waiting)
            with contextlib.suppress(OSError):
                conn.sendall(error_reply(exc, 0))
            print(f"peer_agent: dropping a connection: {exc}", file=sys.stderr, flush=True)
            return False
        for line in lines:
            dispatch_line(conn, line, handle, waiting)
    except OSError as exc:
        print(f"peer_agent: dropping a connection: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="peer_agent", description="rxe-power remote peer agent")
    ap.add_argument("--device", required=True)
    ap.add_argument("--gid-index", type=int, required=True)
    ap.add_argument("--addr", required=True, help="the peer's IPv4 address (for rdma_cm)")
    ap.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args = ap.parse_args(argv)
    try:  # the rdma_cm listener binds to --addr: never to all interfaces
        if ipaddress.ip_address(args.addr).is_unspecified:
            raise ValueError("the unspecified address")
    except ValueError as exc:
        print(f"peer_agent: error: --addr {args.addr!r} is not usable ({exc})\n"
              "  fix: give the peer's own address on the test link (e.g. 198.18.0.2)",
              file=sys.stderr, flush=True)
        return 2
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    raise_fd_limit()
    try:
        agent = Agent(args.device, args.gid_index, args.addr)
    except RxePowerError as exc:
        print(f"peer_agent: error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
            srv.bind(args.socket)
            srv.listen(8)
            print(f"READY {os.getpid()} {args.socket}", flush=True)
            agent.serve(srv)
    finally:
        agent.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The rdma_cm connection path (listen / connect / accept / disconnect).

Both ends use an asynchronous event channel whose fd is non-blocking and waited
on with select(), so no pyverbs call ever blocks holding the GIL. The QP is our
own RcQp (an "external" QP for rdma_cm), moved through its states with the
attributes rdma_cm computes (init_qp_attr), so data-path code is the same for
both connection paths.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from harness.errors import BoundExceeded, ProtocolError, RxePowerError, oserror_to
from harness.protocol import loads_strict
from harness.verbs import (
    FD_LOCK,
    Device,
    QpParams,
    RcQp,
    fds_of_kind,
    new_event_fd,
    require_pyverbs,
    verbs_call,
    wait_readable,
)

try:
    import pyverbs.cm_enums as ce
    import pyverbs.enums as e
    from pyverbs.cmid import CMID, AddrInfo, CMEvent, CMEventChannel, ConnParam
    from pyverbs.pyverbs_error import PyverbsError
except ImportError:  # pragma: no cover
    pass

CM_EVENT_TIMEOUT_S = 10.0
CM_RESOLVE_TIMEOUT_MS = 2000
RDMA_CM_FD_KIND = "/dev/infiniband/rdma_cm"

CM_EVENT_NAMES = {
    0: "ADDR_RESOLVED", 1: "ADDR_ERROR", 2: "ROUTE_RESOLVED", 3: "ROUTE_ERROR",
    4: "CONNECT_REQUEST", 5: "CONNECT_RESPONSE", 6: "CONNECT_ERROR", 7: "UNREACHABLE",
    8: "REJECTED", 9: "ESTABLISHED", 10: "DISCONNECTED", 11: "DEVICE_REMOVAL",
    12: "MULTICAST_JOIN", 13: "MULTICAST_ERROR", 14: "ADDR_CHANGE", 15: "TIMEWAIT_EXIT",
}


def cm_event_name(event_type: int) -> str:
    return CM_EVENT_NAMES.get(event_type, f"CM_EVENT_{event_type}")


@dataclass(frozen=True)
class CmEventRecord:
    name: str
    t: float  # time.monotonic()


class EventChannel:
    """An rdma_cm event channel with a non-blocking fd."""

    def __init__(self) -> None:
        require_pyverbs()
        with FD_LOCK:
            before = fds_of_kind(RDMA_CM_FD_KIND)
            with verbs_call("create rdma_cm event channel"):
                self.ch = CMEventChannel()
            self.fd = new_event_fd(before, "rdma_cm event channel", RDMA_CM_FD_KIND)

    def try_get(self) -> CMEvent | None:
        """The next event if one is ready now, else None."""
        if not wait_readable(self.fd, 0):
            return None
        try:
            return CMEvent(self.ch)
        except PyverbsError as exc:
            if "Resource temporarily unavailable" in str(exc):
                return None
            raise oserror_to("rdma_get_cm_event", exc) from exc

    def expect(self, want: str, timeout_s: float = CM_EVENT_TIMEOUT_S,
               ack: bool = True) -> CMEvent:
        """Wait (bounded) for the next event and check it is `want`."""
        deadline = time.monotonic() + timeout_s
        while True:
            ev = self.try_get()
            if ev is not None:
                name = cm_event_name(int(ev.event_type))
                if ack:
                    ev.ack_cm_event()
                if name != want:
                    raise RxePowerError(f"rdma_cm: expected {want}, got {name}",
                                        "check that the peer listens and the route exists")
                return ev
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BoundExceeded(f"rdma_cm waiting for {want}", "CM_EVENT_TIMEOUT_S",
                                    timeout_s, f"the {want} event")
            wait_readable(self.fd, remaining)

    def close(self) -> None:
        self.ch.close()


def conn_param(qpn: int) -> ConnParam:
    return ConnParam(resources=16, depth=16, retry=7, rnr_retry=7, qp_num=qpn)


def drive_qp(cmid: CMID, qp: RcQp, state: int, what: str) -> None:
    attr, mask = cmid.init_qp_attr(state)
    qp.modify_cm(attr, mask, what)


class CmClient:
    """Active side: resolve, connect with our own RcQp, disconnect. A context manager."""

    def __init__(self, dev_name: str, gid_index: int, src: str, dst: str, port: int,
                 params: QpParams | None = None) -> None:
        self._stack = contextlib.ExitStack()
        try:
            self.events = EventChannel()
            self._stack.callback(self.events.close)
            with verbs_call("create rdma_cm id"):
                self.cmid = CMID(creator=self.events.ch, port_space=ce.RDMA_PS_TCP)
            self._stack.callback(self.cmid.close)
            ai = AddrInfo(src=src, dst=dst, dst_service=str(port), port_space=ce.RDMA_PS_TCP)
            with verbs_call(f"rdma_resolve_addr {src} -> {dst}"):
                self.cmid.resolve_addr(ai, CM_RESOLVE_TIMEOUT_MS)
            self.events.expect("ADDR_RESOLVED")
            with verbs_call("rdma_resolve_route"):
                self.cmid.resolve_route(CM_RESOLVE_TIMEOUT_MS)
            self.events.expect("ROUTE_RESOLVED")
            self.dev = Device.borrow(dev_name, self.cmid.context, self.cmid.pd, gid_index)
            self.qp = RcQp(self.dev, params or QpParams())
            self._stack.callback(self.qp.close)
            drive_qp(self.cmid, self.qp, e.IBV_QPS_INIT, "RESET->INIT")
            with verbs_call(f"rdma_connect to {dst}:{port}"):
                self.cmid.connect(conn_param(self.qp.qpn))
            self.events.expect("CONNECT_RESPONSE")
            drive_qp(self.cmid, self.qp, e.IBV_QPS_RTR, "INIT->RTR")
            drive_qp(self.cmid, self.qp, e.IBV_QPS_RTS, "RTR->RTS")
            with verbs_call("rdma_establish"):
                self.cmid.establish()
            self.connected = True
        except BaseException:
            self._stack.close()
            raise

    def disconnect(self, timeout_s: float = CM_EVENT_TIMEOUT_S) -> None:
        """Orderly disconnect: rdma_disconnect, our QP to ERR, wait for DISCONNECTED."""
        if not self.connected:
            return
        with verbs_call("rdma_disconnect"):
            self.cmid.disconnect()
        self.connected = False
        self.qp.to_err()
        self.events.expect("DISCONNECTED", timeout_s)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> CmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a whole rdma_cm session in its own process -------------------------------------------
#
# librdmacm (rdma-core 44) keeps a device's verbs context open for the life of the
# process once rdma_cm has used the device (ucma_put_device closes it only when the
# device is dead). A process that used rdma_cm on rxe0 therefore holds rxe0 until it
# exits, and `rdma link delete rxe0` blocks until then. So the active side of an
# rdma_cm connection runs in a worker process of its own; it prints one JSON result.

CM_CHECK_TIMEOUT_S = 120.0


def cm_session(topo_json: dict, port: int, slots: int = 16, slot_size: int = 1 << 16) -> dict:
    """Listen on the peer (its own agent), connect from the local HCA, run traffic,
    disconnect in order; report what each side saw."""
    from harness import traffic
    from harness.peer import PeerAgent
    from harness.topology import Endpoint

    loc, peer = Endpoint(**topo_json["local"]), Endpoint(**topo_json["peer"])
    out: dict = {}
    with PeerAgent(peer) as agent:
        agent.request("cm_listen", port=port, mr_size=1 << 21, recv_slots=slots,
                      slot_size=slot_size)
        params = QpParams(max_send_wr=slots, max_recv_wr=slots, mr_size=1 << 20)
        with CmClient(loc.dev, loc.gid_index, loc.addr, peer.addr, port, params) as client:
            rep = agent.request("cm_events", count=2, timeout_s=10)
            out["peer_connect_events"] = [ev["event"] for ev in rep["events"]]
            req = rep["events"][0]
            from harness.verbs import QpInfo

            pair = traffic.Pair(client.qp, agent, req["qp_id"], QpInfo.from_json(req["info"]),
                                slots, slot_size)
            ops = [traffic.send_messages(pair, [1, 64, 4096, 65536] * 50),
                   traffic.write_messages(pair, [4096] * 32),
                   traffic.read_messages(pair, [4096] * 32),
                   traffic.atomics(pair, 10)]
            out["operations"] = [op.to_json() for op in ops]
            t0 = time.monotonic()
            client.disconnect()
            out["local_disconnected_s"] = time.monotonic() - t0
            rep = agent.request("cm_events", count=1, timeout_s=10)
            out["peer_disconnect_events"] = [ev["event"] for ev in rep["events"]]
            out["peer_flushed"] = agent.arrivals(req["qp_id"], 0, timeout_s=1)["events"]
            out["slots"] = slots
        agent.request("cm_stop")
    return out


def run_cm_session_in_child(topo_json: dict, port: int,
                            timeout_s: float = CM_CHECK_TIMEOUT_S) -> dict:
    """Run cm_session in a fresh Python process; returns its JSON result."""
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-m", "harness.cm", json.dumps(topo_json), str(port)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BoundExceeded("rdma_cm session worker", "CM_CHECK_TIMEOUT_S", timeout_s,
                            "the worker's connect/traffic/disconnect") from None
    if proc.returncode != 0:
        raise RxePowerError(f"rdma_cm worker exited {proc.returncode}: {proc.stderr[-2000:]}",
                            "see the worker's error above")
    lines = proc.stdout.strip().splitlines()
    try:
        out = loads_strict(lines[-1].encode()) if lines else None
    except ProtocolError as exc:
        raise ProtocolError(f"rdma_cm worker's result line: {exc.problem}",
                            "it prints one JSON object as its last line") from None
    if not isinstance(out, dict):
        raise ProtocolError(f"rdma_cm worker printed no JSON object: {proc.stdout[-400:]!r}",
                            "it prints one JSON object as its last line")
    return out


def main(argv: list[str] | None = None) -> int:
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(cm_session(json.loads(args[0]), int(args[1]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

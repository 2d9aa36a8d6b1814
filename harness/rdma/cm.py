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

from harness.core.errors import BoundExceeded, RxePowerError, oserror_to
from harness.rdma.event_fds import FD_LOCK, fds_of_kind, new_event_fd, wait_readable
from harness.rdma.qp_types import QpParams
from harness.rdma.verbs import Device, RcQp, require_pyverbs, verbs_call
from harness.rdma.verbs_device import Closing

try:
    import pyverbs.cm_enums as ce
    import pyverbs.enums as e
    from pyverbs.cmid import CMID, AddrInfo, CMEvent, CMEventChannel, ConnParam
    from pyverbs.pyverbs_error import PyverbsError
except ImportError:  # pragma: no cover
    pass

# the pyverbs names the passive side (harness.peer.agent) takes from here too
__all__ = [
    "CMID",
    "CM_EVENT_NAMES",
    "CM_EVENT_TIMEOUT_S",
    "CM_RESOLVE_TIMEOUT_MS",
    "RDMA_CM_FD_KIND",
    "AddrInfo",
    "CmClient",
    "EventChannel",
    "ce",
    "cm_event_name",
    "conn_param",
    "drive_qp",
    "e",
]

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


class CmClient(Closing):
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

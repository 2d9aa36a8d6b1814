"""When an outside program's server (`matrix --server-cmd`) is ready, and what was
awaited when SERVER_READY_TIMEOUT_S fires.

Programs meet their server in one of two ways. perftest and ibv_*_pingpong exchange
their QP numbers over TCP: the server listens on the TCP port {port}. Most others
connect through rdma_cm (rping, the common example): the server's rdma_cm id listens on
the peer HCA on the rdma_cm port {port}, and there is no TCP socket at all. So a server
whose command has {port} is ready when either is seen; one without {port} (its own
fixed port) when its rdma_cm id listens on the peer HCA on any port, or when it holds
the peer HCA.

    ready = ServerReady(srv.pid, "rxe1", port)
    ready()               # False until seen; then ready.how says by what
    ready.waited_for()    # what it waits for, for the bound's message; ready.seen: the last look
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.core.errors import RxePowerError
from harness.system.holders import Holder, find_holders
from harness.system.rdma_cm_ids import CmId, cm_ids, listening
from harness.system.tcp_ports import tcp_listening


@dataclass
class ServerReady:
    """A readiness check to poll: True once the server is seen ready (then `how` says by
    what); `seen` keeps what the last look found."""

    pid: int  # the server's
    peer_dev: str  # the HCA it serves on
    port: int | None  # {port} of its command; None: its command has none
    tcp: Callable[[int], bool] = tcp_listening
    cm: Callable[[], list[CmId]] = cm_ids
    holders: Callable[[str], list[Holder]] = find_holders
    seen: str = "nothing looked at yet"
    how: str = ""

    def waited_for(self) -> str:
        cm = f"an rdma_cm id of pid {self.pid} listening on {self.peer_dev}"
        if self.port is None:
            return f"{cm} (any port), or pid {self.pid} holding {self.peer_dev}"
        return f"TCP port {self.port} listening, or {cm} port {self.port}"

    def __call__(self) -> bool:
        if self.port is not None and self.tcp(self.port):
            self.how = f"TCP port {self.port} listening"
            return True
        if self.port is None and any(h.pid == self.pid for h in self.holders(self.peer_dev)):
            self.how = f"pid {self.pid} holding {self.peer_dev}"
            return True
        try:
            ids = self.cm()
        except RxePowerError as exc:
            self.seen = f"no rdma_cm ids: {exc.problem}"
            return False
        if found := listening(ids, self.peer_dev, self.pid, self.port):
            self.how = f"rdma_cm id {found[0]}"
            return True
        own = [str(c) for c in ids if c.pid == self.pid]
        self.seen = f"rdma_cm ids of pid {self.pid}: {', '.join(own) or 'none'}"
        if self.port is not None:
            self.seen += f"; TCP port {self.port} not listening"
        return False

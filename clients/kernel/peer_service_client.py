"""The local side's handle on the peer guest's service (clients.kernel.peer_service): a TCP
connection on the management link, authenticated with the run's secret, speaking the
SERVICE channel. Once connected the harness reaches the peer's kernel only through it:
no shared file, no process table.

    with PeerServiceClient("198.18.1.2", SERVICE_TCP_PORT, secret) as svc:
        svc.hello                          # the peer's kernel, boot id, HCA (DeviceInfo)
        svc.port_state()                   # "ACTIVE", read in the peer's kernel
        target = svc.nvmet_target(TargetConfig(addr=..., size_mib=64))
        target.setup(); target.read_block(7, 4096); target.teardown()
        server = svc.nfs_server(ServerConfig(client_addr="198.18.0.1"))   # nfsd there

A RemoteNvmetTarget has what clients.kernel.nvme_scenario uses of an NvmetTarget: its
`cfg` (nqn, address, service id), setup, read_block (read ahead in runs of
MAX_READ_BLOCKS: the ledger reads every acknowledged block once) and teardown.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any

from clients.kernel.nfs_server import ServerConfig
from clients.kernel.nvmet_target import TargetConfig
from clients.kernel.peer_service import MAX_READ_BLOCKS
from harness.core.device import DeviceInfo
from harness.core.errors import BoundExceeded, ProtocolError, RxePowerError
from harness.core.protocol import REPLY_TIMEOUT_S, WorkerError
from harness.core.schemas import ChannelKind
from harness.peer.remote import AGENT_CONNECT_TIMEOUT_S, close_channel, open_channel

NVMET_SETUP_TIMEOUT_S = 120.0  # modprobe of nvmet, nvmet-rdma, null_blk in the peer guest


@dataclass(frozen=True)
class RemoteTargetConfig:
    """A target's address as the peer's service made it (its nqn carries the service's
    pid, so it is known only once made)."""

    nqn: str
    addr: str
    trsvcid: int
    size_mib: int
    block_size: int


class PeerServiceClient:
    def __init__(self, host: str, port: int, secret: bytes,
                 connect_timeout_s: float = AGENT_CONNECT_TIMEOUT_S) -> None:
        self.where = f"{host}:{port}"
        self.chan, self.hello = open_channel(host, port, secret, ChannelKind.SERVICE,
                                             "peer service", connect_timeout_s)
        try:
            self.device = DeviceInfo.from_json(self.hello.get("device"))
        except BaseException:
            self.chan.sock.close()
            raise

    def request(self, event: str, reply_timeout_s: float = REPLY_TIMEOUT_S,
                **payload: Any) -> dict[str, Any]:
        return self.chan.request(event, reply_timeout_s, **payload)

    def port_state(self) -> str:
        """The peer HCA's port state; "unknown: ..." when the service answered that it
        could not read it, "unreachable: ..." when it did not answer (the peer guest
        died: the row says so, the shim does not wait)."""
        try:
            state = self.request("port_state").get("state")
        except WorkerError as exc:
            return f"unknown: {exc.problem}"
        except (ProtocolError, BoundExceeded, OSError) as exc:
            return f"unreachable: {exc}"
        return str(state)

    def nvmet_target(self, cfg: TargetConfig) -> RemoteNvmetTarget:
        return RemoteNvmetTarget(self, cfg)

    def nfs_server(self, cfg: ServerConfig) -> RemoteNfsServer:
        return RemoteNfsServer(self, cfg)

    def close(self) -> None:
        close_channel(self.chan)

    def __enter__(self) -> PeerServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteNvmetTarget:
    """An nvmet-rdma target in the peer's kernel, made and read through its service."""

    def __init__(self, svc: PeerServiceClient, want: TargetConfig) -> None:
        self.svc = svc
        self.want = want
        self._made: RemoteTargetConfig | None = None
        self._cache: dict[int, bytes] = {}

    @property
    def cfg(self) -> RemoteTargetConfig | TargetConfig:
        """The made target's address; before setup, what was asked for (its service id)."""
        return self._made or replace(self.want, addr=self.svc.device.addr)

    def setup(self) -> None:
        w = self.want
        got = self.svc.request("nvmet_setup", NVMET_SETUP_TIMEOUT_S, trsvcid=w.trsvcid,
                               size_mib=w.size_mib, block_size=w.block_size)
        self._made = RemoteTargetConfig(str(got["nqn"]), str(got["addr"]),
                                        int(got["trsvcid"]), w.size_mib, w.block_size)

    def read_block(self, index: int, size: int) -> bytes:
        if self._made is None:
            raise RxePowerError("read_block before the remote target was set up",
                                "call setup() first")
        if index not in self._cache:
            got = self.svc.request("nvmet_read", nqn=self._made.nqn, index=index,
                                   count=MAX_READ_BLOCKS, size=size)
            data = base64.b64decode(str(got["data"]), validate=True)
            for i in range(int(got["count"])):
                self._cache[index + i] = data[i * size:(i + 1) * size]
        return self._cache[index]

    def teardown(self) -> list[str]:
        if self._made is None:
            return []
        try:
            got = self.svc.request("nvmet_teardown", nqn=self._made.nqn)
        except (ProtocolError, BoundExceeded, OSError) as exc:
            return [f"the peer's target {self._made.nqn}: {exc}"]
        problems = [str(p) for p in got.get("problems", [])]
        if not problems:
            self._made = None
        return problems


class RemoteNfsServer:
    """The NFS server in the peer's kernel, made and read through its service: what
    clients.kernel.nfs_scenario uses of an NfsServer (its `cfg.port`, setup, make_file,
    read_block, teardown and the `notes` of a last resort)."""

    def __init__(self, svc: PeerServiceClient, want: ServerConfig) -> None:
        self.svc = svc
        self.cfg = want
        self.notes: list[str] = []
        self._made = False
        self._cache: dict[tuple[str, int], bytes] = {}

    def setup(self) -> None:
        got = self.svc.request("nfs_setup", NVMET_SETUP_TIMEOUT_S,
                               client_addr=self.cfg.client_addr, size_mib=self.cfg.size_mib)
        self.cfg = replace(self.cfg, port=int(got["port"]))
        self._made = True

    def make_file(self, name: str, size: int) -> None:
        self.svc.request("nfs_file", name=name, size=size)

    def read_block(self, name: str, index: int, size: int) -> bytes:
        if (name, index) not in self._cache:
            got = self.svc.request("nfs_read", name=name, index=index, count=MAX_READ_BLOCKS,
                                   size=size)
            for i, b64 in enumerate(got["blocks"]):
                self._cache[(name, index + i)] = base64.b64decode(str(b64), validate=True)
        return self._cache[(name, index)]

    def teardown(self) -> list[str]:
        if not self._made:
            return []
        try:
            got = self.svc.request("nfs_teardown", NVMET_SETUP_TIMEOUT_S)
        except (ProtocolError, BoundExceeded, OSError) as exc:
            return [f"the peer's NFS server: {exc}"]
        self.notes += [str(n) for n in got.get("notes", [])]
        problems = [str(p) for p in got.get("problems", [])]
        self._made = bool(problems)
        return problems

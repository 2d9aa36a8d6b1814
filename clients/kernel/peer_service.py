"""The peer side's kernel-client servers, in the peer's own kernel (issue 24): one process
in the peer guest that makes the nvmet-rdma target the local kernel's nvme-rdma connects
to and the NFS server (nfsd over RDMA) its NFS client mounts, reads their stores back
for the ledger, tells the peer HCA's port state, and removes everything it made when its
owner goes.

    python -P -m clients.kernel.peer_service --device rxe1 --addr 198.18.0.2 \\
        --listen 198.18.1.2:18771 --secret-file F

It listens on TCP (the management link, never the faulted wire) behind the run's secret
(harness.core.peer_auth: a connection proves it holds the secret before one request is
read), speaks the SERVICE channel of harness.core.schemas (one service_<event> method per
event of SERVICE_REQUESTS, harness.core.handlers), and serves one owner: the first
connection that passes the handshake. When that connection closes (or sends `shutdown`),
every target it made is torn down, newest first, and the process exits. Every request
field is checked here: the harness on the other side is trusted only as far as the
secret goes, and the service runs as root.

The target is bound to the service's own --addr (a request cannot move it), its names
carry the `rxpw` prefix and this process's pid (clients.kernel.nvmet_target), and each
part is on this kernel's state file before it is made.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
import re
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

from clients.kernel.nfs_server import NfsServer, ServerConfig
from clients.kernel.nvmet_target import NvmetTarget, TargetConfig
from harness.core.device import DeviceInfo
from harness.core.errors import ProtocolError, RxePowerError
from harness.core.handlers import handler_for
from harness.core.peer_auth import AuthGate, Verdict, read_secret
from harness.core.protocol import LineReader, Message, decode, error_reply
from harness.core.schemas import ChannelKind
from harness.core.state import StateFile
from harness.system import gid_table, network
from harness.system.inventory import rdma_links

SERVICE_TCP_PORT = 18771  # on the management link only (the agent's is 18770)
SESSION_TIMEOUT_S = 3600.0  # no owner, or an owner that never lets go: the service ends
MAX_SIZE_MIB = 1024  # a target's store (null_blk, memory-backed: the peer's RAM)
BLOCK_SIZES = (512, 4096)
MAX_READ_BLOCKS = 64  # one nvmet_read reply: 64 x 4 KiB, base64, under MAX_MESSAGE_BYTES
MAX_TARGETS = 8
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
FILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # a file of the NFS export


class PeerService:
    """What the service does for its owner: one service_<event> per SERVICE_REQUESTS."""

    def __init__(self, device: str, addr: str, state: StateFile | None = None) -> None:
        self.device, self.addr = device, addr
        self.state = state or StateFile.load()
        self.targets: dict[str, NvmetTarget] = {}  # nqn -> target, in the order made
        self.nfs: NfsServer | None = None
        self.running = True

    def handle(self, msg: Message) -> dict[str, Any]:
        handler = handler_for(self, "service_", msg.event, "update the peer service", msg.id)
        reply: dict[str, Any] = handler(msg)
        return reply

    def service_hello(self, msg: Message) -> dict[str, Any]:
        """Whose kernel this is (its release and boot id: the local side's evidence that
        the peer is another kernel) and the peer HCA as the local side's topology needs
        it (harness.core.device.DeviceInfo's fields, and its port state)."""
        lk = {lk.ifname: lk for lk in rdma_links()}.get(self.device)
        if lk is None or lk.netdev is None:
            raise RxePowerError(f"the peer HCA {self.device} is not there (or has no netdev)",
                                "set up the peer side first (harness.topology.wire)")
        gid = gid_table.lookup_rocev2_gid(self.device, self.addr, lk.port)
        net = network.sysfs_netdev(lk.netdev)
        if gid is None or net is None:
            raise RxePowerError(f"{self.device} has no RoCEv2 GID for {self.addr} on "
                                f"{lk.netdev}", "wait for the address to be up")
        device = DeviceInfo(self.device, lk.port, lk.netdev, net[0], self.addr, gid.gid,
                            gid.index)
        return {"kernel": os.uname().release, "boot_id": BOOT_ID.read_text().strip(),
                "pid": os.getpid(), "device": device.to_json(), "state": lk.state}

    def service_port_state(self, msg: Message) -> dict[str, Any]:
        lk = {lk.ifname: lk for lk in rdma_links()}.get(self.device)
        return {"device": self.device, "state": lk.state if lk else "absent"}

    def service_nvmet_setup(self, msg: Message) -> dict[str, Any]:
        p = msg.payload
        _check_range("trsvcid", p["trsvcid"], 1, 65535, msg.id)
        _check_range("size_mib", p["size_mib"], 1, MAX_SIZE_MIB, msg.id)
        if p["block_size"] not in BLOCK_SIZES:
            raise ProtocolError(f"block_size {p['block_size']} is not one of {BLOCK_SIZES}",
                                "ask for 512 or 4096", msg.id)
        if len(self.targets) >= MAX_TARGETS:
            raise ProtocolError(f"{MAX_TARGETS} targets exist already",
                                "tear one down first", msg.id)
        cfg = TargetConfig(addr=self.addr, trsvcid=p["trsvcid"], size_mib=p["size_mib"],
                           block_size=p["block_size"], tag=f"t{len(self.targets)}")
        target = NvmetTarget(cfg, self.state)
        target.setup()
        self.targets[cfg.nqn] = target
        return {"nqn": cfg.nqn, "addr": cfg.addr, "trsvcid": cfg.trsvcid,
                "backing": str(target.backing_device)}

    def _target(self, msg: Message) -> NvmetTarget:
        target = self.targets.get(msg.payload["nqn"])
        if target is None:
            raise ProtocolError(f"no target {msg.payload['nqn']!r} of this service",
                                f"use an nqn nvmet_setup returned ({len(self.targets)} "
                                "made)", msg.id)
        return target

    def service_nvmet_read(self, msg: Message) -> dict[str, Any]:
        target, p = self._target(msg), msg.payload
        _check_range("count", p["count"], 1, MAX_READ_BLOCKS, msg.id)
        if p["size"] != target.cfg.block_size:
            raise ProtocolError(f"size {p['size']} is not the target's block size "
                                f"{target.cfg.block_size}", "read whole blocks", msg.id)
        blocks = target.cfg.size_mib * 1024 * 1024 // target.cfg.block_size
        count = min(p["count"], blocks - p["index"])
        if count <= 0:
            raise ProtocolError(f"block {p['index']} is past the store's {blocks} blocks",
                                "read inside the store", msg.id)
        data = b"".join(target.read_block(p["index"] + i, p["size"]) for i in range(count))
        return {"index": p["index"], "count": count,
                "data": base64.b64encode(data).decode("ascii")}

    def service_nvmet_teardown(self, msg: Message) -> dict[str, Any]:
        target = self._target(msg)
        problems = target.teardown()
        if not problems:
            del self.targets[msg.payload["nqn"]]
        return {"problems": problems}

    def service_nfs_setup(self, msg: Message) -> dict[str, Any]:
        """The NFS server (nfsd over RDMA, a tmpfs export open to `client_addr` only:
        clients.kernel.nfs_server); one per service."""
        p = msg.payload
        if self.nfs is not None:
            raise ProtocolError("this service's NFS server runs already",
                                "tear it down first (nfs_teardown)", msg.id)
        _check_range("size_mib", p["size_mib"], 1, MAX_SIZE_MIB, msg.id)
        try:
            client = ipaddress.IPv4Address(p["client_addr"])
        except ValueError:
            raise ProtocolError(f"client_addr {p['client_addr'][:40]!r} is not an IPv4 "
                                "address", "give the local side's wire address", msg.id) from None
        if client.is_unspecified or client.is_multicast:
            raise ProtocolError(f"client_addr {client} is not one host",
                                "give the local side's wire address", msg.id)
        srv = NfsServer(ServerConfig(client_addr=str(client), size_mib=p["size_mib"]),
                        self.state)
        srv.setup()
        self.nfs = srv
        return {"port": srv.cfg.port}

    def _nfs_file(self, msg: Message) -> tuple[NfsServer, str]:
        if self.nfs is None:
            raise ProtocolError("this service runs no NFS server", "nfs_setup first", msg.id)
        name = msg.payload["name"]
        if not FILE_NAME.fullmatch(name):
            raise ProtocolError(f"file name {name[:40]!r} is not {FILE_NAME.pattern}",
                                "name a file of the export by a plain name", msg.id)
        return self.nfs, name

    def service_nfs_file(self, msg: Message) -> dict[str, Any]:
        srv, name = self._nfs_file(msg)
        _check_range("size", msg.payload["size"], 0, srv.cfg.size_mib << 20, msg.id)
        srv.make_file(name, msg.payload["size"])
        return {}

    def service_nfs_read(self, msg: Message) -> dict[str, Any]:
        srv, name = self._nfs_file(msg)
        p = msg.payload
        _check_range("count", p["count"], 1, MAX_READ_BLOCKS, msg.id)
        _check_range("size", p["size"], 1, max(BLOCK_SIZES), msg.id)
        _check_range("index", p["index"], 0, (srv.cfg.size_mib << 20) // p["size"], msg.id)
        blocks = [srv.read_block(name, p["index"] + i, p["size"]) for i in range(p["count"])]
        return {"index": p["index"], "blocks": [base64.b64encode(b).decode("ascii")
                                                 for b in blocks]}

    def service_nfs_teardown(self, msg: Message) -> dict[str, Any]:
        if self.nfs is None:
            return {"problems": [], "notes": []}
        problems, notes = self.nfs.teardown(), list(self.nfs.notes)
        if not problems:
            self.nfs = None
        return {"problems": problems, "notes": notes}

    def service_shutdown(self, msg: Message) -> dict[str, Any]:
        self.running = False
        return {}

    def close(self) -> list[str]:
        """Tear down every target still there, newest first; what was left."""
        problems: list[str] = []
        if self.nfs is not None:
            problems += self.nfs.teardown()
            self.nfs = None
        for nqn in reversed(list(self.targets)):
            problems += self.targets.pop(nqn).teardown()
        return problems


def _check_range(name: str, value: int, low: int, high: int, mid: int) -> None:
    if not low <= value <= high:
        raise ProtocolError(f"{name} {value} is outside {low}..{high}",
                            f"give a {name} in {low}..{high}", mid)


def admit_owner(srv: socket.socket, gate: AuthGate, deadline: float) -> socket.socket | None:
    """The first connection that passes the handshake (each refused one is closed and
    another awaited); None when `deadline` passes first."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([srv], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        conn, _ = srv.accept()
        verdict = gate.open(conn)
        while verdict is Verdict.PENDING:
            left = (gate.next_deadline() or 0.0) - time.monotonic()
            readable, _, _ = select.select([conn], [], [], max(0.0, left))
            if not readable:
                gate.expire(time.monotonic())
                verdict = Verdict.REFUSED
                break
            verdict = gate.on_readable(conn)
        if verdict is Verdict.ADMITTED:
            return conn
        print("peer_service: a connection was refused at the handshake", file=sys.stderr,
              flush=True)
    return None


def serve_owner(service: PeerService, conn: socket.socket, deadline: float) -> None:
    """Answer the owner's requests, one line at a time, until it goes, asks to shut down,
    or the session's bound passes."""
    reader = LineReader()
    while service.running and time.monotonic() < deadline:
        readable, _, _ = select.select([conn], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            data = conn.recv(1 << 16)
        except OSError:
            break
        if not data:
            break
        try:
            lines = reader.feed(data)
        except ProtocolError as exc:  # a line over the limit: the framing is gone
            conn.sendall(error_reply(exc, 0))
            break
        for line in lines:
            mid = 0
            try:
                msg = decode(line, ChannelKind.SERVICE)
                mid = msg.id
                out = Message("ok", service.handle(msg), mid).encode()
            except Exception as exc:  # a bad request never ends the service
                out = error_reply(exc, mid)
            conn.sendall(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clients.kernel.peer_service")
    ap.add_argument("--device", required=True, help="the peer HCA (rxe1)")
    ap.add_argument("--addr", required=True, help="the peer's wire address: targets bind it")
    ap.add_argument("--listen", required=True, metavar="ADDR:PORT",
                    help="TCP address on the management link")
    ap.add_argument("--secret-file", type=Path, required=True)
    ap.add_argument("--session-timeout-s", type=float, default=SESSION_TIMEOUT_S)
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or host in ("", "0.0.0.0"):
        ap.error(f"--listen {args.listen!r}: give one address and a port in 1..65535")
    deadline = time.monotonic() + args.session_timeout_s
    try:
        gate = AuthGate(read_secret(args.secret_file))
        service = PeerService(args.device, args.addr)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((host, int(port)))
            srv.listen(4)
            print(f"peer_service: listening on {args.listen} for {args.device}", flush=True)
            conn = admit_owner(srv, gate, deadline)
        if conn is None:
            print("peer_service: no owner within --session-timeout-s", file=sys.stderr,
                  flush=True)
            return 1
        with conn:
            try:
                serve_owner(service, conn, deadline)
            finally:
                left = service.close()
        for problem in left:
            print(f"peer_service: teardown left {problem}", file=sys.stderr, flush=True)
        return 1 if left else 0
    except RxePowerError as exc:
        print(f"peer_service: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

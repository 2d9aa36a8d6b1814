"""The peer guest's service (clients.kernel.peer_service) on any host: its gate, its one
owner, and every request field it checks before it touches the kernel. The service runs
as root in the peer guest and is reached over TCP, so a bad field must be refused with
its reason (and the fix) before any configfs write; the negative controls are the same
exchanges that are answered. The nvmet and nfsd parts themselves run in the two-kernel
group (tests/pair)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from clients.kernel import peer_service
from clients.kernel.peer_service import PeerService
from clients.kernel.peer_service_client import PeerServiceClient
from harness.core.errors import ProtocolError, RxePowerError
from harness.core.peer_auth import AuthGate, AuthRefused
from harness.core.protocol import Message
from harness.core.state import StateFile

SECRET = bytes(range(32))
IO_BOUND_S = 10.0


class _HostService(PeerService):
    """The service without the peer's HCA in `hello` (no rxe1 on this host)."""

    def service_hello(self, msg: Message) -> dict[str, Any]:
        return {"device": {"dev": "rxe1", "port": 1, "netdev": "eth1", "ifindex": 3,
                           "addr": "198.18.0.2", "gid": "::", "gid_index": 1},
                "kernel": "test", "boot_id": "b", "pid": 1, "state": "ACTIVE"}


def _service(tmp_path: Path) -> PeerService:
    return _HostService("rxe1", "198.18.0.2", StateFile.load(tmp_path / "state.json"))


def _msg(event: str, **payload: Any) -> Message:
    return Message(event, payload, 1)


@pytest.mark.parametrize(("event", "payload", "refusal"), [
    ("nvmet_setup", {"trsvcid": 0, "size_mib": 64, "block_size": 4096}, "trsvcid 0 is outside"),
    ("nvmet_setup", {"trsvcid": 4420, "size_mib": 1 << 20, "block_size": 4096},
     "size_mib 1048576 is outside"),
    ("nvmet_setup", {"trsvcid": 4420, "size_mib": 64, "block_size": 1000},
     "block_size 1000 is not one of"),
    ("nvmet_read", {"nqn": "nqn.x", "index": 0, "count": 1, "size": 4096},
     "no target 'nqn.x' of this service"),
    ("nvmet_teardown", {"nqn": "nqn.other"}, "no target 'nqn.other'"),
    ("nfs_setup", {"client_addr": "0.0.0.0", "size_mib": 64}, "is not one host"),
    ("nfs_setup", {"client_addr": "198.18.0.1; rm -rf /", "size_mib": 64},
     "is not an IPv4 address"),
    ("nfs_setup", {"client_addr": "198.18.0.1", "size_mib": 0}, "size_mib 0 is outside"),
    ("nfs_file", {"name": "rxpw-data", "size": 4096}, "runs no NFS server"),
])
def test_a_bad_field_is_refused_before_the_kernel_is_touched(
        tmp_path: Path, event: str, payload: dict[str, Any], refusal: str) -> None:
    svc = _service(tmp_path)
    with pytest.raises(ProtocolError, match=refusal) as exc:
        svc.handle(_msg(event, **payload))
    assert exc.value.fix
    assert svc.targets == {} and svc.nfs is None  # nothing made
    assert not StateFile.load(tmp_path / "state.json").created  # nothing recorded


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", "X", "-a", "a" * 33])
def test_an_export_file_name_is_a_plain_name(tmp_path: Path, name: str) -> None:
    svc = _service(tmp_path)
    svc.nfs = object()  # type: ignore[assignment]  # a server "runs": the name is checked
    with pytest.raises(ProtocolError, match="is not"):
        svc.handle(_msg("nfs_file", name=name, size=0))
    assert peer_service.FILE_NAME.fullmatch("rxpw-data")  # negative control: ours passes


def test_an_unknown_event_has_no_handler(tmp_path: Path) -> None:
    with pytest.raises(RxePowerError, match="no handler"):
        _service(tmp_path).handle(_msg("format_disk"))


@contextmanager
def serving(tmp_path: Path, timeout_s: float = 30.0) -> Iterator[tuple[int, PeerService]]:
    """The service's owner loop on 127.0.0.1 (an ephemeral port) behind the gate."""
    svc = _service(tmp_path)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    done = threading.Event()

    def run() -> None:
        deadline = time.monotonic() + timeout_s
        conn = peer_service.admit_owner(srv, AuthGate(SECRET, 2.0), deadline)
        if conn is not None:
            with conn:
                peer_service.serve_owner(svc, conn, deadline)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1], svc
    finally:
        thread.join(IO_BOUND_S)
        srv.close()
        assert done.is_set()


def test_only_the_secret_drives_the_service_and_its_owner_ends_it(tmp_path: Path) -> None:
    with serving(tmp_path) as (port, svc):
        with pytest.raises(AuthRefused):
            PeerServiceClient("127.0.0.1", port, bytes(32), connect_timeout_s=5.0)
        assert svc.running  # a refused connection is not the owner: the service waits on
        client = PeerServiceClient("127.0.0.1", port, SECRET, connect_timeout_s=5.0)
        assert client.device.dev == "rxe1" and client.hello["state"] == "ACTIVE"
        # answered: this host has no RDMA netlink, the service says so (not "unreachable")
        assert client.port_state().startswith(("unknown: ", "absent"))
        with pytest.raises(ProtocolError, match="trsvcid 0 is outside"):
            client.request("nvmet_setup", trsvcid=0, size_mib=64, block_size=4096)
        client.close()  # the owner goes: the service tears down (nothing) and ends
    assert not svc.running
    # after the owner went, the service is gone: nobody is answered
    assert client.port_state().startswith("unreachable")


def test_a_wedged_teardown_names_the_blocked_tasks_and_their_stacks() -> None:
    from clients.kernel.nvme_scenario import blocked_text

    tasks = [{"pid": 705, "tid": 705, "comm": "sh", "syscall": "write",
              "stack": ["nvme_delete_ctrl_sync [nvme_core]", "flush_work", "a", "b", "c", "d",
                        "e", "f", "g"]}]
    text = blocked_text(tasks)
    assert text.startswith("705/705 sh (write): nvme_delete_ctrl_sync [nvme_core] <- flush_work")
    assert "<- g" not in text  # the innermost 8 frames only
    assert blocked_text([]) == "none"

"""An outside program's server seen ready (harness/run/outside_ready.py) on recorded
`rdma -j res show cm_id` output (issue 22 defect 7: an rdma_cm server such as rping has
no TCP socket, and was never seen ready).

Recorded in the guest (Debian 6.1.0-57, iproute2 6.1, rdmacm-utils 44.0), the topology
up: `rping -s -a 198.18.0.2 -p 17471 -v` (pid 333) alone (rdma_cm_id_rping_listen.json),
then with `rping -c -a 198.18.0.2 -p 17471 -v` (pid 348) connected
(rdma_cm_id_rping_connected.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.errors import BoundExceeded, RxePowerError
from harness.run import outside
from harness.run.outside_ready import ServerReady
from harness.system.holders import Holder
from harness.system.rdma_cm_ids import CmId, listening, parse_cm_ids

SERVER, CLIENT, PORT = 333, 348, 17471


def recorded(data_dir: Path, name: str) -> list[CmId]:
    return parse_cm_ids(json.loads((data_dir / f"rdma_cm_id_rping_{name}.json").read_text()))


def test_parse_the_recorded_rping_ids(data_dir: Path) -> None:
    (srv,) = recorded(data_dir, "listen")
    assert srv == CmId("rxe1", "LISTEN", "198.18.0.2", PORT, "0.0.0.0", 0, "rping", None, SERVER)
    ids = recorded(data_dir, "connected")
    assert [(c.dev, c.state, c.pid, c.lqpn) for c in ids] == [
        ("rxe0", "CONNECT", CLIENT, 18), ("rxe1", "LISTEN", SERVER, None),
        ("rxe1", "CONNECT", SERVER, 18)]
    assert (ids[0].src, ids[0].dst, ids[0].dst_port) == ("198.18.0.1", "198.18.0.2", PORT)
    assert str(srv) == f"LISTEN on rxe1 198.18.0.2:{PORT} by pid {SERVER} (rping)"
    kernel = CmId.parse({"ifname": "rxe1", "state": "LISTEN", "src-addr": "198.18.0.2:4420",
                         "comm": "nvmet_rdma"})
    assert kernel.pid is None and str(kernel) == "LISTEN on rxe1 198.18.0.2:4420 by nvmet_rdma"


def test_listening_wants_the_state_the_device_the_pid_and_the_port(data_dir: Path) -> None:
    ids = recorded(data_dir, "connected")
    assert listening(ids, "rxe1", SERVER, PORT) == [ids[1]]
    assert listening(ids, "rxe1", SERVER) == [ids[1]]  # any port
    assert listening(ids, "rxe1", SERVER, PORT + 1) == []
    assert listening(ids, "rxe0", SERVER, PORT) == []
    assert listening(ids, "rxe0", CLIENT, PORT) == []  # connected, not listening
    assert listening(ids, "rxe1", CLIENT, PORT) == []


def never(*_: object) -> bool:
    return False


def no_holders(dev: str) -> list[Holder]:
    return []


def test_an_rdma_cm_server_is_ready_when_its_id_listens(data_dir: Path) -> None:
    ids = recorded(data_dir, "listen")
    ready = ServerReady(SERVER, "rxe1", PORT, tcp=never, cm=lambda: ids, holders=no_holders)
    assert ready()
    assert ready.how == f"rdma_cm id LISTEN on rxe1 198.18.0.2:{PORT} by pid {SERVER} (rping)"
    # another port, another process, the other HCA: not this server
    for pid, dev, port in ((SERVER, "rxe1", PORT + 1), (CLIENT, "rxe1", PORT),
                           (SERVER, "rxe0", PORT)):
        other = ServerReady(pid, dev, port, tcp=never, cm=lambda: ids, holders=no_holders)
        assert not other() and other.how == ""
    other = ServerReady(SERVER, "rxe1", PORT + 1, tcp=never, cm=lambda: ids, holders=no_holders)
    other()
    assert other.seen == (f"rdma_cm ids of pid {SERVER}: LISTEN on rxe1 198.18.0.2:{PORT} by "
                          f"pid {SERVER} (rping); TCP port {PORT + 1} not listening")
    # a command without {port}: its listening id on any port
    assert ServerReady(SERVER, "rxe1", None, tcp=never, cm=lambda: ids, holders=no_holders)()


def test_a_tcp_server_and_a_holder_are_ready_as_before() -> None:
    def no_cm() -> list[CmId]:
        raise AssertionError("rdma res asked though TCP answered")

    ready = ServerReady(7, "rxe1", PORT, tcp=lambda p: p == PORT, cm=no_cm, holders=no_holders)
    assert ready() and ready.how == f"TCP port {PORT} listening"
    held = ServerReady(7, "rxe1", None, tcp=never, cm=no_cm,
                       holders=lambda dev: [Holder(7, "prog", ("/dev/infiniband/uverbs1",))])
    assert held() and held.how == "pid 7 holding rxe1"


def test_a_failing_rdma_tool_is_not_ready_and_says_why() -> None:
    def fails() -> list[CmId]:
        raise RxePowerError("`rdma -j res show cm_id` failed with exit 1: oops", "fix")

    ready = ServerReady(7, "rxe1", PORT, tcp=never, cm=fails, holders=no_holders)
    assert not ready() and "no rdma_cm ids: `rdma -j res show cm_id` failed" in ready.seen


def test_the_bound_names_what_it_waited_for_and_what_it_saw() -> None:
    """outside._wait on a real child that never becomes ready: BoundExceeded names the
    TCP port and the rdma_cm id it waited for, and the last look."""
    ready = ServerReady(0, "rxe1", PORT, tcp=never, cm=lambda: [], holders=no_holders)
    child = subprocess.Popen([sys.executable, "-P", "-c", "import time; time.sleep(30)"])
    ready.pid = child.pid
    try:
        with pytest.raises(BoundExceeded) as fired:
            outside._wait(ready, f"the outside server ready ({ready.waited_for()})",
                          "SERVER_READY_TIMEOUT_S", 0.2, child, lambda: ready.seen)
    finally:
        child.kill()
        child.wait()
    text = fired.value.problem
    assert f"TCP port {PORT} listening, or an rdma_cm id of pid {child.pid} listening on rxe1 " \
           f"port {PORT}" in text and "SERVER_READY_TIMEOUT_S=0.2s" in text
    assert f"last seen: rdma_cm ids of pid {child.pid}: none; TCP port {PORT} not listening" \
        in text


def test_a_bound_on_the_client_says_where_both_sides_are_in_the_kernel() -> None:
    """The bound's message names each side's threads: state, call, where it sleeps."""
    import subprocess

    import pytest as _pytest

    from harness.core.errors import BoundExceeded

    cli = subprocess.Popen(["sleep", "30"])
    srv = subprocess.Popen(["sleep", "31"])
    try:
        with _pytest.raises(BoundExceeded) as e:
            outside._wait(lambda: False, "the outside client's first completion",
                          "CLIENT_BUSY_TIMEOUT_S", 0.2, cli, also=srv)
        text = e.value.outstanding
        assert f"sleep (pid {cli.pid}): tid {cli.pid} [S] in " in text, text
        assert f"sleep (pid {srv.pid}): tid {srv.pid} [S] in " in text, text
    finally:
        for p in (cli, srv):
            p.kill()
            p.wait()

"""The peer agent over TCP (harness.core.peer_auth, harness.peer.remote): nothing drives it
without the run's secret. The agent's own serve loop runs here on loopback TCP, with the
gate in front; it is built without its verbs device (no request used here touches one:
`holders` reads the agent's own table), so this runs on any host. Each refusal has its
negative control: the same exchange with the right secret is answered."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core import peer_auth
from harness.core.errors import BoundExceeded, RxePowerError
from harness.core.peer_auth import AuthGate, AuthRefused, Verdict, authenticate
from harness.core.protocol import Message, WorkerError
from harness.peer.agent import Agent
from harness.peer.keepalive import PartnerWatch
from harness.peer.remote import RemotePeer, connect_when_listening
from tests.helpers.fuzz_strategies import FUZZ

SECRET = bytes(range(32))
WRONG = bytes(32)
IO_BOUND_S = 10.0


class _HostAgent(Agent):
    """The agent without its verbs device: `hello` names none (the real one reads its GID)."""

    def peer_hello(self, msg: Message) -> dict[str, object]:
        return {"device": "none", "pid": os.getpid(), "gid": "", "gid_index": 0}


def _agent_without_device() -> Agent:
    """An Agent with every field serve() and `holders` use, and no verbs device."""
    agent = object.__new__(_HostAgent)
    agent.qps, agent.reaped, agent.waiting = {}, {}, []
    agent.cm_listener = agent.cm_channel = None
    agent.running, agent.current = True, None
    agent.watch = PartnerWatch()
    agent.sel = selectors.DefaultSelector()
    return agent


@contextlib.contextmanager
def serving_agent(secret: bytes = SECRET, timeout_s: float = 2.0) -> Iterator[tuple[int, Agent]]:
    """The agent's serve loop on 127.0.0.1 (an ephemeral port), its gate holding `secret`."""
    agent = _agent_without_device()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    thread = threading.Thread(target=agent.serve, args=(srv, AuthGate(secret, timeout_s)),
                              daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1], agent
    finally:
        agent.running = False
        thread.join(IO_BOUND_S)
        srv.close()
        assert not thread.is_alive()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_BOUND_S)
    return sock


def _lines(sock: socket.socket) -> list[dict[str, object]]:
    """Every line the agent sends until it closes the connection (a reset, when it closed
    with our bytes unread, ends it too: what came before it is kept)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_the_right_secret_is_admitted_and_answered() -> None:
    with serving_agent() as (port, _), RemotePeer("127.0.0.1", port, SECRET, 5.0) as peer:
        assert peer.request("holders")["pid"] == os.getpid()  # the agent's own table
    # and its owner going ends the agent's loop (serving_agent asserts the thread ended)


def test_the_typed_calls_reach_the_agent_over_tcp() -> None:
    """RemotePeer's calls are the ones PeerAgent has (harness.peer.calls): an unknown QP's
    arrivals is answered by the agent's own handler, as an error naming it."""
    with serving_agent() as (port, _), RemotePeer("127.0.0.1", port, SECRET, 5.0) as peer, \
            pytest.raises(WorkerError, match="no QP with id 7"):
        peer.arrivals(7, 1, timeout_s=0.1)


def test_a_wrong_secret_is_refused_on_both_sides() -> None:
    with serving_agent() as (port, _):
        with pytest.raises(AuthRefused, match="does not match the run's secret"):
            RemotePeer("127.0.0.1", port, WRONG, 5.0)
        # negative control: the same agent admits the right secret afterwards
        with RemotePeer("127.0.0.1", port, SECRET, 5.0) as peer:
            assert "qps" in peer.request("holders")


def test_an_agent_without_the_secret_is_refused_by_the_client() -> None:
    with serving_agent(secret=WRONG) as (port, _), _connect(port) as sock, \
            pytest.raises(AuthRefused):
        authenticate(sock, SECRET)  # the agent refuses us; we never trust its welcome


def test_a_request_without_the_handshake_is_refused_and_never_answered() -> None:
    with serving_agent() as (port, _), _connect(port) as sock:
        sock.sendall(Message("holders", {}, 1).encode())
        got = _lines(sock)
    assert [m["event"] for m in got] == ["challenge", "error"]
    assert "unknown event 'holders' on the peer_auth channel" in str(got[1]["payload"])


def test_a_silent_connection_is_refused_at_the_bound_without_stalling_the_owner() -> None:
    with serving_agent(timeout_s=0.5) as (port, _), _connect(port) as silent, \
            RemotePeer("127.0.0.1", port, SECRET, 5.0) as peer:
        got = _lines(silent)  # closed by the gate at its bound
        assert [m["event"] for m in got] == ["challenge", "error"]
        assert "AUTH_TIMEOUT_S" in str(got[1]["payload"])
        assert "qps" in peer.request("holders")  # the owner is served meanwhile


def test_an_over_long_handshake_line_is_refused() -> None:
    with serving_agent() as (port, _), _connect(port) as sock:
        sock.recv(4096)
        with contextlib.suppress(OSError):  # the agent may close while we send
            sock.sendall(b"x" * (peer_auth.AUTH_LINE_MAX_BYTES * 4))
        got = _lines(sock)  # returns: the agent closed the connection
    assert [m["event"] for m in got] in (["error"], [])  # the error may be lost to the reset


def test_a_second_line_before_the_welcome_is_refused() -> None:
    with serving_agent() as (port, _), _connect(port) as sock:
        challenge = json.loads(sock.recv(4096))
        ours = os.urandom(32)
        mac = peer_auth._mac(SECRET, peer_auth.CLIENT_TAG,
                             bytes.fromhex(challenge["payload"]["nonce"]), ours)
        auth = Message("auth", {"nonce": ours.hex(), "mac": mac}, 1).encode()
        sock.sendall(auth + Message("holders", {}, 2).encode())
        got = _lines(sock)
    assert [m["event"] for m in got] == ["error"]
    assert "before the agent's welcome" in str(got[0]["payload"])


def test_connect_is_bounded_when_nothing_listens() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a port nothing listens on: refused at once, every try
    with pytest.raises(BoundExceeded, match="AGENT_CONNECT_TIMEOUT_S"):
        connect_when_listening("127.0.0.1", port, timeout_s=0.3)


# --- the secret file -------------------------------------------------------------------------
def test_secret_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    peer_auth.write_secret(path, SECRET)
    assert peer_auth.read_secret(path) == SECRET
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        peer_auth.write_secret(path, SECRET)  # never over another file
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(RxePowerError, match="cannot open"):
        peer_auth.read_secret(link)
    path.chmod(0o640)
    with pytest.raises(RxePowerError, match="closed to group and other"):
        peer_auth.read_secret(path)
    for bad in ("ab" * 31, "AB" * 32, "zz" * 32):
        odd = tmp_path / f"bad-{bad[:2]}-{len(bad)}"
        odd.write_text(bad)
        odd.chmod(0o600)
        with pytest.raises(RxePowerError, match="lower-case hex"):
            peer_auth.read_secret(odd)


# --- the gate, fuzzed ------------------------------------------------------------------------
def _gate_verdict(sent: bytes) -> Verdict:
    """The gate's verdict on one connection that sent `sent` (then shut its side)."""
    gate = AuthGate(SECRET)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert gate.open(ours) is Verdict.PENDING
        theirs.sendall(sent)
        theirs.shutdown(socket.SHUT_WR)
        verdict = Verdict.PENDING
        while verdict is Verdict.PENDING:
            verdict = gate.on_readable(ours)
        assert ours.fileno() == -1 if verdict is Verdict.REFUSED else True
        assert not gate.pending
        return verdict


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_pass_the_gate(raw: bytes) -> None:
    assert _gate_verdict(raw) is Verdict.REFUSED


@FUZZ
@given(st.text(max_size=80), st.text(max_size=80), st.integers(0, 2**64 - 1),
       st.sampled_from(["auth", "welcome", "challenge", "hello", "error"]))
def test_arbitrary_auth_messages_never_pass_the_gate(nonce: str, mac: str, mid: int,
                                                     event: str) -> None:
    line = json.dumps({"v": 1, "id": mid, "event": event,
                       "payload": {"nonce": nonce, "mac": mac, "message": "", "fix": ""}})
    assert _gate_verdict(line.encode() + b"\n") is Verdict.REFUSED


def test_gate_negative_control_the_right_mac_passes() -> None:
    gate = AuthGate(SECRET)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        gate.open(ours)
        challenge = json.loads(theirs.recv(4096))
        mine = os.urandom(32)
        mac = peer_auth._mac(SECRET, peer_auth.CLIENT_TAG,
                             bytes.fromhex(challenge["payload"]["nonce"]), mine)
        theirs.sendall(Message("auth", {"nonce": mine.hex(), "mac": mac}, 1).encode())
        assert gate.on_readable(ours) is Verdict.ADMITTED
        assert json.loads(theirs.recv(4096))["event"] == "welcome"

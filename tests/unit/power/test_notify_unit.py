"""power.notify: the shim telling its clients, in-process and over Unix sockets. Any host."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.core.device import DeviceInfo
from harness.core.errors import ProtocolError, RxePowerError
from harness.core.protocol import Message, decode
from harness.core.schemas import ChannelKind
from harness.topology.config import Endpoint
from power.notify import (
    Answer,
    AnswerKind,
    ClientEndpoint,
    Notifier,
    SuspendReply,
)
from power.notify.sockets import socket_client_name

DEV = DeviceInfo(dev="rxe0", port=1, netdev="rxpw0", ifindex=12, addr="198.18.0.1",
                 gid="::ffff:198.18.0.1", gid_index=1)
BOUND_S = 5.0  # bound on waits that normally end at once


class Fake:
    """An in-process client whose suspend answer is a function."""

    def __init__(self, name: str, on_suspend: Callable[[], SuspendReply | None]) -> None:
        self.name = name
        self.on_suspend = on_suspend
        self.resumed: list[tuple[str, DeviceInfo]] = []
        self.deadlines: list[float] = []

    def suspend_prepare(self, transition: str, deadline_s: float) -> SuspendReply | None:
        self.deadlines.append(deadline_s)
        return self.on_suspend()

    def resume_complete(self, transition: str, device: DeviceInfo) -> None:
        self.resumed.append((transition, device))


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    return tmp_path / "c"


@pytest.fixture
def serve(cdir: Path) -> Iterator[Callable[..., ClientEndpoint]]:
    """Start ClientEndpoints served in threads; closed (and joined) at teardown."""
    eps: list[ClientEndpoint] = []

    def start(name: str, on_suspend: Callable[[str, float], SuspendReply | None],
              on_resume: Callable[[str, DeviceInfo], None] = lambda t, d: None
              ) -> ClientEndpoint:
        ep = ClientEndpoint(name, on_suspend, on_resume, clients_dir=cdir)
        eps.append(ep)
        ep.serve_in_thread()
        return ep

    yield start
    for ep in eps:
        ep.close()
        assert ep._thread is not None
        ep._thread.join(BOUND_S)
        assert not ep._thread.is_alive()


@contextlib.contextmanager
def raw_server(path: Path, respond: Callable[[socket.socket], None]) -> Iterator[None]:
    """A hand-written socket client: accepts one connection and runs `respond` on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(BOUND_S)

    def run() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(BOUND_S)
                respond(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        t.join(BOUND_S)
        srv.close()
        assert not t.is_alive()


def read_notice(conn: socket.socket) -> Message:
    buf = b""
    while not buf.endswith(b"\n"):
        data = conn.recv(4096)
        assert data, "shim closed before sending a whole line"
        buf += data
    return decode(buf.rstrip(b"\n"), ChannelKind.NOTICE)


def kinds(answers: list[Answer]) -> dict[str, AnswerKind]:
    return {a.client: a.kind for a in answers}


# --- data types -----------------------------------------------------------------------------
def test_answer_json_roundtrip_and_latency() -> None:
    a = Answer("c", AnswerKind.VETO, "busy", sent_ns=1_000_000, answered_ns=3_500_000)
    assert a.latency_ms == pytest.approx(2.5)
    assert Answer.from_json(a.to_json()) == a
    b = Answer("c", AnswerKind.NO_ANSWER, "", 5, None)
    assert b.latency_ms is None
    assert Answer.from_json(b.to_json()) == b
    assert b.to_json()["kind"] == "no-answer"


def test_device_info_json_and_from_endpoint() -> None:
    assert DeviceInfo.from_json(DEV.to_json()) == DEV
    ep = Endpoint(dev="rxe0", port=1, netdev="rxpw0", ifindex=12, addr="198.18.0.1",
                  gid="::ffff:198.18.0.1", gid_index=1, state="ACTIVE")
    assert DeviceInfo.from_endpoint(ep) == DEV
    assert DeviceInfo.from_json(ep.to_json()) == DEV  # extra keys ignored
    with pytest.raises(ProtocolError, match="port"):
        DeviceInfo.from_json({**DEV.to_json(), "port": "1"})
    with pytest.raises(ProtocolError, match="gid_index"):
        DeviceInfo.from_json({k: v for k, v in DEV.to_json().items() if k != "gid_index"})


def test_suspend_reply_helpers() -> None:
    assert SuspendReply.release() == SuspendReply(True, "")
    assert SuspendReply.veto("busy") == SuspendReply(False, "busy")


def test_socket_client_name() -> None:
    assert socket_client_name(Path("/x/mpi-rank.4242.sock")) == "mpi-rank (pid 4242)"
    assert socket_client_name(Path("/x/a.b.17.sock")) == "a.b (pid 17)"
    assert socket_client_name(Path("/x/odd.sock")) == "odd"


def test_deadline_must_be_positive(cdir: Path) -> None:
    n = Notifier(cdir)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="deadline"):
            n.suspend_prepare("suspend", bad)


def test_no_clients_returns_at_once(cdir: Path) -> None:
    t0 = time.monotonic()
    assert Notifier(cdir).suspend_prepare("suspend", 5.0) == []
    assert time.monotonic() - t0 < 1.0


# --- in-process clients ---------------------------------------------------------------------
def test_inprocess_released_veto_ignore_raise(cdir: Path) -> None:
    def boom() -> SuspendReply:
        raise RuntimeError("device busy in callback")

    n = Notifier(cdir)
    clients = [Fake("rel", SuspendReply.release), Fake("veto", lambda: SuspendReply.veto("ckpt")),
               Fake("ign", lambda: None), Fake("boom", boom), Fake("odd", lambda: True)]
    for c in clients:
        n.register(c)
    n.register(clients[0])  # twice: still one
    t0 = time.monotonic()
    answers = n.suspend_prepare("suspend", 10.0)
    # the ignoring client does not hold up the round when all others have answered
    assert time.monotonic() - t0 < 2.0
    assert [a.client for a in answers] == ["rel", "veto", "ign", "boom", "odd"]
    by = {a.client: a for a in answers}
    assert by["rel"].kind is AnswerKind.RELEASED and by["rel"].latency_ms is not None
    assert (by["veto"].kind, by["veto"].reason) == (AnswerKind.VETO, "ckpt")
    assert by["ign"].kind is AnswerKind.NO_ANSWER and by["ign"].answered_ns is None
    assert "ignored" in by["ign"].reason
    assert by["boom"].kind is AnswerKind.ERROR
    assert "RuntimeError" in by["boom"].reason and "device busy" in by["boom"].reason
    assert by["odd"].kind is AnswerKind.ERROR and "SuspendReply" in by["odd"].reason
    assert 0 < clients[0].deadlines[0] <= 10.0


def test_inprocess_slow_client_is_left_behind(cdir: Path) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def slow() -> SuspendReply:
        entered.set()
        gate.wait(BOUND_S)  # held until the test lets go, long past the deadline
        return SuspendReply.release()

    n = Notifier(cdir)
    n.register(Fake("slow", slow))
    n.register(Fake("quick", SuspendReply.release))
    deadline = 0.3
    t0 = time.monotonic()
    try:
        answers = n.suspend_prepare("suspend", deadline)
        elapsed = time.monotonic() - t0
    finally:
        gate.set()
    assert entered.is_set()
    assert kinds(answers) == {"slow": AnswerKind.NO_ANSWER, "quick": AnswerKind.RELEASED}
    assert "still running" in answers[0].reason
    assert deadline - 0.05 <= elapsed < deadline + 0.5


def test_inprocess_unregister(cdir: Path) -> None:
    n = Notifier(cdir)
    a, b = Fake("a", SuspendReply.release), Fake("b", SuspendReply.release)
    n.register(a)
    n.register(b)
    n.unregister(a)
    n.unregister(a)  # not registered: ignored
    assert [x.client for x in n.suspend_prepare("suspend", 1.0)] == ["b"]


def test_inprocess_resume_complete(cdir: Path) -> None:
    n = Notifier(cdir)
    c = Fake("c", SuspendReply.release)
    n.register(c)
    answers = n.resume_complete("hibernate", DEV)
    assert kinds(answers) == {"c": AnswerKind.RESUMED}
    assert c.resumed == [("hibernate", DEV)]


# --- socket clients -------------------------------------------------------------------------
def test_endpoint_file_modes_and_close(cdir: Path) -> None:
    with ClientEndpoint("modes", lambda t, d: None, lambda t, d: None, clients_dir=cdir) as ep:
        assert ep.path == cdir / f"modes.{os.getpid()}.sock"
        assert stat.S_IMODE(cdir.stat().st_mode) == 0o700
        st = os.lstat(ep.path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert Notifier(cdir).socket_clients() == [ep.path]
        assert [p.name for p in cdir.iterdir()] == [ep.path.name]  # no temp file left
        with pytest.raises(RxePowerError, match="already has a client"):
            ClientEndpoint("modes", lambda t, d: None, lambda t, d: None, clients_dir=cdir)
    assert not ep.path.exists()
    with pytest.raises(RxePowerError, match="client name"):
        ClientEndpoint("a/b", lambda t, d: None, lambda t, d: None, clients_dir=cdir)


def test_socket_released_veto_ignore(cdir: Path, serve: Callable[..., ClientEndpoint]) -> None:
    seen: list[tuple[str, float]] = []

    def rel(t: str, d: float) -> SuspendReply:
        seen.append((t, d))
        return SuspendReply.release()

    serve("rel", rel)
    serve("veto", lambda t, d: SuspendReply.veto("MPI job in a collective"))
    serve("ign", lambda t, d: None)
    pid = os.getpid()
    t0 = time.monotonic()
    answers = Notifier(cdir).suspend_prepare("suspend", 10.0)
    # the ignoring client closes without a reply: no waiting for the deadline
    assert time.monotonic() - t0 < 2.0
    by = {a.client: a for a in answers}
    assert set(by) == {f"rel (pid {pid})", f"veto (pid {pid})", f"ign (pid {pid})"}
    assert by[f"rel (pid {pid})"].kind is AnswerKind.RELEASED
    assert by[f"rel (pid {pid})"].latency_ms is not None
    v = by[f"veto (pid {pid})"]
    assert (v.kind, v.reason) == (AnswerKind.VETO, "MPI job in a collective")
    assert by[f"ign (pid {pid})"].kind is AnswerKind.NO_ANSWER
    assert seen[0][0] == "suspend" and 0 < seen[0][1] <= 10.0


def test_socket_resume_delivers_device(cdir: Path, serve: Callable[..., ClientEndpoint]) -> None:
    got: list[tuple[str, DeviceInfo]] = []
    serve("r", lambda t, d: SuspendReply.release(), lambda t, d: got.append((t, d)))
    answers = Notifier(cdir).resume_complete("suspend", DEV, timeout_s=BOUND_S)
    assert [a.kind for a in answers] == [AnswerKind.RESUMED]
    assert got == [("suspend", DEV)]


def test_socket_silent_client_no_answer_by_deadline(cdir: Path) -> None:
    """A client that reads the notice and never answers: NO_ANSWER at the deadline."""
    done = threading.Event()

    def silent(conn: socket.socket) -> None:
        read_notice(conn)
        done.wait(BOUND_S)

    deadline = 0.3
    try:
        with raw_server(cdir / "mute.7.sock", silent):
            t0 = time.monotonic()
            answers = Notifier(cdir).suspend_prepare("suspend", deadline)
            elapsed = time.monotonic() - t0
            done.set()
    finally:
        done.set()
    assert kinds(answers) == {"mute (pid 7)": AnswerKind.NO_ANSWER}
    assert "waiting for the reply" in answers[0].reason
    assert deadline - 0.05 <= elapsed < deadline + 0.5


def test_stale_socket_gone_and_removed(cdir: Path) -> None:
    cdir.mkdir()
    stale = cdir / "dead.99999.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # not unlinked: a client that died
    other = cdir / "notes.txt"
    other.write_text("not a client")
    unlisted = cdir / "other.1.sockx"
    s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s2.bind(str(unlisted))
    s2.close()
    n = Notifier(cdir)
    assert n.socket_clients() == [stale]
    answers = n.suspend_prepare("suspend", BOUND_S)
    assert kinds(answers) == {"dead (pid 99999)": AnswerKind.GONE}
    assert "removed" in answers[0].reason
    assert not stale.exists()
    assert other.read_text() == "not a client"
    assert os.path.lexists(unlisted)


def test_regular_file_named_sock_is_not_a_client(cdir: Path) -> None:
    cdir.mkdir()
    f = cdir / "fake.1.sock"
    f.write_text("x")
    n = Notifier(cdir)
    assert n.socket_clients() == []
    assert n.suspend_prepare("suspend", 1.0) == []
    assert f.exists()


def test_missing_clients_dir(tmp_path: Path) -> None:
    assert Notifier(tmp_path / "nope").socket_clients() == []


@pytest.mark.parametrize("reply,needle", [
    (b"garbage\n", "not JSON"),
    (b'{"v":1,"id":1,"event":"veto","payload":{}}\n', "lacks field 'reason'"),
    (b'{"v":1,"id":1,"event":"resumed","payload":{}}\n', "expected 'released' or 'veto'"),
    (b'{"v":1,"id":999,"event":"released","payload":{}}\n', "echo the request's id"),
    (b'{"v":1,"id":1,"event":"rel', "in the middle of a message"),
])
def test_socket_garbage_reply_is_error(cdir: Path, reply: bytes, needle: str) -> None:
    def respond(conn: socket.socket) -> None:
        msg = read_notice(conn)
        conn.sendall(reply.replace(b'"id":1,', f'"id":{msg.id},'.encode()))

    with raw_server(cdir / "junk.5.sock", respond):
        answers = Notifier(cdir).suspend_prepare("suspend", BOUND_S)
    assert [a.kind for a in answers] == [AnswerKind.ERROR]
    assert needle in answers[0].reason


def test_endpoint_survives_malformed_notice(cdir: Path, serve: Callable[..., ClientEndpoint],
                                            capfd: pytest.CaptureFixture[str]) -> None:
    ep = serve("tough", lambda t, d: SuspendReply.release())
    for junk in (b"garbage\n",
                 b'{"v":1,"id":3,"event":"released","payload":{}}\n',
                 Message("resume_complete", {"transition": "s", "device": {"dev": 1}}, 4).encode()):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(BOUND_S)
            s.connect(str(ep.path))
            s.sendall(junk)
            assert s.recv(4096) == b""  # no reply, just closed
    # still serving
    answers = Notifier(cdir).suspend_prepare("suspend", BOUND_S)
    assert [a.kind for a in answers] == [AnswerKind.RELEASED]
    err = capfd.readouterr().err
    assert "not JSON" in err and "client's reply" in err and "device info field" in err


def test_endpoint_in_own_select_loop(cdir: Path) -> None:
    """fileno() + handle_ready() for clients that run their own loop (here: this thread)."""
    with ClientEndpoint("loop", lambda t, d: SuspendReply.veto("no"), lambda t, d: None,
                        clients_dir=cdir) as ep:
        assert ep.handle_ready(0.0) == 0
        result: list[list[Answer]] = []
        shim = threading.Thread(
            target=lambda: result.append(Notifier(cdir).suspend_prepare("suspend", BOUND_S)))
        shim.start()
        handled = 0
        t0 = time.monotonic()
        while not handled and time.monotonic() - t0 < BOUND_S:
            handled = ep.handle_ready(0.5)
        shim.join(BOUND_S)
        assert handled == 1
        assert [(a.kind, a.reason) for a in result[0]] == [(AnswerKind.VETO, "no")]


def test_long_clients_dir_path(tmp_path: Path) -> None:
    """A clients dir whose socket paths do not fit sun_path still works."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with ClientEndpoint("long", lambda t, d: SuspendReply.release(), lambda t, d: None,
                        clients_dir=deep) as ep:
        assert len(os.fsencode(ep.path)) > 108
        ep.serve_in_thread()
        answers = Notifier(deep).suspend_prepare("suspend", BOUND_S)
    assert [a.kind for a in answers] == [AnswerKind.RELEASED]


def test_mixed_clients_answer_in_parallel(cdir: Path,
                                          serve: Callable[..., ClientEndpoint]) -> None:
    def slow_release(*_: object) -> SuspendReply:
        time.sleep(0.3)  # the client's work of letting go, not a wait for a condition
        return SuspendReply.release()

    n = Notifier(cdir)
    n.register(Fake("inproc", slow_release))
    serve("sock", slow_release)
    t0 = time.monotonic()
    answers = n.suspend_prepare("suspend", BOUND_S)
    elapsed = time.monotonic() - t0
    assert [a.kind for a in answers] == [AnswerKind.RELEASED, AnswerKind.RELEASED]
    assert [a.client for a in answers] == ["inproc", f"sock (pid {os.getpid()})"]
    assert 0.3 <= elapsed < 0.6
    assert all(a.latency_ms is not None and a.latency_ms >= 290 for a in answers)

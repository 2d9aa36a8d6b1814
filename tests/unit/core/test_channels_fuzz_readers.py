"""Channel fuzz, the readers: the power notices' line reader and parser, the async event
reader's two line formats, the peer agent's decode+dispatch step and a real client
worker process fed garbage (the decode/framing/Channel half: test_channels_fuzz.py).
Pure logic: no rxe needed.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core import protocol
from harness.core.device import DeviceInfo
from harness.core.errors import ProtocolError
from harness.core.schemas import ChannelKind
from harness.core.strict_json import MAX_INT
from harness.peer import agent as peer_agent
from harness.peer import dispatch as peer_dispatch
from power.asyncevents import parse_command, parse_record
from power.notify.sockets import read_line
from tests.helpers.fuzz_strategies import (
    ABSURD,
    BOUND_S,
    ERROR_TEXT_BOUND,
    FUZZ,
    ROOT,
    chunked,
    env,
    json_values,
    mutated_lines,
    valid_messages,
)


# --- the notice protocol (power/notify/) ----------------------------------------------------
class ChunkSock:
    """A socket stand-in for read_line: hands out the given chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = [c for c in chunks if c]  # a real recv() returns b"" only at EOF

    def settimeout(self, _t: float) -> None:
        pass

    def recv(self, _n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def read_notice_line(chunks: list[bytes]) -> bytes | None:
    return read_line(ChunkSock(chunks), time.monotonic() + BOUND_S)  # type: ignore[arg-type]


@FUZZ
@given(valid_messages("notice"), st.data())
def test_notify_read_line_any_chunking(case: tuple[str, protocol.Message],
                                       data: st.DataObject) -> None:
    line = case[1].encode()
    assert read_notice_line(data.draw(chunked(line + b"trailing"))) == line.rstrip(b"\n")


@FUZZ
@given(st.binary(max_size=300) | mutated_lines().map(lambda c: c[1] + b"\n"), st.data())
def test_notify_parser_only_protocol_errors(raw: bytes, data: st.DataObject) -> None:
    """What ClientEndpoint._serve does with a connection, and what the shim does with a
    reply: _read_line, decode on the NOTICE channel, DeviceInfo for resume_complete."""
    try:
        line = read_notice_line(data.draw(chunked(raw)))
        if line is None:
            return
        msg = protocol.decode(line, ChannelKind.NOTICE)
        if msg.event == "resume_complete":
            DeviceInfo.from_json(msg.payload["device"])
    except ProtocolError as exc:
        assert len(str(exc)) < ERROR_TEXT_BOUND


@FUZZ
@given(st.dictionaries(st.sampled_from(["dev", "port", "netdev", "ifindex", "addr", "gid",
                                        "gid_index", "x"]),
                       st.sampled_from(ABSURD) | st.integers() | st.text(max_size=4)))
def test_device_info_only_protocol_errors(d: dict) -> None:
    try:
        info = DeviceInfo.from_json(d)
    except ProtocolError:
        return
    assert all(0 <= getattr(info, f) <= MAX_INT for f in ("port", "ifindex", "gid_index"))


def test_notify_rejects_absurd_deadlines() -> None:
    for bad in (-1, float("nan"), float("inf"), True, 10**30):
        line = json.dumps({"v": 1, "id": 1, "event": "suspend_prepare",
                           "payload": {"transition": "standby", "deadline_s": bad}}).encode()
        with pytest.raises(ProtocolError, match=r"deadline_s|NaN|Infinity|digits"):
            protocol.decode(line, ChannelKind.NOTICE)
    with pytest.raises(ProtocolError, match="'port' is -1"):
        DeviceInfo.from_json({"dev": "rxe0", "port": -1, "netdev": "n", "ifindex": 1,
                              "addr": "a", "gid": "g", "gid_index": 1})


# --- the async event reader's lines (power/asyncevents.py) ---------------------------------
@FUZZ
@given(st.binary(max_size=80))
def test_async_command_parser(raw: bytes) -> None:
    try:
        cmd, dev = parse_command(raw)
    except ProtocolError:
        return
    assert cmd in ("open", "close") and 1 <= len(dev) <= 64


@FUZZ
@given(json_values() | st.fixed_dictionaries(
    {"dev": json_values(2), "event": json_values(2), "code": json_values(2),
     "t_ns": json_values(2)}))
def test_async_record_parser(value: Any) -> None:
    try:
        rec = parse_record(json.dumps(value) + "\n")
    except ProtocolError:
        return
    assert isinstance(rec, dict)
    if "event" in rec:
        assert isinstance(rec["t_ns"], int) and isinstance(rec["dev"], str)


def test_async_lines_concrete() -> None:
    assert parse_command(b"open rxe0") == ("open", "rxe0")
    for bad in (b"open", b"open a b", b"rm rxe0", b"open \xff", b"open " + b"x" * 65,
                b"open ../x"):
        with pytest.raises(ProtocolError):
            parse_command(bad)
    assert parse_record('{"dev":"rxe0","event":"PORT_ERR","code":10,"t_ns":5}\n')["code"] == 10
    for bad in ("[1]", '{"dev":"rxe0","event":"PORT_ERR","code":10}', '{"opened":1}',
                '{"what":1}', "NaN", '{"ready":-1}'):
        with pytest.raises(ProtocolError):
            parse_record(bad)


# --- the peer agent's decode+dispatch step -------------------------------------------------
class FakeConn:
    """A connection stand-in: recv() hands out chunks, sendall() collects replies."""

    def __init__(self, *chunks: bytes, broken: bool = False) -> None:
        self.chunks = list(chunks)
        self.sent = b""
        self.broken = broken

    def recv(self, _n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def sendall(self, data: bytes) -> None:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self.sent += data

    def replies(self) -> list[protocol.Message]:
        return [protocol.decode(ln, ChannelKind.PEER, expect_reply=True)
                for ln in self.sent.splitlines()]


def fake_handle(msg: protocol.Message) -> dict | None:
    if msg.event == "hello":
        return {"pid": 1}
    if msg.event == "arrivals":
        return None  # reply later
    if msg.event == "to_err":
        raise KeyError("boom")  # a handler bug
    return {}


def agent_feed(*lines: bytes) -> tuple[FakeConn, list, bool]:
    conn = FakeConn(b"".join(lines))
    waiting: list = []
    alive = peer_dispatch.read_and_dispatch(conn, protocol.LineReader(), fake_handle, waiting)  # type: ignore[arg-type]
    return conn, waiting, alive


def test_agent_answers_every_bad_line_and_keeps_the_connection() -> None:
    conn, waiting, alive = agent_feed(
        b"garbage\n", b"\xff\n", env("fill", {"qp_id": 1}, id=5) + b"\n",
        env("to_err", {"qp_id": 1}, id=6) + b"\n",
        env("cm_events", {"count": 1, "timeout_s": 1, "_deadline": 0}, id=7) + b"\n",
        env("e" * (protocol.MAX_MESSAGE_BYTES - 100), id=8) + b"\n",
        env("hello", id=9) + b"\n")
    assert alive
    reps = conn.replies()
    assert [(r.event, r.id) for r in reps] == [("error", 0), ("error", 0), ("error", 5),
                                               ("error", 6), ("error", 7), ("error", 8),
                                               ("ok", 9)]
    assert "not JSON" in reps[0].payload["message"]
    assert "lacks field" in reps[2].payload["message"]
    assert reps[3].payload["type"] == "KeyError"
    assert "reserved" in reps[4].payload["message"]
    assert "unknown event" in reps[5].payload["message"]
    assert reps[6].payload == {"pid": 1}
    assert waiting == []


def test_agent_waits_with_a_finite_deadline_and_refuses_a_duplicate_id() -> None:
    line = env("arrivals", {"qp_id": 1, "count": 3, "timeout_s": 2.5}, id=11) + b"\n"
    conn = FakeConn(line, line)
    waiting: list = []
    for _ in range(2):
        assert peer_dispatch.read_and_dispatch(conn, protocol.LineReader(), fake_handle, waiting)  # type: ignore[arg-type]
    assert len(waiting) == 1
    _, msg, deadline = waiting[0]
    assert msg.payload["_deadline"] == deadline and deadline - time.monotonic() <= 2.5
    [rep] = conn.replies()
    assert (rep.event, rep.id) == ("error", 11) and "already outstanding" in rep.payload["message"]


def test_agent_drops_a_connection_whose_framing_broke() -> None:
    conn, _, alive = agent_feed(env("hello", id=1) + b"\n",
                                b"x" * (protocol.MAX_MESSAGE_BYTES + 10))
    assert not alive
    assert [(r.event, r.id) for r in conn.replies()] == [("ok", 1), ("error", 0)]
    assert "without a newline" in conn.replies()[1].payload["message"]


def test_agent_survives_a_gone_connection() -> None:
    conn = FakeConn(env("hello") + b"\n", broken=True)
    assert not peer_dispatch.read_and_dispatch(conn, protocol.LineReader(), fake_handle, [])  # type: ignore[arg-type]


def test_agent_finish_waits_survives_a_gone_connection() -> None:
    agent = peer_agent.Agent.__new__(peer_agent.Agent)  # no device: only the wait list
    agent.qps, agent.cm_events, agent.cm_delivered = {}, [], 0
    msg = protocol.decode(env("arrivals", {"qp_id": 9, "count": 1, "timeout_s": 0}),
                          ChannelKind.PEER)
    ok_conn = FakeConn()
    agent.waiting = [(FakeConn(broken=True), msg, 0.0), (ok_conn, msg, 0.0)]
    agent._finish_waits()
    assert agent.waiting == []
    assert ok_conn.replies()[0].payload == {"error": "QP destroyed while waiting"}


@settings(FUZZ, max_examples=100)  # each error reply formats a traceback: keep it quick
@given(st.lists(st.binary(max_size=60) | mutated_lines().map(lambda c: c[1] + b"\n"),
                max_size=5))
def test_agent_dispatch_fuzz(lines: list[bytes]) -> None:
    """Whatever arrives, the agent answers with ok/error lines and keeps the connection."""
    conn, _, alive = agent_feed(*lines, b"\n")
    assert alive
    for rep in conn.replies():
        assert rep.event in ("ok", "error")


# --- a real client worker process ----------------------------------------------------------
def read_replies(sock: socket.socket, n: int, timeout_s: float = BOUND_S) -> list[protocol.Message]:
    reader, out = protocol.LineReader(), []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(out)} of {n} replies: {out}"
        r, _, _ = select.select([sock], [], [], remaining)
        if r:
            data = sock.recv(1 << 16)
            assert data, f"the worker closed the socket after {len(out)} replies"
            out += [protocol.decode(ln, ChannelKind.WORKER, expect_reply=True)
                    for ln in reader.feed(data)]
    return out


def test_worker_process_survives_garbage(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    log = (tmp_path / "worker.log").open("w")
    journal = os.memfd_create("journal", os.MFD_CLOEXEC)
    proc = subprocess.Popen([sys.executable, "-m", "clients.userspace.worker", "--fd",
                             str(theirs.fileno()), "--journal-fd", str(journal)],
                            pass_fds=[theirs.fileno(), journal], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    theirs.close()
    os.close(journal)
    try:
        bad_start = {"name": "w", "policy": "naive", "spec": {"ops": "x"}, "device": {},
                     "agent_socket": str(tmp_path / "none"), "clients_dir": str(tmp_path)}
        sends: list[tuple[bytes, int, str]] = [
            (b"garbage\n", 0, "not JSON"),
            (b"\xff\xfe\x00\n", 0, "not UTF-8"),
            (b"[1,2]\n", 0, "not a JSON object"),
            (b'{"v":1,"id":1,"event":"go","payload":{"x":' + b"[" * 5000 + b"]" * 5000
             + b"}}\n", 0, "deeper"),  # past the recursion limit: the id is never read
            (b'{"v":1,"id":9,"event":"go","payload":{"x":' + b"[" * 40 + b"]" * 40
             + b"}}\n", 9, "deeper"),
            (env("finish", {"timeout_s": "soon"}, id=2) + b"\n", 2, "'timeout_s' has type"),
            (env("finish", {"timeout_s": float("nan")}, id=3) + b"\n", 3, "NaN"),
            (env("finish", {"timeout_s": 10**40}, id=4) + b"\n", 4, "digits"),
            (env("teleport", id=5) + b"\n", 5, "unknown event"),
            (env("start", {"name": "w"}, id=6) + b"\n", 6, "lacks field"),
            (env("start", bad_start, id=7) + b"\n", 7, "workload spec field 'ops'"),
            # the newline comes more than one read (64 KiB) after the limit: broken framing
            (b"y" * (protocol.MAX_MESSAGE_BYTES + 1) + b"z" * 100_000 + b"still the same line\n", 0,
             "without a newline"),
            (env("go", id=8) + b"\n", 8, "before start"),
        ]
        for line, mid, needle in sends:
            ours.sendall(line)
            [rep] = read_replies(ours, 1)
            assert (rep.event, rep.id) == ("error", mid), (line[:60], rep)
            assert needle in rep.payload["message"], (needle, rep.payload)
            assert proc.poll() is None
        # and the real controller's channel still works
        chan = protocol.Channel(ours, "worker", ChannelKind.WORKER)
        chan.next_id = 100
        with pytest.raises(protocol.WorkerError, match="'progress' before start"):
            chan.request("progress", BOUND_S)
    finally:
        ours.close()
        rc = proc.wait(BOUND_S)
        log.close()
    text = (tmp_path / "worker.log").read_text()
    assert rc == 0, text
    assert "Traceback" not in text, text


@pytest.mark.parametrize("addr", ["0.0.0.0", "::", "", "peer"])
def test_agent_refuses_to_listen_on_all_interfaces(addr: str, tmp_path: Path) -> None:
    argv = ["--device", "rxe1", "--gid-index", "1", "--addr", addr,
            "--socket", str(tmp_path / "a.sock")]
    assert peer_agent.main(argv) == 2
    assert not (tmp_path / "a.sock").exists()

"""Peer and control channels: every parser of a line from another process, fuzzed.

decode() (the peer agent's, the client worker's and the power notices' protocol),
LineReader framing, Channel reply matching, the notice reader, the async event
reader's two line formats, the peer agent's decode+dispatch step and a real client
worker process fed garbage. Pure logic: no rxe needed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core.device import DeviceInfo
from harness.core.errors import BoundExceeded, FramingError, ProtocolError
from harness.core.protocol import (
    ERROR_TEXT_MAX,
    MAX_MESSAGE_BYTES,
    Channel,
    LineReader,
    Message,
    WorkerError,
    decode,
    error_reply,
)
from harness.core.schemas import MAX_SECONDS, ChannelKind
from harness.core.schemas import SCHEMAS as REGISTRY
from harness.core.strict_json import MAX_DEPTH, MAX_INT
from harness.peer import agent as peer_agent
from harness.peer import dispatch as peer_dispatch
from harness.workload.spec import WorkloadSpec
from power.asyncevents import parse_command, parse_record
from power.notify.sockets import read_line

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCHEMAS = {str(kind): table for kind, table in REGISTRY.items()}  # "peer", "worker", "notice"
EVENTS = [(name, ev) for name, table in SCHEMAS.items() for ev in sorted(table)]
ERROR_TEXT_BOUND = 2000  # an error never echoes a whole message back
BOUND_S = 10.0


# --- strategies ----------------------------------------------------------------------------
def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value, including what strict JSON refuses (NaN, inf, huge ints)."""
    scalars = (st.none() | st.booleans() | st.integers() | st.floats()
               | st.text(max_size=12) | st.sampled_from([2**64, -(2**64), 10**30, 1e308]))
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                        max_leaves=max_leaves)


def valid_value(typ: type | tuple[type, ...]) -> st.SearchStrategy[Any]:
    if typ is int:
        return st.integers(0, MAX_INT)
    if typ is str:
        return st.text(max_size=16)
    if typ is dict:
        return st.dictionaries(st.text(max_size=6).filter(lambda k: not k.startswith("_")),
                               st.integers(-(2**63), MAX_INT) | st.text(max_size=6)
                               | st.booleans() | st.floats(allow_nan=False, allow_infinity=False),
                               max_size=4)
    assert typ == (int, float), typ  # a duration in seconds
    return st.integers(0, int(MAX_SECONDS)) | st.floats(0, MAX_SECONDS)


@st.composite
def valid_messages(draw: st.DrawFn, schema_name: str | None = None) -> tuple[str, Message]:
    name, event = draw(st.sampled_from(
        [e for e in EVENTS if schema_name is None or e[0] == schema_name]))
    fields = SCHEMAS[name][event]
    payload = {f: draw(valid_value(t)) for f, t in fields.items()}
    return name, Message(event, payload, draw(st.integers(0, MAX_INT)))


ABSURD = [-1, -(10**30), 2**64, 10**25, True, False, None, "1", 1.5, float("nan"),
          float("inf"), float("-inf"), 1e308, -1e-9, [], {}, "x" * 5000,
          [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]


@st.composite
def mutated_lines(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid envelope for some schema with one or more fields mutated, as a line."""
    name, msg = draw(valid_messages())
    obj: dict[str, Any] = {"v": 1, "id": msg.id, "event": msg.event, "payload": msg.payload}
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "absurd", "reserved", "event", "v", "id",
                                     "top", "extra"]))
        fields = list(obj["payload"]) if isinstance(obj.get("payload"), dict) else []
        if kind == "drop" and fields:
            del obj["payload"][draw(st.sampled_from(fields))]
        elif kind == "absurd" and fields:
            obj["payload"][draw(st.sampled_from(fields))] = draw(st.sampled_from(ABSURD))
        elif kind == "reserved" and isinstance(obj.get("payload"), dict):
            obj["payload"]["_deadline"] = draw(st.sampled_from(ABSURD))
        elif kind == "event":
            obj["event"] = draw(st.text(max_size=12) | st.sampled_from(ABSURD))
        elif kind in ("v", "id", "top"):
            key = {"v": "v", "id": "id"}.get(kind) or draw(st.sampled_from(list(obj) or ["v"]))
            if draw(st.booleans()):
                obj.pop(key, None)
            else:
                obj[key] = draw(st.sampled_from(ABSURD) | json_values(4))
        elif kind == "extra" and isinstance(obj.get("payload"), dict):
            obj["payload"][draw(st.text(max_size=6))] = draw(json_values(6))
    return name, json.dumps(obj).encode()


def assert_valid(msg: Message, schema: dict) -> None:
    """What decode() promises about a message it accepted."""
    assert type(msg.id) is int and 0 <= msg.id <= MAX_INT
    assert msg.event in schema
    assert not any(k.startswith("_") for k in msg.payload)
    for field, typ in schema[msg.event].items():
        val = msg.payload[field]
        assert not isinstance(val, bool) and isinstance(val, typ)
        if typ == (int, float):
            assert math.isfinite(val) and 0 <= val <= MAX_SECONDS
        elif typ is int:
            assert 0 <= val <= MAX_INT


def decode_or_error(line: bytes, channel: str, **kw: Any) -> Message | None:
    """decode(), asserting the only failure is a ProtocolError with a bounded text."""
    schema = SCHEMAS[channel]
    try:
        msg = decode(line, ChannelKind(channel), **kw)
    except ProtocolError as exc:
        assert len(str(exc)) < ERROR_TEXT_BOUND, str(exc)[:200]
        assert exc.problem and exc.fix
        return None
    if not kw.get("expect_reply"):
        assert_valid(msg, schema)
    return msg


# --- decode: properties --------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=300), st.sampled_from(sorted(SCHEMAS)))
def test_decode_arbitrary_bytes(raw: bytes, schema: str) -> None:
    decode_or_error(raw, schema)


@FUZZ
@given(json_values(), st.sampled_from(sorted(SCHEMAS)), st.booleans())
def test_decode_arbitrary_json(value: Any, schema: str, reply: bool) -> None:
    decode_or_error(json.dumps(value).encode(), schema, expect_reply=reply)


@FUZZ
@given(json_values(), st.sampled_from([e for e in EVENTS]), st.integers(-5, 2**65))
def test_decode_arbitrary_payload_in_envelope(payload: Any, event: tuple[str, str],
                                              mid: int) -> None:
    line = json.dumps({"v": 1, "id": mid, "event": event[1], "payload": payload}).encode()
    decode_or_error(line, event[0])


@FUZZ
@given(mutated_lines())
def test_decode_mutated_schema_messages(case: tuple[str, bytes]) -> None:
    decode_or_error(case[1], case[0])


@FUZZ
@given(valid_messages())
def test_roundtrip_every_event_of_every_schema(case: tuple[str, Message]) -> None:
    name, msg = case
    back = decode(msg.encode().rstrip(b"\n"), ChannelKind(name))
    assert (back.event, back.payload, back.id) == (msg.event, msg.payload, msg.id)


def test_every_event_is_generated() -> None:
    """The round-trip property above draws from all of these."""
    assert {ev for _, ev in EVENTS} >= {"hello", "create_qp", "start", "finish",
                                        "suspend_prepare", "resume_complete", "veto"}


# --- LineReader: properties ----------------------------------------------------------------
@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@FUZZ
@given(st.lists(valid_messages(), min_size=1, max_size=6), st.data())
def test_linereader_framing_invariant(msgs: list[tuple[str, Message]],
                                      data: st.DataObject) -> None:
    lines = [m.encode() for _, m in msgs]
    stream = b"".join(lines)
    reader = LineReader()
    got: list[bytes] = []
    for chunk in data.draw(chunked(stream)):
        got += reader.feed(chunk)
        assert len(reader.buf) <= MAX_MESSAGE_BYTES
    assert got == [ln.rstrip(b"\n") for ln in lines]
    assert reader.buf == b""
    for (name, m), line in zip(msgs, got, strict=True):
        assert decode(line, ChannelKind(name)).payload == m.payload


@FUZZ
@given(st.lists(st.binary(max_size=40) | st.just(b"\n"), max_size=12), st.data())
def test_linereader_bounded_on_garbage_and_resyncs(parts: list[bytes],
                                                   data: st.DataObject) -> None:
    """With a small limit: only FramingError, never more than `limit` buffered, and a
    valid message after a newline always comes out whole."""
    limit = 16
    reader = LineReader(limit)
    for chunk in data.draw(chunked(b"".join(parts))):
        with contextlib.suppress(FramingError):
            reader.feed(chunk)
        assert len(reader.buf) <= limit
    ok = b'{"a":1}'
    with contextlib.suppress(FramingError):
        reader.feed(b"\n")
    got = reader.feed(ok + b"\n")
    assert got[-1] == ok


def test_linereader_oversized_line() -> None:
    reader = LineReader()
    with pytest.raises(FramingError, match="without a newline") as info:
        reader.feed(b'{"v":1}\n' + b"x" * (MAX_MESSAGE_BYTES + 1))
    assert info.value.lines == [b'{"v":1}']  # the whole line before it is not lost
    assert reader.buf == b""
    assert reader.feed(b"tail of the big line") == []
    assert reader.feed(b'\n{"b":2}\n') == [b'{"b":2}']


# --- decode: concrete cases ----------------------------------------------------------------
def env(event: str = "hello", payload: Any = None, **top: Any) -> bytes:
    obj = {"v": 1, "id": 3, "event": event, "payload": {} if payload is None else payload}
    obj.update(top)
    return json.dumps(obj).encode()


ARR = {"qp_id": 1, "count": 1, "timeout_s": 1}


@pytest.mark.parametrize("line,needle", [
    (b"x" * (MAX_MESSAGE_BYTES + 1), "exceeds"),
    (env("nope"), "unknown event 'nope'"),
    (env("read_u64", {"qp_id": "1", "offset": 0}), "field 'qp_id' has type str, expected int"),
    (env("read_u64", {"qp_id": True, "offset": 0}), "has type bool"),
    (env("fill", {"qp_id": 1}), "lacks field"),
    (env(v=2), "protocol version 2"),
    (env(v=True), "protocol version True"),
    (env(v=1.0), "protocol version 1.0"),
    (b'{"v":1,"event":"hello","payload":{}}', "message id is None"),
    (env(id=-1), "message id is -1"),
    (env(id=True), "message id is True"),
    (env(id=2**64), "more than 20 digits|outside|not an integer"),
    (env("arrivals", {**ARR, "count": -5}), "'count' is -5, outside"),
    (env("arrivals", {**ARR, "timeout_s": -1}), "'timeout_s' is -1 seconds"),
    (env("arrivals", {**ARR, "timeout_s": 1e300}), "'timeout_s' is 1e\\+300 seconds"),
    (env("arrivals", {**ARR, "timeout_s": float("nan")}), "NaN"),
    (env("arrivals", {**ARR, "timeout_s": float("inf")}), "Infinity"),
    (env("arrivals", ARR).replace(b'"timeout_s": 1', b'"timeout_s": 1e999'), "overflows"),
    (env("write_u64", {"qp_id": 1, "offset": 0, "value": 10**30}), "more than 20"),
    (b'{"v":1,"id":' + b"9" * 5000 + b',"event":"hello","payload":{}}', "digits"),
    (env(payload={"x": "[" * 100000}).replace(b'"[', b"[").replace(b'["', b"["),
     "not JSON|deeper"),
    (b'{"v":1,"id":1,"event":"hello","payload":{"x":' + b"[" * 100000 + b"]" * 100000
     + b"}}", "deeper"),
    (env(payload={"x": json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))}), "deeper"),
    (b'{"v":1,"id":1,"event":"hello","event":"shutdown","payload":{}}', "duplicate key"),
    (b'{"v":1,"id":1,"event":"hello","payload":{"x":"\\ud800"}}', "lone surrogate"),
    ('{"v":1,"id":1,"event":"hello","payload":{}}'.encode("utf-16"), "not UTF-8"),
    (b"\xff\xfe\n", "not UTF-8"),
    (env("cm_events", {"count": 1, "timeout_s": 1, "_deadline": 1e300}), "reserved"),
    (env("e" * 500_000), "unknown event"),
    (b"[1,2]", "not a JSON object"),
])
def test_decode_rejects(line: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle) as info:
        decode(line, ChannelKind.PEER)
    assert len(str(info.value)) < ERROR_TEXT_BOUND


def test_decode_error_carries_the_id() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(env("fill", {"qp_id": 1}, id=42), ChannelKind.PEER)
    assert info.value.msg_id == 42
    with pytest.raises(ProtocolError) as info:
        decode(b"garbage", ChannelKind.PEER)
    assert info.value.msg_id == 0


def test_encode_refuses_nan_and_oversize() -> None:
    with pytest.raises(ProtocolError, match="cannot be sent as JSON"):
        Message("ok", {"x": float("nan")}, 1).encode()
    with pytest.raises(ProtocolError, match="MAX_MESSAGE_BYTES"):
        Message("ok", {"x": "y" * MAX_MESSAGE_BYTES}, 1).encode()


def test_workload_spec_from_message() -> None:
    spec = WorkloadSpec(count=8)
    assert WorkloadSpec.from_json(spec.to_json()) == spec
    for bad, needle in [({**spec.to_json(), "count": "8"}, "'count'"),
                        ({**spec.to_json(), "ops": ["SEND", "JUMP"]}, "'ops'"),
                        ({**spec.to_json(), "sizes": 64}, "'sizes'"),
                        ({k: v for k, v in spec.to_json().items() if k != "qps"}, "'qps'"),
                        ({**spec.to_json(), "count": 10**9}, "MAX_COUNT")]:
        with pytest.raises(Exception, match=needle) as info:
            WorkloadSpec.from_json(bad)
        assert info.type.__name__ in ("ProtocolError", "SettingError")


# --- Channel over a socketpair -------------------------------------------------------------
@pytest.fixture
def pair() -> Any:
    a, b = socket.socketpair()
    yield Channel(a, "test worker", ChannelKind.WORKER), b
    a.close()
    b.close()


def test_channel_reply_id_mismatch(pair: Any) -> None:
    chan, other = pair
    other.sendall(Message("ok", {}, 99).encode())
    with pytest.raises(ProtocolError, match="reply id 99 for request 1"):
        chan.request("progress", 2.0)


def test_channel_bad_reply_names_the_channel(pair: Any) -> None:
    chan, other = pair
    other.sendall(b'{"v":1,"id":1,"event":"start","payload":{}}\n')
    with pytest.raises(ProtocolError, match=r"test worker: bad reply .*expected a reply"):
        chan.request("progress", 2.0)


def test_channel_error_with_id_0_answers_the_request(pair: Any) -> None:
    chan, other = pair
    other.sendall(Message("error", {"message": "not JSON", "fix": "f"}, 0).encode())
    with pytest.raises(WorkerError, match="not JSON"):
        chan.request("progress", 2.0)


def test_channel_drops_the_late_reply_of_a_timed_out_request(pair: Any) -> None:
    chan, other = pair
    with pytest.raises(BoundExceeded):
        chan.request("progress", 0.05)
    other.sendall(Message("ok", {"late": 1}, 1).encode() + Message("ok", {"n": 2}, 2).encode())
    assert chan.request("progress", 2.0) == {"n": 2}


WRONG_VALUE = {int: -1, str: 7, dict: [], (int, float): "soon"}  # never valid for the type


@FUZZ
@given(valid_messages("worker"), st.data())
def test_worker_channel_checks_its_own_requests(case: tuple[str, Message],
                                                data: st.DataObject) -> None:
    """A WORKER channel validates what it sends against WORKER_REQUESTS before sending: a
    request with a mistyped field never reaches the worker."""
    _, msg = case
    a, b = socket.socketpair()
    try:
        chan = Channel(a, "test worker", ChannelKind.WORKER)
        fields = SCHEMAS["worker"][msg.event]
        if not fields:
            msg.payload["_reserved"] = 1  # no field to break: a reserved one instead
        else:
            name = data.draw(st.sampled_from(sorted(fields)))
            msg.payload[name] = WRONG_VALUE[fields[name]]
        with pytest.raises(ProtocolError) as info:
            chan.request(msg.event, 2.0, **msg.payload)
        assert info.value.problem and info.value.fix
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)  # nothing was sent
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(("event", "sent_on", "known_on"), [
    ("fill", ChannelKind.WORKER, ChannelKind.PEER),
    ("finish", ChannelKind.PEER, ChannelKind.WORKER),
    ("suspend_prepare", ChannelKind.WORKER, ChannelKind.NOTICE),
    ("start", ChannelKind.NOTICE, ChannelKind.WORKER),
])
def test_decode_knows_each_channels_events_only(event: str, sent_on: ChannelKind,
                                                known_on: ChannelKind) -> None:
    """No channel falls back to another's schema: an event of one is unknown on another."""
    fields = REGISTRY[known_on][event]
    payload = {f: {int: 1, str: "s", dict: {}}.get(t, 1) for f, t in fields.items()}  # type: ignore[call-overload]
    line = Message(event, payload, 5).encode().rstrip(b"\n")
    assert decode(line, known_on).event == event
    with pytest.raises(ProtocolError, match=f"unknown event .* on the {sent_on} channel") as info:
        decode(line, sent_on)
    assert info.value.msg_id == 5


def test_error_reply_is_the_one_form() -> None:
    """error_reply's line decodes as a reply on every request channel, with message, fix,
    type and the request's id (or the id a ProtocolError could read); an "error" reply
    without its fields is refused."""
    line = error_reply(ProtocolError("bad thing", "do better", 17), 0).rstrip(b"\n")
    for channel in (ChannelKind.PEER, ChannelKind.WORKER):
        rep = decode(line, channel, expect_reply=True)
        assert (rep.event, rep.id) == ("error", 17)
        assert "bad thing" in rep.payload["message"] and rep.payload["fix"] == "do better"
        assert rep.payload["type"] == "ProtocolError"
    rep = decode(error_reply(ValueError("x" * 10_000), 3).rstrip(b"\n"), ChannelKind.WORKER,
                 expect_reply=True)
    assert rep.id == 3 and len(rep.payload["message"]) == ERROR_TEXT_MAX
    with pytest.raises(ProtocolError, match="lacks field 'fix'"):
        decode(Message("error", {"message": "m"}, 1).encode().rstrip(b"\n"),
               ChannelKind.WORKER, expect_reply=True)


def test_channel_closed_while_outstanding(pair: Any) -> None:
    chan, other = pair
    other.close()
    with pytest.raises((ProtocolError, OSError)):
        chan.request("progress", 2.0)


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
def test_notify_read_line_any_chunking(case: tuple[str, Message], data: st.DataObject) -> None:
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
        msg = decode(line, ChannelKind.NOTICE)
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
            decode(line, ChannelKind.NOTICE)
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

    def replies(self) -> list[Message]:
        return [decode(ln, ChannelKind.PEER, expect_reply=True) for ln in self.sent.splitlines()]


def fake_handle(msg: Message) -> dict | None:
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
    alive = peer_dispatch.read_and_dispatch(conn, LineReader(), fake_handle, waiting)  # type: ignore[arg-type]
    return conn, waiting, alive


def test_agent_answers_every_bad_line_and_keeps_the_connection() -> None:
    conn, waiting, alive = agent_feed(
        b"garbage\n", b"\xff\n", env("fill", {"qp_id": 1}, id=5) + b"\n",
        env("to_err", {"qp_id": 1}, id=6) + b"\n",
        env("cm_events", {"count": 1, "timeout_s": 1, "_deadline": 0}, id=7) + b"\n",
        env("e" * (MAX_MESSAGE_BYTES - 100), id=8) + b"\n",
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
        assert peer_dispatch.read_and_dispatch(conn, LineReader(), fake_handle, waiting)  # type: ignore[arg-type]
    assert len(waiting) == 1
    _, msg, deadline = waiting[0]
    assert msg.payload["_deadline"] == deadline and deadline - time.monotonic() <= 2.5
    [rep] = conn.replies()
    assert (rep.event, rep.id) == ("error", 11) and "already outstanding" in rep.payload["message"]


def test_agent_drops_a_connection_whose_framing_broke() -> None:
    conn, _, alive = agent_feed(env("hello", id=1) + b"\n", b"x" * (MAX_MESSAGE_BYTES + 10))
    assert not alive
    assert [(r.event, r.id) for r in conn.replies()] == [("ok", 1), ("error", 0)]
    assert "without a newline" in conn.replies()[1].payload["message"]


def test_agent_survives_a_gone_connection() -> None:
    conn = FakeConn(env("hello") + b"\n", broken=True)
    assert not peer_dispatch.read_and_dispatch(conn, LineReader(), fake_handle, [])  # type: ignore[arg-type]


def test_agent_finish_waits_survives_a_gone_connection() -> None:
    agent = peer_agent.Agent.__new__(peer_agent.Agent)  # no device: only the wait list
    agent.qps, agent.cm_events, agent.cm_delivered = {}, [], 0
    msg = decode(env("arrivals", {"qp_id": 9, "count": 1, "timeout_s": 0}), ChannelKind.PEER)
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
def read_replies(sock: socket.socket, n: int, timeout_s: float = BOUND_S) -> list[Message]:
    reader, out = LineReader(), []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(out)} of {n} replies: {out}"
        r, _, _ = select.select([sock], [], [], remaining)
        if r:
            data = sock.recv(1 << 16)
            assert data, f"the worker closed the socket after {len(out)} replies"
            out += [decode(ln, ChannelKind.WORKER, expect_reply=True)
                    for ln in reader.feed(data)]
    return out


def test_worker_process_survives_garbage(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "clients.worker", "--fd",
                             str(theirs.fileno())], pass_fds=[theirs.fileno()], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    theirs.close()
    try:
        bad_start = {"name": "w", "policy": "naive", "spec": {"ops": "x"}, "device": {},
                     "agent_socket": str(tmp_path / "none"), "clients_dir": str(tmp_path),
                     "journal": str(tmp_path / "j.jsonl")}
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
            (b"y" * (MAX_MESSAGE_BYTES + 1) + b"z" * 100_000 + b"still the same line\n", 0,
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
        chan = Channel(ours, "worker", ChannelKind.WORKER)
        chan.next_id = 100
        with pytest.raises(WorkerError, match="'progress' before start"):
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

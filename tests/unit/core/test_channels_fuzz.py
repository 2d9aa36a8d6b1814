"""Peer and control channels: every parser of a line from another process, fuzzed.

This half: decode() (the peer agent's, the client worker's and the power notices'
protocol), LineReader framing and Channel reply matching. The readers (notices, async
events, the agent's dispatch step, a worker fed garbage): test_channels_fuzz_readers.py.
Pure logic: no rxe needed.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from harness.core.schemas import SCHEMAS as REGISTRY
from harness.core.schemas import ChannelKind
from harness.core.strict_json import MAX_DEPTH
from harness.workload.spec import WorkloadSpec
from tests.helpers.fuzz_strategies import (
    ERROR_TEXT_BOUND,
    EVENTS,
    FUZZ,
    SCHEMAS,
    chunked,
    decode_or_error,
    env,
    json_values,
    mutated_lines,
    valid_messages,
)


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

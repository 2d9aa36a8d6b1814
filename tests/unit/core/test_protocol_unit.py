"""The channel protocol: framing, messages, errors. Pure logic: any host."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core import protocol
from harness.core.errors import ProtocolError
from harness.core.schemas import PEER_REQUESTS, ChannelKind


def test_protocol_roundtrip() -> None:
    msg = protocol.Message("fill", {"qp_id": 1, "offset": 0, "length": 8, "seq": 3}, 7)
    back = protocol.decode(msg.encode().rstrip(b"\n"), ChannelKind.PEER)
    assert (back.event, back.payload, back.id) == ("fill", msg.payload, 7)


@pytest.mark.parametrize("line,needle", [
    (b"not json", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"v":2,"id":1,"event":"hello","payload":{}}', "version"),
    (b'{"v":1,"id":1,"event":"nope","payload":{}}', "unknown event"),
    (b'{"v":1,"id":1,"event":"fill","payload":{"qp_id":1}}', "lacks field"),
    (b'{"v":1,"id":1,"event":"read_u64","payload":{"qp_id":"1","offset":0}}', "type"),
    (b'{"v":1,"id":1,"event":"read_u64","payload":{"qp_id":true,"offset":0}}', "type"),
])
def test_protocol_rejects(line: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        protocol.decode(line, ChannelKind.PEER)


def test_protocol_size_limit() -> None:
    reader = protocol.LineReader()
    with pytest.raises(ProtocolError, match="without a newline"):
        reader.feed(b"x" * (protocol.MAX_MESSAGE_BYTES + 1))
    assert reader.buf == b""
    assert reader.feed(b"xxx") == []  # still the oversized line: discarded
    assert reader.feed(b'x\n{"a":1}\n{"b"') == [b'{"a":1}']
    assert reader.feed(b":2}\n") == [b'{"b":2}']


@given(st.binary(max_size=512))
def test_protocol_decode_never_crashes(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.decode(raw, ChannelKind.PEER)


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
       st.sampled_from(sorted(PEER_REQUESTS)))
def test_protocol_decode_fuzz_payloads(payload_obj: dict, event: str) -> None:
    line = json.dumps({"v": 1, "id": 1, "event": event, "payload": payload_obj}).encode()
    try:
        msg = protocol.decode(line, ChannelKind.PEER)
    except ProtocolError:
        return
    for name in PEER_REQUESTS[event]:
        assert name in msg.payload

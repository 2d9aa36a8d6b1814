"""Shared by the channel fuzz tests (tests/unit/core/test_channels_fuzz*.py): hypothesis
strategies for JSON values and protocol messages, mutated lines, and the checks every
decoded message must pass."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from harness.core.errors import ProtocolError
from harness.core.protocol import Message, decode
from harness.core.schemas import MAX_SECONDS, ChannelKind
from harness.core.schemas import SCHEMAS as REGISTRY
from harness.core.strict_json import MAX_INT

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


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def env(event: str = "hello", payload: Any = None, **top: Any) -> bytes:
    obj = {"v": 1, "id": 3, "event": event, "payload": {} if payload is None else payload}
    obj.update(top)
    return json.dumps(obj).encode()

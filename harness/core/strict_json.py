"""Strict JSON for every line protocol between rxe-power's processes.

loads_strict() parses one line and refuses what strict JSON refuses, naming the problem:
not UTF-8, not JSON, NaN/Infinity, a number that overflows a double, an integer of more
than MAX_INT_DIGITS digits, a duplicate key in any object, a lone surrogate in any
string, nesting deeper than MAX_DEPTH. Every failure is a ProtocolError (with the
message's id in `msg_id` when the line parsed far enough to have one).
"""

from __future__ import annotations

import json
import math
from typing import Any

from harness.core.errors import ProtocolError

MAX_DEPTH = 32  # nesting of arrays/objects in one message, the top object counting 1
MAX_INT = 2**64 - 1  # the largest int a schema field (count, id, offset, value) may carry
MAX_INT_DIGITS = 20  # any JSON integer: len(str(2**64)) == 20


class _Reject(Exception):
    """Raised by the tree check; loads_strict() turns it into a ProtocolError."""


class _Bad:
    """What the json hooks put in place of a value strict JSON refuses, so that the
    tree check reports it with the message's id (known once the line has parsed)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class _BadObject(dict[str, Any]):
    """An object with a duplicate key (the last value wins in json; here it is an error)."""

    why = ""


def _parse_int(text: str) -> int | _Bad:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:  # also keeps int() away from its 4300-digit ValueError
        return _Bad(f"an integer of {digits} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float | _Bad:
    val = float(text)
    return val if math.isfinite(val) else _Bad(f"the number {short(text)} overflows a double")


def _parse_constant(text: str) -> _Bad:
    return _Bad(f"{text} (NaN and Infinity are not JSON)")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dups = []
    for key, val in pairs:
        if key in out:
            dups.append(key)
        out[key] = val
    if not dups:
        return out
    bad = _BadObject(out)
    bad.why = f"duplicate key {short(dups[0])} in one object"
    return bad


def short(val: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters: error texts never echo a whole message."""
    text = repr(val)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _check_tree(obj: object) -> None:
    """Nesting depth and string validity of a parsed message, iteratively."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items = list(node.keys()) + list(node.values())
        elif isinstance(node, list):
            items = node
        else:
            items = [node]
            depth -= 1  # a scalar adds no level
        if depth > MAX_DEPTH:
            raise _Reject(f"nesting deeper than MAX_DEPTH={MAX_DEPTH}")
        if isinstance(node, _BadObject):
            raise _Reject(node.why)
        for item in items:
            if isinstance(item, _Bad):
                raise _Reject(item.why)
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))
            elif isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise _Reject(f"a lone surrogate in the string {short(item)}") from None


def loads_strict(line: bytes) -> Any:
    """Parse one line as strict JSON (the rules in the module docstring); every failure is a
    ProtocolError. Shared by every line protocol between rxe-power's processes."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"message is not UTF-8: {exc}",
                            "send one JSON object per line, encoded in UTF-8") from None
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                         parse_constant=_parse_constant, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON: {exc}",
                            "send one JSON object per line") from None
    except RecursionError:
        raise ProtocolError(f"message nests deeper than MAX_DEPTH={MAX_DEPTH} (and than "
                            "Python's recursion limit)", "flatten the payload") from None
    except ValueError as exc:  # anything json.loads itself rejects beyond the above
        raise ProtocolError(f"message is not JSON: {exc}", "send one JSON object per line") \
            from None
    try:
        _check_tree(obj)
    except _Reject as exc:
        mid = obj.get("id") if isinstance(obj, dict) else None
        raise ProtocolError(f"message is not strict JSON: {exc}",
                            "send finite numbers, integers of at most 64 bits, unique keys, "
                            f"valid Unicode strings, nesting at most {MAX_DEPTH} deep",
                            mid if type(mid) is int and 0 <= mid <= MAX_INT else 0) from None
    return obj

"""Dispatch by name: the handler of a request, a wait or a step is the server's method
named PREFIX + the name ('-' read as '_'), as pytest-xdist's `worker_<event>` methods.

    reply = handler_for(self, "peer_", msg.event, "update the agent", msg.id)(msg)

Each server looks its handlers up in one place with `handler_for`; a name it has no
method for is a NoHandler error naming the name and the method. `table_problems` checks
a server class against the names its channel or plan accepts (harness.core.schemas,
power.plan.StepKind): every name has exactly one handler and every handler a name
(tests/unit/test_dispatch_tables.py runs it for every server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from harness.core.errors import NoHandler


def method_name(prefix: str, name: str) -> str:
    """The method that handles `name`: "peer_" + "create_qp", "step_" + "port-down" ->
    step_port_down."""
    return prefix + name.replace("-", "_")


def handler_for(server: object, prefix: str, name: str, fix: str,
                msg_id: int = 0) -> Callable[..., Any]:
    """`server`'s bound method for `name`, or NoHandler naming both (with `fix`, and the
    id of the message it answers, when there is one)."""
    attr = method_name(prefix, name)
    handler = getattr(server, attr, None) if attr.isidentifier() else None
    if handler is None or not callable(handler):
        raise NoHandler(f"{name!r} has no handler in {type(server).__name__} "
                        f"(no method {attr if attr.isidentifier() else repr(attr)})",
                        fix, msg_id)
    return handler  # type: ignore[no-any-return]


def table_problems(server: type, prefix: str, names: Iterable[str]) -> list[str]:
    """What keeps `server`'s PREFIX methods from being the table of `names`: a name with
    no handler, two names sharing one handler, a handler for no name. [] when it is."""
    by_method: dict[str, list[str]] = {}
    for name in names:
        by_method.setdefault(method_name(prefix, name), []).append(name)
    have = {m for m in dir(server) if m.startswith(prefix) and callable(getattr(server, m))}
    cls = server.__name__
    problems = []
    for attr, shared in sorted(by_method.items()):
        if len(shared) > 1:
            problems.append(f"{cls}.{attr} would handle {len(shared)} names: "
                            f"{', '.join(map(repr, shared))}")
        if attr not in have:
            problems.append(f"{shared[0]!r} has no handler: {cls} has no method {attr}")
    problems += [f"{cls}.{attr} handles no name of the table" for attr in sorted(have)
                 if attr not in by_method]
    return problems

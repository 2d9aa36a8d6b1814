"""The three servers dispatch by name (harness.core.handlers): every name a server's channel
or plan accepts has exactly one handler, and every handler a name.

- the peer agent: peer_<event> for harness.core.schemas.PEER_REQUESTS, wait_<event> for
  harness.peer.dispatch.WAIT_EVENTS (the requests answered later);
- the client worker: worker_<event> for WORKER_REQUESTS;
- the peer guest's service: service_<event> for SERVICE_REQUESTS;
- the power shim: step_<kind> for power.plan.StepKind, and so for STEP_DOCS.

Each check has its negative control: a table with a name no server handles, a server
with a handler for no name, a server missing a handler, two names on one method.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from clients.kernel.peer_service import PeerService
from clients.userspace.worker import Worker
from harness.core.errors import NoHandler, ProtocolError, RxePowerError
from harness.core.handlers import handler_for, method_name, table_problems
from harness.core.protocol import Message
from harness.core.schemas import (
    PEER_REQUESTS,
    SCHEMAS,
    SERVICE_REQUESTS,
    WORKER_REQUESTS,
    ChannelKind,
)
from harness.peer.agent import Agent
from harness.peer.dispatch import WAIT_EVENTS
from power.plan import STEP_DOCS, StepKind
from power.shim import Shim

# (server, method prefix, the names it must handle, where those names are defined)
TABLES: list[tuple[type, str, Iterable[str], str]] = [
    (Agent, "peer_", PEER_REQUESTS, "schemas.PEER_REQUESTS"),
    (Agent, "wait_", WAIT_EVENTS, "peer.dispatch.WAIT_EVENTS"),
    (Worker, "worker_", WORKER_REQUESTS, "schemas.WORKER_REQUESTS"),
    (PeerService, "service_", SERVICE_REQUESTS, "schemas.SERVICE_REQUESTS"),
    (Shim, "step_", [k.value for k in StepKind], "plan.StepKind"),
    (Shim, "step_", [k.value for k in STEP_DOCS], "plan.STEP_DOCS"),
]
# every channel of the schema registry: the server that answers it here, or why none
CHANNEL_SERVERS = {
    ChannelKind.PEER: Agent,
    ChannelKind.WORKER: Worker,
    ChannelKind.SERVICE: PeerService,
    ChannelKind.NOTICE: None,  # power.notify: two notices one way, three answers back
    ChannelKind.PEER_AUTH: None,  # core.peer_auth: a three-line handshake, not a request table
}


@pytest.mark.parametrize(("server", "prefix", "names", "source"), TABLES,
                         ids=[f"{t[0].__name__}.{t[1]}*={t[3]}" for t in TABLES])
def test_every_name_has_exactly_one_handler(server: type, prefix: str, names: Iterable[str],
                                            source: str) -> None:
    names = list(names)
    assert names, source
    assert table_problems(server, prefix, names) == []


def unchecked_channels(servers: dict[Any, type | None], schemas: dict[Any, Any],
                       tables: list[tuple[type, str, Iterable[str], str]]) -> list[str]:
    """The channels of `schemas` whose server is not named, or not checked against that
    channel's schema in `tables`."""
    out = [f"{c}: no server named" for c in schemas if c not in servers]
    out += [f"{c}: {server.__name__} is not checked against its schema"
            for c, server in servers.items() if server is not None
            and not any(s is server and names is schemas[c] for s, _, names, _ in tables)]
    return out


def test_every_channel_of_the_registry_has_its_server_checked() -> None:
    assert set(SCHEMAS) == set(ChannelKind)
    assert unchecked_channels(CHANNEL_SERVERS, SCHEMAS, TABLES) == []
    # negative controls: a new channel, a server whose table was left out
    assert unchecked_channels(CHANNEL_SERVERS, {**SCHEMAS, "bulk": {"put": {}}}, TABLES) == [
        "bulk: no server named"]
    assert unchecked_channels(CHANNEL_SERVERS, SCHEMAS,
                              [t for t in TABLES if t[0] is not Worker]) == [
        "worker: Worker is not checked against its schema"]


def test_waits_are_requests() -> None:
    assert set(WAIT_EVENTS) <= set(PEER_REQUESTS)


# --- negative controls: the check reports each kind of mismatch -------------------------------

def test_a_name_without_handler_is_reported() -> None:
    problems = table_problems(Agent, "peer_", [*PEER_REQUESTS, "teleport"])
    assert problems == ["'teleport' has no handler: Agent has no method peer_teleport"]
    problems = table_problems(Shim, "step_", [*(k.value for k in StepKind), "warp-drive"])
    assert problems == ["'warp-drive' has no handler: Shim has no method step_warp_drive"]


def test_a_handler_without_name_is_reported() -> None:
    class ChattyWorker(Worker):
        def worker_gossip(self, msg: Message) -> dict[str, Any]:
            return {}

    assert table_problems(ChattyWorker, "worker_", WORKER_REQUESTS) == [
        "ChattyWorker.worker_gossip handles no name of the table"]
    # a registry that lost a name leaves its handler without one
    fewer = [n for n in PEER_REQUESTS if n != "holders"]
    assert table_problems(Agent, "peer_", fewer) == [
        "Agent.peer_holders handles no name of the table"]


def test_a_missing_handler_is_reported() -> None:
    # a copy of Shim without step_hold (a subclass cannot delete an inherited method)
    body = {k: v for k, v in vars(Shim).items() if k not in ("step_hold", "__dict__",
                                                              "__weakref__")}
    holdless = type("HoldlessShim", Shim.__bases__, body)
    assert table_problems(holdless, "step_", [k.value for k in StepKind]) == [
        "'hold' has no handler: HoldlessShim has no method step_hold"]


def test_two_names_on_one_handler_are_reported() -> None:
    problems = table_problems(Shim, "step_", [*(k.value for k in StepKind), "port_down"])
    assert problems == ["Shim.step_port_down would handle 2 names: 'port-down', 'port_down'"]


def test_a_non_callable_is_no_handler() -> None:
    class Odd:
        peer_hello = "not a method"

    assert table_problems(Odd, "peer_", ["hello"]) == [
        "'hello' has no handler: Odd has no method peer_hello"]
    with pytest.raises(NoHandler):
        handler_for(Odd(), "peer_", "hello", "fix")


# --- the one lookup ----------------------------------------------------------------------------

def test_method_names() -> None:
    assert method_name("step_", "notify-suspend") == "step_notify_suspend"
    assert method_name("peer_", "create_qp") == "peer_create_qp"


@pytest.mark.parametrize("name", ["teleport", "../x", "a b", "", "hello\n"])
def test_an_unknown_name_is_a_typed_error_naming_it(name: str) -> None:
    agent = Agent.__new__(Agent)  # no device: only the lookup
    with pytest.raises(NoHandler) as exc:
        agent.handle(Message(name, {}, 7))
    assert repr(name) in exc.value.problem
    assert exc.value.fix == "update the agent" and exc.value.msg_id == 7
    assert isinstance(exc.value, ProtocolError)  # answered as an error reply, as before


def test_the_agent_dispatches_to_its_handlers() -> None:
    agent = Agent.__new__(Agent)
    agent.running, agent.qps = True, {}
    assert agent.handle(Message("shutdown", {}, 1)) == {}
    assert agent.running is False
    with pytest.raises(RxePowerError, match="no QP with id 5") as exc:
        agent.handle(Message("qp_state", {"qp_id": 5}, 2))
    assert not isinstance(exc.value, NoHandler)  # found its handler, which refused
    waits = {"arrivals": {"qp_id": 5, "count": 1}, "probe": {"qp_id": 5}}
    for event, payload in waits.items():  # a wait whose QP went is answered, not kept
        wait = handler_for(agent, "wait_", event, "")
        assert wait(Message(event, payload, 3), 0.0) == {"error": "QP destroyed while waiting"}


def test_the_worker_dispatches_to_its_handlers() -> None:
    worker = Worker.__new__(Worker)
    worker.core, worker.finish_msg = None, None
    with pytest.raises(RxePowerError, match="'progress' before start") as exc:
        worker.handle(Message("progress", {}, 1))
    assert not isinstance(exc.value, NoHandler)
    with pytest.raises(NoHandler, match="'gossip' has no handler in Worker"):
        worker.handle(Message("gossip", {}, 2))
    # the guards that were the loop's, now their handlers'
    worker.core = SimpleNamespace(name="c1")  # type: ignore[assignment]
    worker.finish_msg = Message("finish", {"timeout_s": 5}, 4)
    with pytest.raises(ProtocolError, match="start while client 'c1' is running"):
        worker.handle(Message("start", {}, 5))
    with pytest.raises(ProtocolError, match="finish while finish id 4 is outstanding"):
        worker.handle(Message("finish", {"timeout_s": 1}, 6))
    with pytest.raises(RxePowerError, match="round while a finish is outstanding"):
        worker.handle(Message("round", {"spec": {}}, 7))


def test_the_shim_reports_a_step_without_handler_as_a_step_error() -> None:
    class Warp:
        value = "warp-drive"

    shim = Shim.__new__(Shim)
    with pytest.raises(NoHandler, match="'warp-drive' has no handler in Shim") as exc:
        shim._execute_step(None, Warp())  # type: ignore[arg-type]
    assert isinstance(exc.value, RxePowerError)  # Shim._run_step records the step failed

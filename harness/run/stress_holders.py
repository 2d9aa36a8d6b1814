"""Who holds a stress run's RDMA objects, when a device's `rdma res` counts differ from
cycle 1's: each object's process (`rdma -j res show qp|cq|mr|pd`) named by its part in
the run (a client worker, the peer agent, the shim's event reader, the controller, the
kernel), and the peer agent's QPs split by the client they were made for (the agent's
own record, harness.peer.keepalive). The difference from cycle 1 is then either
explained as passing (a client that ended in this cycle took its objects with it; the
peer agent still holds the QPs of a client gone for less than its keep-alive) or not:
a leak or a loss, with its holder named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.system.rdma_res import RES_KINDS, Counts, ResHolder

# harness.rdma.verbs.RcQp: each of the agent's QPs is a QP with its own CQ and MR; the PD
# is the agent's Device's, shared by all of them
OBJECTS_PER_AGENT_QP: Counts = {"qp": 1, "cq": 1, "mr": 1, "pd": 0}
PEER_AGENT = "peer agent"


def zero() -> Counts:
    return dict.fromkeys(RES_KINDS, 0)


def signed(d: Counts) -> str:
    return ", ".join(f"{v:+d} {k}" for k, v in d.items() if v)


@dataclass
class RunParts:
    """The run's processes by pid (every pid a part ever had: a respawned worker keeps its
    name), the parts not running at this check and why, and the agent's QP record."""

    names: dict[int, str] = field(default_factory=dict)
    gone: dict[str, str] = field(default_factory=dict)  # part -> why it is not running
    agent_pid: int | None = None
    agent: dict[str, Any] | None = None  # the agent's "holders" reply, at this check

    def name(self, h: ResHolder) -> str:
        if h.pid is None:
            return f"kernel ({h.comm or '?'})"
        return self.names.get(h.pid, f"pid {h.pid} ({h.comm or '?'}), not the run's")


def by_part(holders: dict[ResHolder, Counts], parts: RunParts) -> dict[str, Counts]:
    """One device's objects per part; the agent's QPs made for a client are that client's
    part at the peer ("peer agent for NAME")."""
    out: dict[str, Counts] = {}
    for h, c in holders.items():
        acc = out.setdefault(parts.name(h), zero())
        for k in RES_KINDS:
            acc[k] += c.get(k, 0)
    own = out.get(PEER_AGENT)
    if own is None or not parts.agent:
        return out
    for q in parts.agent.get("qps", []):
        if q.get("controller"):
            continue
        client = parts.names.get(q.get("owner_pid") or -1, f"pid {q.get('owner_pid')}")
        acc = out.setdefault(f"{PEER_AGENT} for {client}", zero())
        for k in RES_KINDS:
            acc[k] += OBJECTS_PER_AGENT_QP[k]
            own[k] -= OBJECTS_PER_AGENT_QP[k]
    return out


def _keepalive(parts: RunParts, client: str) -> tuple[bool, str]:
    """Is the agent within its keep-alive for `client`'s QPs? (True, why) if so."""
    ka = (parts.agent or {}).get("keepalive_s")
    pids = {p for p, n in parts.names.items() if n == client}
    gone = [q.get("partner_gone_s") for q in (parts.agent or {}).get("qps", [])
            if q.get("owner_pid") in pids and not q.get("controller")]
    if ka is None or not gone:
        return False, "the agent has no record of them"
    if any(g is None for g in gone):
        return False, f"{client} is still connected to the agent"
    oldest = max(float(g) for g in gone)
    if oldest < float(ka):
        return True, (f"{client} went {oldest:.1f} s ago; the agent's keep-alive destroys "
                      f"them at {float(ka):g} s")
    return False, f"{client} went {oldest:.1f} s ago, past the agent's keep-alive of {ka:g} s"


def explain(dev: str, base: dict[str, Counts], now: dict[str, Counts],
            parts: RunParts) -> tuple[bool, str]:
    """(all of the difference is passing, who holds what): the difference between a
    device's objects per part now and at cycle 1."""
    diffs = {p: {k: now.get(p, zero())[k] - base.get(p, zero())[k] for k in RES_KINDS}
             for p in sorted(set(base) | set(now))}
    lines, explained = [], True
    for part, d in diffs.items():
        if not any(d.values()):
            continue
        held = now.get(part, zero())
        if part.startswith(f"{PEER_AGENT} for "):
            client = part.removeprefix(f"{PEER_AGENT} for ")
            ok, why = _keepalive(parts, client)
            pid = f" (pid {parts.agent_pid})" if parts.agent_pid else ""
            lines.append(f"{signed(d)} held by the {PEER_AGENT}{pid} for client {client}: {why}")
        elif part in parts.gone and all(v <= 0 for v in d.values()) \
                and not any(held.values()):
            ok = True
            lines.append(f"{signed(d)} of {part}: {parts.gone[part]}; its objects went with it")
        else:
            ok = False
            now_text = ", ".join(f"{k} {v}" for k, v in held.items())
            lines.append(f"{signed(d)} held by {part} ({now_text} now)"
                         if any(v > 0 for v in d.values())
                         else f"{signed(d)} of {part} ({now_text} now)")
        explained &= ok
    if not lines:  # the totals differ but no part's count does: nothing explains that
        return False, f"{dev}: no part's count changed (objects appeared or went unseen)"
    return explained, f"{dev}: " + "; ".join(lines)


class HolderExplainer:
    """CycleChecks' `explain`: the per-part breakdown at cycle 1 (`take_base`) and, for a
    device whose counts differ, now (one breakdown per check: `new_check`)."""

    def __init__(self, parts: Callable[[], RunParts],
                 breakdown: Callable[[], dict[str, dict[ResHolder, Counts]]]) -> None:
        self.parts, self.breakdown = parts, breakdown
        self.base: dict[str, dict[str, Counts]] | None = None
        self.now: dict[str, dict[str, Counts]] | None = None
        self._parts_now: RunParts | None = None

    def _by_part(self, parts: RunParts) -> dict[str, dict[str, Counts]]:
        return {dev: by_part(h, parts) for dev, h in self.breakdown().items()}

    def take_base(self) -> None:
        self.base = self._by_part(self.parts())

    def new_check(self) -> None:
        self.now = self._parts_now = None

    def __call__(self, dev: str, counts: Counts) -> tuple[bool, str]:
        if self.base is None:
            return False, f"{dev}: no breakdown of cycle 1 to compare with"
        if self.now is None or self._parts_now is None:
            self._parts_now = self.parts()
            self.now = self._by_part(self._parts_now)
        return explain(dev, self.base.get(dev, {}), self.now.get(dev, {}), self._parts_now)

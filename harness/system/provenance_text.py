"""Comparing and showing provenances (harness.system.provenance): the compared fields,
the lines at the top of a table, a results header's provenance, what differs among files.

    describe(prov)                       # the lines at the top of table.txt and the HTML
    differing_fields([a, b, ...])        # the dotted names of the compared fields that differ
    header_provenance(header)            # recorded, not recorded (older file) or unreadable
    header_differences([h1, h2, ...]); mixed_lines(names, diff)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from harness.system.provenance import Machine, Provenance, ProvenanceError
from harness.system.rxe_module import TAINT_FLAGS, Loaded

# context, not identity: two runs of one setup may differ here
NOT_COMPARED = frozenset({"mode_reason", "accel_reason", "removal_reason", "peer_reason",
                          "problems",
                          "tree.problem", "command_line", "machine.load_1m",
                          "host.load_1m"})


def flat(p: Provenance) -> dict[str, object]:
    """Every compared field by its dotted name (kernel.release, module.sha256, ...)."""
    out: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            if not value and prefix:
                out[prefix] = None
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", p.to_json())
    return {k: v for k, v in out.items() if k not in NOT_COMPARED}


def differing_fields(provs: Iterable[Provenance | None]) -> dict[str, list[object]]:
    """The compared fields whose values differ among `provs`, each with the value of every
    provenance in order (None: not recorded, compared as its own value). Empty: all the
    same."""
    flats = [flat(p) if p is not None else {"provenance": "not recorded"} for p in provs]
    keys = sorted({k for f in flats for k in f})
    return {k: [f.get(k) for f in flats] for k in keys
            if len({repr(f.get(k)) for f in flats}) > 1}


def _taint_text(letters: str) -> str:
    if not letters:
        return "not tainted"
    if letters == "?":
        return "taint unknown"
    names = ", ".join(TAINT_FLAGS.get(c, c) for c in letters if c.isalpha())
    return f"taint {letters} ({names})"


def _load_text(m: Machine) -> str:
    return "" if m.load_1m is None else f", load {m.load_1m:.2f} at the start"


def _or(value: object, unknown: str = "?") -> str:
    return unknown if value is None else str(value)


def describe(p: Provenance) -> list[str]:
    """A few lines: what made the results (the top of table.txt)."""
    m, k = p.module, p.kernel
    host = (f"; host {p.host.cpus} CPUs, {_or(p.host.memory_mib)} MiB, kernel "
            f"{p.host.kernel or '?'}{_load_text(p.host)}" if p.host else "")
    if m.kind is Loaded.NONE:
        module = "rdma_rxe not loaded"
    else:
        src = " ".join(x for x in (m.source_package, m.source_version) if x) or "source ?"
        module = (f"rdma_rxe {m.kind} ({src}" + (f", patch {m.patch}" if m.patch else "")
                  + f"), sha256 {_or(m.sha256)}"
                  + ("" if m.file_matches_loaded is not False else " (NOT the loaded one)")
                  + f", module {_taint_text(m.taint)}")
    tree = (f"tree {p.tree.commit[:12]}" + (" (dirty)" if p.tree.dirty else
                                             "" if p.tree.dirty is False else " (dirty?)")
            if p.tree.commit else f"tree unknown ({p.tree.problem or 'not recorded'})")
    pk = p.packages
    lines = [
        f"provenance: mode {p.mode} ({p.mode_reason}), accel {p.accel}; machine "
        f"{p.machine.cpus} CPUs, {_or(p.machine.memory_mib)} MiB{_load_text(p.machine)}{host}",
        f"  kernel {k.release} ("
        + (f"{k.package} {k.package_version}" if k.package else "no installed package")
        + f"), {_taint_text(k.taint_flags)}",
        f"  {module}",
        f"  removal {_or(p.removal, 'unknown')} (requested {p.removal_requested}: "
        f"{p.removal_reason}); peer {p.peer}"
        + (f" ({p.peer_reason})" if p.peer_reason else "")
        + f"; faults {', '.join(p.faults) or 'none (no transition)'}",
        f"  rdma-core {_or(pk.rdma_core, 'absent')}, ibverbs-providers "
        f"{_or(pk.ibverbs_providers, 'absent')}, perftest {_or(pk.perftest, 'absent')}; {tree}",
    ]
    if p.peer_host is not None:
        ph = p.peer_host
        lines.append(f"  peer kernel {ph.kernel} ({ph.device}; boot id {ph.boot_id[:8]}, the "
                     f"local {ph.local_boot_id[:8]}; {_or(ph.vcpus)} vCPU, {_or(ph.memory)})")
    if p.command_line:
        lines.append(f"  command: {p.command_line}")
    lines += [f"  not read: {x}" for x in p.problems]
    return lines


class Recorded(StrEnum):
    """Whether a results file's header carries a provenance."""

    YES = "recorded"
    NO = "not recorded"  # written before rxe-power recorded it
    UNREADABLE = "unreadable"  # there, but of the wrong shape (`problem` says how)


@dataclass(frozen=True)
class HeaderProvenance:
    """A results file's provenance as read from its header."""

    state: Recorded
    provenance: Provenance | None = None
    problem: str = ""

    def lines(self) -> list[str]:
        if self.provenance is not None:
            return describe(self.provenance)
        if self.state is Recorded.NO:
            return ["provenance: not recorded (a results file written before rxe-power "
                    "recorded it)"]
        return [f"provenance: unreadable ({self.problem})"]


def header_provenance(header: dict[str, Any] | None) -> HeaderProvenance:
    raw = (header or {}).get("provenance")
    if raw is None:
        return HeaderProvenance(Recorded.NO)
    try:
        return HeaderProvenance(Recorded.YES, Provenance.from_json(raw))
    except ProvenanceError as exc:
        return HeaderProvenance(Recorded.UNREADABLE, problem=exc.problem)


def header_differences(heads: list[HeaderProvenance]) -> dict[str, list[object]]:
    """The fields in which several files' provenances differ (empty: comparable). Files
    without one agree with each other (nothing to compare: each says so) and differ from a
    recorded one; an unreadable one differs from every other file."""
    if len(heads) < 2:
        return {}
    states = [h.state for h in heads]
    if Recorded.UNREADABLE in states or len(set(states)) > 1:
        return {"provenance": [h.state.value for h in heads]}
    if states[0] is Recorded.NO:
        return {}
    return differing_fields(h.provenance for h in heads)


def mixed_lines(names: list[str], diff: dict[str, list[object]]) -> list[str]:
    """What differs among the provenances of the files `names` (one line per field)."""
    out = [f"provenance: MIXED across {len(names)} results files "
           f"({', '.join(names)}); they differ in:"]
    for key, values in diff.items():
        out.append(f"  {key}: " + "; ".join(f"{_or(v, 'none')} ({n})"
                                          for v, n in zip(values, names, strict=True)))
    return out

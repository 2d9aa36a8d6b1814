"""The kernel's RDMA resources (QPs, CQs, MRs, PDs), from `rdma -j res show`: the
counts per device, and who holds them (each object's process, from `rdma -j res show
qp|cq|mr|pd`: a user object names its pid, a kernel one only its module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.system import command

RES_KINDS = ("qp", "cq", "mr", "pd")
RDMA_RES_TIMEOUT_S = 10.0
Counts = dict[str, int]  # kind -> count


def parse_res_summary(data: list[dict[str, Any]]) -> dict[str, Counts]:
    """`rdma -j res show` -> {device: {qp, cq, mr, pd}}."""
    out: dict[str, Counts] = {}
    for d in data:
        if not isinstance(d, dict) or "ifname" not in d:
            continue
        vals = d.get("volatile", d)  # some iproute2 versions nest the counts
        out[str(d["ifname"])] = {k: int(vals.get(k, 0)) for k in RES_KINDS}
    return out


def res_summary() -> dict[str, Counts]:
    return parse_res_summary(command.run_json(["rdma", "-j", "res", "show"],
                                              RDMA_RES_TIMEOUT_S))


@dataclass(frozen=True)
class ResHolder:
    """Who holds an object: a process (pid and its comm) or the kernel (pid None, the
    module `rdma` names, e.g. "ib_core")."""

    pid: int | None
    comm: str

    def key(self) -> str:
        return f"pid {self.pid}" if self.pid is not None else f"kernel {self.comm}"


def parse_res_objects(data: list[dict[str, Any]]) -> list[tuple[str, ResHolder]]:
    """`rdma -j res show KIND` -> [(device, holder)], one per object."""
    out = []
    for d in data:
        if not isinstance(d, dict) or "ifname" not in d:
            continue
        pid = d.get("pid")
        comm = str(d.get("comm", "")).strip("[]")
        out.append((str(d["ifname"]),
                    ResHolder(int(pid) if isinstance(pid, int) else None, comm)))
    return out


def count_by_holder(objects: dict[str, list[tuple[str, ResHolder]]],
                    ) -> dict[str, dict[ResHolder, Counts]]:
    """{kind: [(device, holder)]} -> {device: {holder: {kind: count}}}."""
    out: dict[str, dict[ResHolder, Counts]] = {}
    for kind, objs in objects.items():
        for dev, holder in objs:
            counts = out.setdefault(dev, {}).setdefault(holder, dict.fromkeys(RES_KINDS, 0))
            counts[kind] += 1
    return out


def res_by_holder() -> dict[str, dict[ResHolder, Counts]]:
    """Every QP, CQ, MR and PD now, counted per device and holder (four `rdma` calls)."""
    return count_by_holder({k: parse_res_objects(command.run_json(
        ["rdma", "-j", "res", "show", k], RDMA_RES_TIMEOUT_S)) for k in RES_KINDS})

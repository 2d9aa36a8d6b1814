"""What a stress cycle checks besides the ledger, for userspace and kernel clients alike:
a process's fds, RSS and threads against its figures after cycle 1 (psutil), the
kernel's RDMA resources per device against those after cycle 1 (`rdma -j res`), and
each figure's series summarized (first, last, max, trend).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from harness.system import command

RES_KINDS = ("qp", "cq", "mr", "pd")
FD_SLACK = 2  # open fds a worker may have above its first-cycle figure
THREAD_SLACK = 1
RSS_SLACK_KB = 16 * 1024  # Python's allocator settles over the first cycles
RSS_SLACK_SHARE = 0.25
RDMA_RES_TIMEOUT_S = 10.0


@dataclass
class Usage:
    fds: int
    rss_kb: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        p = psutil.Process(pid)
        with p.oneshot():
            return cls(p.num_fds(), p.memory_info().rss // 1024, p.num_threads())


def usage_problems(name: str, base: Usage, now: Usage) -> list[str]:
    out = []
    if now.fds > base.fds + FD_SLACK:
        out.append(f"{name}: {now.fds} open fds, {base.fds} after cycle 1 (slack {FD_SLACK})")
    if now.threads > base.threads + THREAD_SLACK:
        out.append(f"{name}: {now.threads} threads, {base.threads} after cycle 1")
    limit = base.rss_kb + max(RSS_SLACK_KB, int(base.rss_kb * RSS_SLACK_SHARE))
    if now.rss_kb > limit:
        out.append(f"{name}: RSS {now.rss_kb} KiB, {base.rss_kb} KiB after cycle 1 "
                   f"(limit {limit} KiB)")
    return out


def parse_rdma_res(data: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """`rdma -j res show` -> {device: {qp, cq, mr, pd}}."""
    out: dict[str, dict[str, int]] = {}
    for d in data:
        if not isinstance(d, dict) or "ifname" not in d:
            continue
        vals = d.get("volatile", d)  # some iproute2 versions nest the counts
        out[d["ifname"]] = {k: int(vals.get(k, 0)) for k in RES_KINDS}
    return out


def rdma_res() -> dict[str, dict[str, int]]:
    return parse_rdma_res(command.run_json(["rdma", "-j", "res", "show"], RDMA_RES_TIMEOUT_S))


def res_problems(base: dict[str, dict[str, int]], now: dict[str, dict[str, int]],
                 devs: tuple[str, ...]) -> list[str]:
    out = []
    for dev in devs:
        b, n = base.get(dev, {}), now.get(dev, {})
        diff = {k: (b.get(k, 0), n.get(k, 0)) for k in RES_KINDS if b.get(k, 0) != n.get(k, 0)}
        if diff:
            out.append(f"{dev} RDMA resources differ from cycle 1: " + ", ".join(
                f"{k} {a} -> {c}" for k, (a, c) in diff.items()))
    return out


@dataclass
class CycleOutcome:
    cycle: int
    ok: bool
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def trend(values: list[float]) -> float:
    """Least-squares slope per cycle (0 for fewer than two points)."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    den = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / den


def summarize(series: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"first": v[0], "last": v[-1], "max": max(v), "min": min(v),
                "slope_per_cycle": round(trend(v), 4)} for k, v in series.items() if v}


class CycleChecks:
    """The baselines after cycle 1 and every figure's series; `check` compares a cycle's
    processes and the kernel's RDMA resources with them (shared by userspace and kernel
    stress runs)."""

    def __init__(self, devs: tuple[str, ...]) -> None:
        self.devs = devs
        self.usage_base: dict[str, Usage] = {}
        self.res_base: dict[str, dict[str, int]] | None = None
        self.series: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        self.series.setdefault(name, []).append(value)

    def forget(self, name: str) -> None:
        """A new process under an old name (a respawned worker): a new baseline."""
        self.usage_base.pop(name, None)

    def check(self, usage: dict[str, Usage]) -> tuple[list[str], dict[str, dict[str, int]]]:
        """(the problems, `rdma res` now) for this cycle; the series grow by one."""
        failures: list[str] = []
        for name, u in usage.items():
            failures += usage_problems(name, self.usage_base.setdefault(name, u), u)
            for k, v in asdict(u).items():
                self.add(f"{name}.{k}", v)
        res_now = rdma_res()
        if self.res_base is None:
            self.res_base = res_now
        failures += res_problems(self.res_base, res_now, self.devs)
        for dev in self.devs:
            for k in RES_KINDS:
                self.add(f"{dev}.{k}", res_now.get(dev, {}).get(k, 0))
        return failures, res_now

"""What a bench run measures: its sections, sizes, counts and bounds (BenchSpec)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.core.bounds import MAX_CYCLES, MAX_HOLD_MS, MAX_ITERATIONS, check_number
from harness.core.errors import SettingError
from harness.run.bench.bounds import SectionBound
from harness.workload.ledger import MAX_MESSAGE, Op, WorkloadSpec

BENCH_VM_TIMEOUT_S = 3600.0
SECTIONS = ("throughput", "latency", "cycle", "stress", "qps", "blockio")
BENCH_TRANSITION = "standby"  # the transition of the cycle, stress and qps sections
TRANSITION_SECTIONS = frozenset({"cycle", "stress", "qps"})
BASE_COUNT = ((256, 20000), (8192, 8000), (1 << 30, 2000))  # (size up to, messages)
# The harness runs' retry_cnt: the largest rxe counts down (7 is "retry forever" on rxe),
# so a peer that stops answering ends the run in RETRY_EXC_ERR after 7 timeouts of ~67 ms
# without progress (any ACK resets the count), a FAILED row, instead of a run that waits
# for HARNESS_RUN_TIMEOUT_S
BENCH_RETRY_CNT = 6
MIN_COUNT = 50
# Every section is bounded (harness.run.bench.bounds). Each bound is for the default amount
# of work and grows with it (a larger --scale, more sizes, cycles, QPs or writes); the
# whole default bench took about 6 minutes in the TCG guest, its throughput section ~1.5.
THROUGHPUT_SECTION_TIMEOUT_S = 900.0  # three sizes at --scale 1
LATENCY_SECTION_TIMEOUT_S = 600.0  # --lat-iters 2000
CYCLE_SECTION_TIMEOUT_S = 60.0  # per standby cycle (and once for the workers' start)
STRESS_SECTION_TIMEOUT_S = 60.0  # per stress cycle (and once for its start)
QPS_SECTION_TIMEOUT_S = 600.0  # 1,024 QPs
BLOCKIO_SECTION_TIMEOUT_S = 900.0  # 2,000 writes of our driver and of fio


@dataclass(frozen=True)
class BenchSpec:
    sizes: tuple[int, ...] = (64, 4096, 65536)
    queue_depth: int = 64
    scale: float = 1.0  # multiplies the message counts (BASE_COUNT)
    lat_iters: int = 2000
    cycles: int = 10
    stress_cycles: int = 5
    qps: int = 1024
    qp_workers: int = 8
    hold_ms: int = 100
    sections: tuple[str, ...] = SECTIONS
    cycle_count: int = 800  # requests per client and cycle (at CYCLE_RATE: 4 s, outlasting it)
    blockio_count: int = 2000  # 4 KiB writes of the block driver and of fio (nvme-rdma)
    blockio_depth: int = 4

    def validate(self) -> BenchSpec:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad or not self.sections:
            raise SettingError(f"--only {','.join(self.sections)}: unknown section(s) {bad}",
                               f"choose from {', '.join(SECTIONS)}")
        if not self.sizes or any(not 1 <= s <= MAX_MESSAGE for s in self.sizes):
            raise SettingError(f"--sizes {self.sizes} must be 1..{MAX_MESSAGE} bytes",
                               "give message sizes that fit a slot")
        for name, val, lo, hi, unit, bound in (
                ("--queue-depth", self.queue_depth, 1, MAX_ITERATIONS, "requests",
                 "MAX_ITERATIONS"),
                ("--lat-iters", self.lat_iters, 10, MAX_ITERATIONS, "iterations",
                 "MAX_ITERATIONS"),
                ("--cycles", self.cycles, 1, MAX_CYCLES, "cycles", "MAX_CYCLES"),
                ("--stress-cycles", self.stress_cycles, 1, MAX_CYCLES, "cycles", "MAX_CYCLES"),
                ("--qp-workers", self.qp_workers, 1, MAX_ITERATIONS, "workers",
                 "MAX_ITERATIONS"),
                ("--qps", self.qps, 1, MAX_ITERATIONS, "QPs", "MAX_ITERATIONS"),
                ("--hold-ms", self.hold_ms, 0, MAX_HOLD_MS, "ms", "MAX_HOLD_MS"),
                ("cycle_count", self.cycle_count, 1, MAX_ITERATIONS, "requests",
                 "MAX_ITERATIONS"),
                ("blockio_count", self.blockio_count, 1, 16384, "writes (a 64 MiB disk)",
                 "the disk's 16384 blocks"),
                ("blockio_depth", self.blockio_depth, 1, 64, "threads", "64")):
            check_number(name, val, lo, hi, unit, bound)
        if not 0 < self.scale <= 100:
            raise SettingError(f"--scale {self.scale} must be in (0, 100]",
                               "1 is the full run; 0.05 a quick look")
        if self.qps < self.qp_workers or self.qps % self.qp_workers:
            raise SettingError(f"--qps {self.qps} must be a multiple of --qp-workers "
                               f"{self.qp_workers}", "e.g. --qps 1024 --qp-workers 8")
        for size in self.sizes:  # the workloads must pass the ledger's own checks
            self.throughput_spec("SEND", size)
        self.qp_spec()
        return self

    def section_bound(self, section: str) -> SectionBound:
        """The section's bound, started now: its ..._SECTION_TIMEOUT_S times the work
        asked for relative to the default (never less than once)."""
        name, base, times = {
            "throughput": ("THROUGHPUT_SECTION_TIMEOUT_S", THROUGHPUT_SECTION_TIMEOUT_S,
                           max(1.0, self.scale) * max(1.0, len(self.sizes) / 3)),
            "latency": ("LATENCY_SECTION_TIMEOUT_S", LATENCY_SECTION_TIMEOUT_S,
                        max(1.0, self.lat_iters / 2000)),
            "cycle": ("CYCLE_SECTION_TIMEOUT_S", CYCLE_SECTION_TIMEOUT_S,
                      float(self.cycles + 1)),
            "stress": ("STRESS_SECTION_TIMEOUT_S", STRESS_SECTION_TIMEOUT_S,
                       float(self.stress_cycles + 1)),
            "qps": ("QPS_SECTION_TIMEOUT_S", QPS_SECTION_TIMEOUT_S, max(1.0, self.qps / 1024)),
            "blockio": ("BLOCKIO_SECTION_TIMEOUT_S", BLOCKIO_SECTION_TIMEOUT_S,
                        max(1.0, self.blockio_count / 2000)),
        }[section]
        return SectionBound(section, name if times == 1 else f"{name} x {times:g}",
                            base * times)

    def count(self, size: int) -> int:
        base = next(n for limit, n in BASE_COUNT if size <= limit)
        return max(MIN_COUNT, int(base * self.scale))

    def throughput_spec(self, op: str, size: int, queue_depth: int | None = None,
                        completion: str = "events", count: int | None = None,
                        signal_every: int | None = None) -> WorkloadSpec:
        """One QP flat out. signal_every defaults to the queue depth: perftest's CQ
        moderation at the same -t (it prints "CQ Moderation: 64" for -t 64)."""
        qd = queue_depth or self.queue_depth
        # WRITE targets: the sender may be qd requests ahead, the agent's unprocessed
        # arrivals up to its 2 x qd receives: 4 x qd slots never overwrite one unchecked
        return WorkloadSpec(ops=(Op(op),), sizes=(size,), count=count or self.count(size),
                            rate_per_s=0.0, queue_depth=qd, qps=1, completion=completion,
                            retry_cnt=BENCH_RETRY_CNT, write_slots=4 * qd,
                            signal_every=signal_every or qd).validate()

    def qp_spec(self) -> WorkloadSpec:
        """Each scale worker: qps/qp_workers QPs, 4 small requests per QP, paced so that the
        transition comes in the middle of the workload; tiny slots (see peer_mr_bytes)."""
        per = self.qps // self.qp_workers
        return WorkloadSpec(ops=(Op.SEND, Op.WRITE), sizes=(64,), count=4 * per,
                            rate_per_s=float(max(50, per)), queue_depth=2, qps=per,
                            write_slots=8).validate()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchSpec:
        """The spec `to_json` wrote (the CLI hands it to the guest so)."""
        return cls(**{**d, "sizes": tuple(d["sizes"]), "sections": tuple(d["sections"])})

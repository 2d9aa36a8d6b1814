"""The workload: operations, the workload spec and the application requests it makes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from harness.core.bounds import MAX_RATE_PER_S, check_number
from harness.core.errors import ProtocolError, SettingError


class Op(StrEnum):
    SEND = "SEND"  # SEND_WITH_IMM, imm = seq: the peer checks header, checksum, pattern
    WRITE = "WRITE"  # RDMA_WRITE_WITH_IMM into the peer's slot for seq: checked the same way
    READ = "READ"  # RDMA_READ of what the peer filled: checked here
    FETCH_ADD = "FETCH_ADD"  # +1 on the peer's counter: the final count is checked


PEER_VISIBLE = frozenset({Op.SEND, Op.WRITE})


class Arrivals(StrEnum):
    """How the application hands requests to the client.

    OPEN: request i arrives at go + i / rate whatever the device is doing (rate 0: all at
    go); a request that arrives while the client cannot post waits in its queue, or is
    refused, as the policy decides. CLOSED: the application hands the next request over
    only when the client can take it (within the queue depth, paced by the rate): the
    queue is kept full and nothing arrives while the client holds back."""

    OPEN = "open"
    CLOSED = "closed"


class WorkloadEnd(StrEnum):
    """When the application stops handing requests over.

    COUNT: after `count` requests, however long they take (the transition may come after
    the last one: then it missed the workload, and the row says so). RESUMED: requests
    keep coming (at the rate, open or closed loop) until the controller stops them, which
    it does once the transition has ended and `settle_ms` more have passed: the workload
    spans the transition by construction, whatever the machine's speed; `count` is only a
    cap (a workload that reaches it before the stop "ran dry", and the row says so)."""

    COUNT = "count"
    RESUMED = "resumed"


@dataclass(frozen=True)
class WorkloadSpec:
    ops: tuple[Op, ...] = (Op.SEND, Op.WRITE, Op.READ, Op.FETCH_ADD)
    sizes: tuple[int, ...] = (64, 4096)
    count: int = 120
    rate_per_s: float = 0.0  # 0: as fast as the queue depth allows
    queue_depth: int = 8
    qps: int = 1
    completion: str = "events"  # "events" (completion channel + select) or "poll"
    # the RC QPs' retry_cnt. On rxe 7 means retry forever (rxe_comp.c never decrements
    # it), so a client with 7 never learns that its peer is gone; 0-6 end in RETRY_EXC_ERR
    retry_cnt: int = 7
    write_slots: int = 64  # WRITE_WITH_IMM targets in the peer's area (slot seq % write_slots)
    # 1: every WR signaled. k > 1 (one QP, no rate): every k-th WR, and the one that fills
    # the window or empties the queue, is signaled, as perftest's CQ moderation; the WRs
    # before a completion completed before it (RC completes a QP's WRs in order), so each
    # request still gets its own outcome, with the completion's time (an upper bound)
    signal_every: int = 1
    arrivals: Arrivals = Arrivals.CLOSED
    end: WorkloadEnd = WorkloadEnd.COUNT
    # RESUMED: how long requests keep arriving after the transition's last step (the
    # device back and the clients told): the part of the workload that shows recovery
    settle_ms: int = 1000

    def arrival_offset_ns(self, i: int) -> int:
        """When request i arrives after go (OPEN)."""
        return int(i * 1e9 / self.rate_per_s) if self.rate_per_s else 0

    def arrived_by(self, since_go_ns: int) -> int:
        """How many requests have arrived `since_go_ns` after go (OPEN): request i is there
        once arrival_offset_ns(i) <= since_go_ns."""
        if since_go_ns < 0:
            return 0
        if not self.rate_per_s:
            return self.count
        n = int(since_go_ns * self.rate_per_s / 1e9) + 1
        while n > 0 and self.arrival_offset_ns(n - 1) > since_go_ns:  # float rounding
            n -= 1
        while n < self.count and self.arrival_offset_ns(n) <= since_go_ns:
            n += 1
        return min(n, self.count)

    @property
    def slot_size(self) -> int:
        """Bytes of one buffer slot, here and at the peer (send, receive, WRITE target,
        READ source): the largest message, rounded up to 64 (a cache line)."""
        return max(64, -(-max(self.sizes) // 64) * 64)

    def local_mr_bytes(self) -> int:
        """One QP's MR here: a slot per outstanding request and one for the goodbye."""
        return (self.queue_depth + 1) * self.slot_size

    def peer_mr_bytes(self) -> int:
        """One QP's MR at the peer agent: 2 x queue_depth receive slots, then the RDMA area
        (write_slots WRITE targets, the READ source slot, the atomic counter)."""
        return (2 * self.queue_depth + self.write_slots + 1) * self.slot_size + 64

    def validate(self) -> WorkloadSpec:
        if self.count < 1 or self.queue_depth < 1 or self.qps < 1:
            raise SettingError(f"count {self.count}, queue depth {self.queue_depth} and qps "
                               f"{self.qps} must all be >= 1", "give positive numbers")
        if self.count > MAX_COUNT:
            raise SettingError(f"count {self.count} is over MAX_COUNT={MAX_COUNT} requests "
                               "per client and round",
                               f"run at most {MAX_COUNT} requests per client, or more rounds")
        if not self.ops or any(s < 1 or s > MAX_MESSAGE for s in self.sizes) or not self.sizes:
            raise SettingError(f"sizes {self.sizes} must be 1..{MAX_MESSAGE} bytes and ops "
                               "non-empty", "pick message sizes that fit a slot")
        if self.completion not in ("events", "poll"):
            raise SettingError(f"completion {self.completion!r}", "use events or poll")
        check_number("--rate", self.rate_per_s, 0, MAX_RATE_PER_S,
                     "requests per second (0: unlimited)", "MAX_RATE_PER_S")
        if not 0 <= self.retry_cnt <= 7:
            raise SettingError(f"retry_cnt {self.retry_cnt} is outside 0..7",
                               "give the 3-bit RC retry count")
        if self.write_slots < 1:
            raise SettingError(f"write_slots {self.write_slots} must be >= 1",
                               "give the peer at least one WRITE target slot")
        if not 1 <= self.signal_every <= self.queue_depth:
            raise SettingError(f"signal_every {self.signal_every} must be 1..queue depth "
                               f"{self.queue_depth}", "signal at least once per window")
        if not isinstance(self.arrivals, Arrivals):
            raise SettingError(f"arrivals {self.arrivals!r}", "use open or closed")
        if not isinstance(self.end, WorkloadEnd):
            raise SettingError(f"workload end {self.end!r}", "use count or resumed")
        check_number("--settle-ms", self.settle_ms, 0, MAX_SETTLE_MS, "ms", "MAX_SETTLE_MS")
        if self.end is WorkloadEnd.RESUMED and self.arrivals is Arrivals.OPEN \
                and not self.rate_per_s:
            raise SettingError("open-loop arrivals at rate 0 all arrive at once: a workload "
                               "that ends when resumed needs a rate",
                               "give --rate (requests per second), or --end count")
        if self.signal_every > 1 and (self.qps != 1 or self.rate_per_s):
            raise SettingError(f"signal_every {self.signal_every} needs one QP and no rate "
                               f"limit (qps {self.qps}, rate {self.rate_per_s})",
                               "use signal_every 1 for paced or multi-QP workloads")
        mr = self.qps * (self.local_mr_bytes() + self.peer_mr_bytes())
        if mr > MAX_CLIENT_MR_BYTES:
            raise SettingError(
                f"this workload registers {mr >> 20} MiB of memory ({self.qps} QPs x "
                f"(({self.queue_depth} + 1) + (2 x {self.queue_depth} + {self.write_slots} + "
                f"1)) slots of {self.slot_size} bytes, here and at the peer agent), over "
                f"MAX_CLIENT_MR_BYTES={MAX_CLIENT_MR_BYTES >> 20} MiB",
                "use fewer QPs, a smaller queue depth, fewer write_slots or smaller sizes")
        return self

    def requests(self) -> list[AppRequest]:
        """Deterministic: op, size and QP cycle through their lists."""
        out = []
        for i in range(self.count):
            op = self.ops[i % len(self.ops)]
            size = 8 if op is Op.FETCH_ADD else self.sizes[(i // len(self.ops)) % len(self.sizes)]
            out.append(AppRequest(i, op, size, i % self.qps))
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ops": [o.value for o in self.ops], "sizes": list(self.sizes),
                "arrivals": self.arrivals.value, "end": self.end.value}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorkloadSpec:
        """Build from a message's `spec` object, checking every field's type (a
        ProtocolError names the field), then validate() (a SettingError names the value)."""
        def field_(name: str, ok: Callable[[Any], bool], what: str) -> Any:
            val = d.get(name) if isinstance(d, dict) else None
            if not ok(val):
                raise ProtocolError(f"workload spec field {name!r} is {str(val)[:60]!r}, "
                                    f"not {what}", f"send {name!r} as {what}")
            return val

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        ops = field_("ops", lambda v: isinstance(v, list) and all(o in Op.__members__.values()
                                                                  for o in v),
                     f"a list of {', '.join(o.value for o in Op)}")
        sizes = field_("sizes", lambda v: isinstance(v, list) and all(is_int(x) for x in v),
                       "a list of integers")
        return cls(tuple(Op(o) for o in ops), tuple(sizes),
                   field_("count", is_int, "an integer"),
                   field_("rate_per_s", lambda v: is_int(v) or (isinstance(v, float)
                                                               and math.isfinite(v)),
                          "a finite number"),
                   field_("queue_depth", is_int, "an integer"),
                   field_("qps", is_int, "an integer"),
                   field_("completion", lambda v: isinstance(v, str), "a string"),
                   field_("retry_cnt", is_int, "an integer") if "retry_cnt" in d
                   else cls.retry_cnt,
                   field_("write_slots", is_int, "an integer") if "write_slots" in d
                   else cls.write_slots,
                   field_("signal_every", is_int, "an integer") if "signal_every" in d
                   else cls.signal_every,
                   Arrivals(field_("arrivals", lambda v: v in Arrivals.__members__.values(),
                                   "open or closed")) if "arrivals" in d
                   else cls.arrivals,
                   WorkloadEnd(field_("end", lambda v: v in WorkloadEnd.__members__.values(),
                                      "count or resumed")) if "end" in d else cls.end,
                   field_("settle_ms", is_int, "an integer") if "settle_ms" in d
                   else cls.settle_ms).validate()


# The largest message: slots are sized from the workload's largest size (slot_size).
MAX_MESSAGE = 256 * 1024
# Requests per client and round. The worker keeps its ledger in flat arrays (Recorder)
# and hands it back in pages of columns (a few dozen bytes a request), not in one message.
MAX_COUNT = 1_000_000
# A RESUMED workload at a rate is capped at this many seconds of arrivals (far beyond any
# transition and settle the bounds allow): resumed_cap()
RESUMED_CAP_S = 300.0


def resumed_cap(rate_per_s: float, at_least: int) -> int:
    """The request cap of a RESUMED workload at `rate_per_s` (0: flat out, when only the
    caller's `at_least` can bound it), never over MAX_COUNT."""
    if not rate_per_s or not math.isfinite(rate_per_s) or rate_per_s < 0:
        return at_least  # (a rate that is no number is refused by validate())
    return min(MAX_COUNT, max(at_least, math.ceil(rate_per_s * RESUMED_CAP_S)))


# The longest settle a RESUMED workload may ask for (ms)
MAX_SETTLE_MS = 600_000
# Memory one client registers (its QPs' MRs and their peer agent QPs' MRs): the VM
# mode's guest has 2 GiB.
MAX_CLIENT_MR_BYTES = 512 << 20


@dataclass(frozen=True)
class AppRequest:
    req_id: int
    op: Op
    size: int
    qp_index: int

    @property
    def seq(self) -> int:
        """On the wire (imm data and payload header); 0 is never used."""
        return self.req_id + 1

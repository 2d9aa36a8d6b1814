"""Plain data about an RC QP: what the far side needs to reach it, and how it is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class QpInfo:
    """What the other side needs to connect to and address this QP."""

    qpn: int
    psn: int
    gid: str
    rkey: int
    addr: int
    length: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QpInfo:
        return cls(int(d["qpn"]), int(d["psn"]), str(d["gid"]), int(d["rkey"]), int(d["addr"]),
                   int(d["length"]))


@dataclass(frozen=True)
class QpParams:
    """RC QP parameters; timeouts follow the IB encoding (4.096 us * 2^timeout)."""

    max_send_wr: int = 64
    max_recv_wr: int = 64
    mr_size: int = 1 << 16
    timeout: int = 14  # ~67 ms per retry
    retry_cnt: int = 7
    rnr_retry: int = 7  # 7 = retry RNR forever
    min_rnr_timer: int = 12
    max_rd_atomic: int = 16
    use_events: bool = True  # completions by event (default) or busy polling

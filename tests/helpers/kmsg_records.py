"""Kernel-log records and markers for the power/kmsg/ unit tests."""

from __future__ import annotations

from power.kmsg import KmsgRecord, Marker

# raw /dev/kmsg lines as the guest's kernel wrote them
RXE_ACTIVE = (
    b"6,1120,15610919,-;infiniband rxe0: set active\n"
    b" SUBSYSTEM=infiniband\n DEVICE=+infiniband:rxe0\n"
)
RXE_ERR = b"3,1201,26875751,-;rdma_rxe: already configured on rxpw0\n"
RXE_WARN = (
    b"4,1300,30000000,-;WARNING: CPU: 1 PID: 55 at drivers/infiniband/sw/rxe/rxe_comp.c:600 "
    b"rxe_completer+0x1\n"
)
USER_WARN = b"13,1400,31000000,-;rxe-power-test: WARNING: fake warning\n"


def rec(seq: int, message: str, level: int = 6, facility: int = 0) -> KmsgRecord:
    return KmsgRecord(seq=seq, ts_us=seq * 1000, level=level, facility=facility, message=message)


def marker(after_seq: int, written: bool = True) -> Marker:
    return Marker(
        token="abc123def456",
        text="rxe-power: marker abc123def456 suspend",
        after_seq=after_seq,
        written=written,
    )


def marker_rec(seq: int) -> KmsgRecord:
    return rec(seq, "rxe-power: marker abc123def456 suspend", level=5, facility=1)

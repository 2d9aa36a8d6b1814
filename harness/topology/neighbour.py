"""The neighbour (ARP) entry for the far address: resolved before the first RC connect so
that the kernel's address resolver does not wait out its timeout.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from harness.core.errors import BoundExceeded
from harness.topology.config import TopologyConfig

NEIGH_TIMEOUT_S = 3.0  # ARP for the far address on our wire (measured 7-46 ms under TCG)
NEIGH_POLL_S = 0.002
ATF_COM = 0x2  # a complete ARP entry


def neighbour_resolved(addr: str, netdev: str, arp: Path = Path("/proc/net/arp")) -> bool:
    """Whether `netdev` has a complete ARP entry for `addr` (flags ATF_COM)."""
    try:
        rows = arp.read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        f = row.split()
        if len(f) >= 6 and f[0] == addr and f[5] == netdev and int(f[2], 16) & 0x2:
            return True
    return False


def resolve_neighbour(cfg: TopologyConfig, which: str,
                      timeout_s: float = NEIGH_TIMEOUT_S) -> float:
    """Make one side's netdev know the far address's MAC (ARP), bounded; the seconds it
    took. A carrier drop flushes the neighbour table, and the first RC connect after
    that (modify QP to RTR) resolves the address in the kernel (ib_core
    rdma_addr_find_l2_eth_by_grh). On this wire the ARP reply is processed before that
    resolver queues its request, so it misses the update and waits out its whole 1000 ms
    timeout: measured 1.00-1.04 s for every connect after a flush, 3-17 ms once the entry
    exists. A datagram from the side's address (to the discard port) resolves it first."""
    side = cfg.side(which)
    t0 = time.monotonic()
    if neighbour_resolved(side.remote_addr, side.netdev):
        return 0.0
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((side.addr, 0))
        s.sendto(b"", (side.remote_addr, 9))
    while not neighbour_resolved(side.remote_addr, side.netdev):
        if time.monotonic() - t0 > timeout_s:
            raise BoundExceeded(f"resolving {side.remote_addr} on {side.netdev} (ARP)",
                                "NEIGH_TIMEOUT_S", timeout_s, "a complete ARP entry")
        time.sleep(NEIGH_POLL_S)
    return time.monotonic() - t0

"""A traced program's requests against its traced peer's receive completions.

Each QP of the sender is paired with the peer QP it was connected to (the dest_qp_num each
side gave ibv_modify_qp); the sender's SENDs and WRITE_WITH_IMMs (in post order) are lined
up with the receiver's successful receive completions on that QP (RC delivers in order):
delivered once, missing, and by count duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.workload.ledger import Outcome, PeerView
from harness.workload.traced_types import ProcessLedger, QpTrack
from harness.workload.tracelog import PEER_VISIBLE_OPS, WrOpcode


@dataclass
class PeerMatch:
    """One connected QP pair: the sender's peer-visible requests against the receiver's
    receive completions, in order."""
    sender_pid: int
    sender_qp: int
    receiver_pid: int
    receiver_qp: int
    sent: int  # peer-visible requests that reached the send queue (not rejected at post)
    received: int  # the receiver's successful receive completions on the paired QP
    delivered_once: int
    missing: int
    duplicated: int  # receive completions beyond the requests sent
    delivered_despite_error: int  # delivered, but the sender's request did not end ok
    length_mismatches: int  # SEND length != the receive completion's byte_len


def _pairs(a: ProcessLedger, b: ProcessLedger) -> list[tuple[QpTrack, QpTrack]]:
    out = []
    used: set[int] = set()
    for qa in a.qps:
        for j, qb in enumerate(b.qps):
            if j not in used and qb is not qa and qa.dest_qp_num == qb.qp_num \
                    and qb.dest_qp_num == qa.qp_num:
                out.append((qa, qb))
                used.add(j)
                break
    return out


def match_peer(sender: ProcessLedger, receiver: ProcessLedger) -> list[PeerMatch]:
    """Line up SENDER's peer-visible requests with RECEIVER's receive completions, for
    every QP of SENDER connected to a QP of RECEIVER; sets each request's `peer` view
    (requests that the peer cannot see get NOT_VISIBLE)."""
    matches = []
    for qs, qr in _pairs(sender, receiver):
        reqs = qs.sends
        for r in reqs:
            if r.opcode not in PEER_VISIBLE_OPS:
                r.peer = PeerView.NOT_VISIBLE
        visible = [r for r in reqs if r.opcode in PEER_VISIBLE_OPS
                   and r.outcome is not Outcome.REJECTED_AT_POST]
        got = [c for c in qr.receives_done if c.outcome is Outcome.COMPLETED_OK]
        despite = mismatch = 0
        for k, req in enumerate(visible):
            if k < len(got):
                req.peer = PeerView.DELIVERED_ONCE
                despite += req.outcome is not Outcome.COMPLETED_OK
                if req.opcode is not WrOpcode.RDMA_WRITE_WITH_IMM and \
                        got[k].byte_len is not None and got[k].byte_len != req.length:
                    mismatch += 1
            else:
                req.peer = PeerView.MISSING
        n = min(len(visible), len(got))
        matches.append(PeerMatch(sender.pid, qs.qp_num, receiver.pid, qr.qp_num, len(visible),
                                 len(got), n, len(visible) - n, max(0, len(got) - len(visible)),
                                 despite, mismatch))
    return matches

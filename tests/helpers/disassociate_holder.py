"""A process that holds the local HCA with RDMA WRITEs in flight while it is deleted.

    python tests/helpers/disassociate_holder.py [--qps N]

It opens the local HCA of the topology (RXE_POWER_* settings), connects N RC QPs to a
peer agent of its own on the peer HCA, keeps each send queue full of 64 KiB RDMA
WRITEs (the rings rxe maps into this process are in use throughout) and prints one
JSON line per step:

    {"event": "ready", ...}            every QP completed a window of WRITEs
    {"event": "async", "name": ...}    each async event (read from a non-blocking fd:
                                       pyverbs' get_async_event holds the GIL)
    {"event": "after_fatal", ...}      after IBV_EVENT_DEVICE_FATAL: what each verbs call
                                       does now (ok, or its errno), what poll_cq returns
    {"event": "closed", "errors": []}  after stdin closed: everything closed

Exit 0 when it closed everything without an error, 3 when a close failed, 4 when no
DEVICE_FATAL came within FATAL_TIMEOUT_S.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import sys
import time
from collections.abc import Callable

from harness.core.errors import RxePowerError, oserror_to
from harness.peer.controller import PeerAgent
from harness.peer.traffic import connected_pair
from harness.rdma.names import async_event_name, wc_status_name
from harness.rdma.verbs import ACCESS_ALL, Device, opcode
from harness.topology import devices
from harness.topology.config import TopologyConfig

FATAL_TIMEOUT_S = 60.0  # from ready to DEVICE_FATAL (the test deletes the device)
READY_TIMEOUT_S = 30.0  # for the first window of WRITEs on every QP
STDIN_TIMEOUT_S = 60.0  # after the report, until the test says "close"
WRITE_SIZE = 1 << 16
DEPTH = 16


def say(event: str, **detail: object) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), "t": time.monotonic(), **detail}),
          flush=True)


def probe(fn: Callable[[], object]) -> dict:
    """One verbs call after the removal: its result, or its errno (by number and name)."""
    try:
        return {"ok": True, "result": fn()}
    except RxePowerError as exc:
        err = getattr(exc, "errno", 0)
    except Exception as exc:  # a PyverbsError subclass: pyverbs' own type
        err = oserror_to("probe", exc).errno
    return {"ok": False, "errno": err, "name": errno.errorcode.get(err, str(err))}


class Writer:
    """Keeps one QP's send queue full of RDMA WRITEs into the peer's area."""

    def __init__(self, pair: object) -> None:
        self.pair = pair
        self.next_id = 1
        self.outstanding = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.post_error: str | None = None
        self.channel_error: str | None = None  # reading the completion channel failed

    def fill(self) -> None:
        qp, remote = self.pair.qp, self.pair.remote
        while self.outstanding < DEPTH and self.post_error is None:
            slot = self.next_id % DEPTH
            try:
                qp.post_send(self.next_id, opcode("RDMA_WRITE"), slot * WRITE_SIZE, WRITE_SIZE,
                             remote_addr=remote.addr + slot * WRITE_SIZE, rkey=remote.rkey)
            except RxePowerError as exc:
                self.post_error = str(exc)
                return
            self.next_id += 1
            self.outstanding += 1

    def reap(self, ready: bool) -> None:
        try:
            wcs = self.pair.qp.poll(DEPTH, ready=ready and self.channel_error is None)
        except RxePowerError as exc:  # disassociated: the channel reads EIO
            err = getattr(exc, "errno", 0)
            self.channel_error = errno.errorcode.get(err, str(err))
            return
        for wc in wcs:
            self.outstanding -= 1
            status = wc_status_name(int(wc.status))
            if status == "SUCCESS":
                self.ok += 1
            else:
                self.errors[status] = self.errors.get(status, 0) + 1


def after_fatal(dev: Device, writers: list[Writer]) -> dict:
    """Each verbs call once, after the removal: ok (with its result) or its errno."""
    from pyverbs.cq import CQ
    from pyverbs.mr import MR
    from pyverbs.pd import PD

    qp, remote = writers[0].pair.qp, writers[0].pair.remote
    return {
        "poll_cq": probe(lambda: _poll(qp)),
        "post_send": probe(lambda: qp.post_send(999_999, opcode("RDMA_WRITE"), 0, 64,
                                                remote_addr=remote.addr, rkey=remote.rkey)),
        "post_recv": probe(lambda: qp.post_recv(999_998, 0, 64)),
        "req_notify_cq": probe(lambda: qp.cq.req_notify()),
        "query_qp": probe(lambda: str(qp.state())),
        "query_port": probe(lambda: dev.query_port().state),
        "query_device": probe(lambda: str(dev.ctx.query_device().fw_version)),
        "alloc_pd": probe(lambda: PD(dev.ctx).close()),
        "reg_mr": probe(lambda: MR(dev.pd, 4096, ACCESS_ALL).close()),
        "create_cq": probe(lambda: CQ(dev.ctx, 8, None, None, 0).close()),
        "poll_cq_again": probe(lambda: _poll(qp)),
    }


def _poll(qp: object) -> dict:
    n, wcs = qp.cq.poll(DEPTH)
    return {"n": n, "statuses": [wc_status_name(int(w.status)) for w in wcs[:n]]}


def drain_async(dev: Device) -> list[str]:
    names = []
    while True:
        try:
            ev = dev.ctx.get_async_event()
        except Exception as exc:  # EAGAIN: drained (the fd is non-blocking)
            if oserror_to("get async event", exc).errno not in (errno.EAGAIN, 0):
                names.append(f"error: {exc}")
            return names
        names.append(async_event_name(int(ev.event_type)))
        ev.ack()


def run(qps: int) -> int:
    cfg = TopologyConfig.from_settings()
    topo = devices.discover(cfg)
    dev = Device(topo.local.dev, topo.local.port, topo.local.gid_index)
    errors: list[str] = []
    agent = None
    pairs: list[contextlib.AbstractContextManager] = []
    try:
        agent = PeerAgent(topo.peer)
        writers = []
        for _ in range(qps):
            cm = connected_pair(dev, agent, local_mr=DEPTH * WRITE_SIZE,
                                peer_mr=2 * DEPTH * WRITE_SIZE, recv_slots=DEPTH)
            writers.append(Writer(cm.__enter__()))
            pairs.append(cm)
        code = hold(dev, writers)
        if code == 0:
            readable, _, _ = select.select([sys.stdin], [], [], STDIN_TIMEOUT_S)
            if not readable:
                say("error", what=f"stdin not closed within STDIN_TIMEOUT_S={STDIN_TIMEOUT_S:g}s")
    finally:
        for cm in reversed(pairs):
            _close(lambda cm=cm: cm.__exit__(None, None, None), "QP, CQ, MR, channel", errors)
        if agent is not None:
            _close(agent.close, "peer agent", errors)
        _close(dev.close, "Context+PD", errors)
    say("closed", errors=errors)
    return code if code else (3 if errors else 0)


def hold(dev: Device, writers: list[Writer]) -> int:
    """WRITEs in flight until DEVICE_FATAL; then the after_fatal report. 0 or 4."""
    for w in writers:
        w.fill()
    events: list[str] = []
    ready_deadline = time.monotonic() + READY_TIMEOUT_S
    fatal_deadline = None
    while True:
        fds = [dev.async_fd,
               *(w.pair.qp.channel_fd for w in writers if w.channel_error is None)]
        readable, _, _ = select.select(fds, [], [], 0.5)
        if dev.async_fd in readable:
            new = drain_async(dev)
            for name in new:
                say("async", name=name)
            events += new
            if "DEVICE_FATAL" in new:
                break
        for w in writers:
            w.reap(w.pair.qp.channel_fd in readable)
            w.fill()
        now = time.monotonic()
        if fatal_deadline is None and all(w.ok >= DEPTH for w in writers):
            fatal_deadline = now + FATAL_TIMEOUT_S
            say("ready", qps=len(writers), completed=sum(w.ok for w in writers))
        if fatal_deadline is None and now > ready_deadline:
            say("error", what=f"not ready within READY_TIMEOUT_S={READY_TIMEOUT_S:g}s",
                completed=[w.ok for w in writers])
            return 4
        if fatal_deadline is not None and now > fatal_deadline:
            say("error", what=f"no DEVICE_FATAL within FATAL_TIMEOUT_S={FATAL_TIMEOUT_S:g}s",
                events=events)
            return 4
    wc_errors: dict[str, int] = {}
    for w in writers:
        for k, v in w.errors.items():
            wc_errors[k] = wc_errors.get(k, 0) + v
    say("after_fatal", events=events, in_flight=sum(w.outstanding for w in writers),
        completed_ok=sum(w.ok for w in writers), wc_errors=wc_errors,
        post_errors=[w.post_error for w in writers if w.post_error],
        channel_errors=[w.channel_error for w in writers if w.channel_error],
        calls=after_fatal(dev, writers))
    return 0


def _close(fn: Callable[[], None], what: str, errors: list[str]) -> None:
    try:
        fn()
    except Exception as exc:
        errors.append(f"{what}: {exc}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qps", type=int, default=1)
    args = ap.parse_args()
    return run(args.qps)


if __name__ == "__main__":
    raise SystemExit(main())

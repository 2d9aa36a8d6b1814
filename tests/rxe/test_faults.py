"""Faults on the wire and a peer that dies, under client traffic, against real rxe.

The wire faults are netem qdiscs on the switch's two ports (rxpw0s, towards rxe0;
rxpw1s, towards rxe1), so both directions suffer and both HCAs' own netdevs, and
with them their ports, stay untouched and ACTIVE. Each qdisc is added with our own
handle and removed afterwards by that handle (the kernel refuses to delete a root
qdisc whose handle differs), only where it is still ours. rxe's retransmissions are
read from its hardware counters (`rdma -j statistic show link DEV/1`, JSON).

"The peer dies" is a peer agent of the test's own (not the session's) killed with
SIGKILL: the kernel destroys its QPs and PD as the process exits, so the local QPs'
packets reach a QPN that no longer exists and rxe1 drops them without a NAK.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.peer.controller import PeerAgent
from harness.rdma.names import wc_status_name
from harness.rdma.payload import encode
from harness.rdma.verbs import Device, QpParams, RcQp, opcode, wait_readable
from harness.run.client_worker import ClientWorker
from harness.run.scenario import (
    ClientResult,
    account,
    finish,
    spawn_workers,
    wait_progress,
)
from harness.system import command
from harness.system.holders import find_holders
from harness.topology.config import TopologyConfig
from harness.workload.ledger import Ledger, Op, WorkloadSpec
from power.plan import OnVeto, Ordering
from power.result import Verdict

TC_TIMEOUT_S = 10.0  # one tc call
QDISC_HANDLE = "7e57:"  # ours: the only root qdisc these tests ever delete
GO_TIMEOUT_S = 30.0
AGENT_EXIT_TIMEOUT_S = 10.0  # SIGKILL -> the agent reaped (its QPs gone with it)
# A finite retry count on a dead peer must end in RETRY_EXC_ERR within this (measured
# ~0.5 s for retry_cnt 6 and timeout 14: (6 + 1) x 67 ms).
RETRY_EXC_BOUND_S = 10.0
FOREVER_WATCH_S = 2.0  # how long a retry_cnt 7 QP is watched for a completion that never comes
# finish deadlines once the peer is dead: naive must have everything back by itself well
# within its bound (measured 1-5 s under load for its ~250 flushed posts); fail-fast
# waits for a resume that never comes, so its deadline is simply when the test stops it
NAIVE_FINISH_S = 20.0
FAIL_FAST_FINISH_S = 3.0
FINISH_PROMPT_S = 5.0  # a client that cannot reconnect must report within this, not hang
DRAIN_S = 5.0

LOSS_PCT = 10
DELAY_MS = 20
DUPLICATE_PCT = 5
WIRE_SPEC = WorkloadSpec(count=80, queue_depth=4)  # as fast as the queue depth allows
PEER_VISIBLE = sum(1 for r in WIRE_SPEC.requests() if r.op in (Op.SEND, Op.WRITE))
FINITE_RETRY = 6  # the largest retry_cnt rxe counts down (7 is "forever" on rxe)
# as fast as the queue depth allows: a rate makes the workers pace by their 50 ms loop tick
# under TCG, which leaves naive posting its flushed remainder for seconds
KILL_SPEC = WorkloadSpec(count=200, queue_depth=4, retry_cnt=FINITE_RETRY)
KILL_AT = 0.2  # of the first client's requests
DOWN_SPEC = WorkloadSpec(count=120, rate_per_s=100.0, queue_depth=4)  # retry_cnt 7
DOWN_POLICIES = ["queue-replay", "graceful"]  # fail-fast's give-up path is queue-replay's


# --- helpers --------------------------------------------------------------------------------


def counters(dev: str, port: int = 1) -> dict[str, int]:
    """rxe's port counters (sent_pkts, completer_retry_err, duplicate_request, ...)."""
    rows = command.run_json(["rdma", "-j", "statistic", "show", "link", f"{dev}/{port}"])
    return {k: v for k, v in rows[0].items() if isinstance(v, int) and k != "port"}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def root_qdisc(dev: str) -> dict:
    rows = command.run_json(["tc", "-s", "-j", "qdisc", "show", "dev", dev, "root"],
                            TC_TIMEOUT_S)
    return next((q for q in rows if q.get("root")), {})


@contextlib.contextmanager
def netem(devs: list[str], *args: str) -> Iterator[dict[str, dict]]:
    """netem ARGS as the root qdisc of each of `devs`, under our handle; yields
    {dev: its qdisc with statistics}, filled in when the block ends. Refuses a port whose
    root qdisc is not the veth default (not ours to replace); removes only our qdisc."""
    added: list[str] = []
    stats: dict[str, dict] = {}
    try:
        for dev in devs:
            have = root_qdisc(dev)
            assert have.get("kind") == "noqueue", f"{dev} has a root qdisc not ours: {have}"
            res = command.run(["tc", "qdisc", "add", "dev", dev, "root", "handle", QDISC_HANDLE,
                               "netem", *args], TC_TIMEOUT_S, check=False)
            if res.returncode != 0 and "unknown" in res.stderr.lower():
                pytest.skip(f"this kernel has no netem qdisc: {res.stderr.strip()}")
            assert res.returncode == 0, res.stderr
            added.append(dev)
            q = root_qdisc(dev)
            assert q.get("kind") == "netem" and q.get("handle") == QDISC_HANDLE, q
        yield stats
    finally:
        for dev in reversed(added):
            q = root_qdisc(dev)
            stats[dev] = q
            if q.get("kind") == "netem" and q.get("handle") == QDISC_HANDLE:
                command.run(["tc", "qdisc", "del", "dev", dev, "root", "handle", QDISC_HANDLE],
                            TC_TIMEOUT_S)
        for dev in added:
            assert root_qdisc(dev).get("kind") == "noqueue", f"{dev}: our qdisc is still there"


def switch_ports(rxe_config: TopologyConfig) -> list[str]:
    """The switch's port towards rxe0 (carries what rxe1 sends) and towards rxe1."""
    return [rxe_config.switch_port(rxe_config.local_netdev),
            rxe_config.switch_port(rxe_config.peer_netdev)]


@pytest.fixture(scope="class")
def wire_client(rxe_topology, peer_agent, results_dir, tmp_path_factory) -> Iterator[ClientWorker]:
    """One fail-fast worker on the session's peer agent for the wire tests (a process
    start under TCG costs seconds); each test runs its own rounds on fresh QPs. It holds
    rxe0 only while the class runs (no transition happens then)."""
    t0 = time.monotonic()
    [w] = spawn_workers(["fail-fast"], WIRE_SPEC, rxe_topology.local, peer_agent,
                        tmp_path_factory.mktemp("clients"), results_dir / "clients")
    print(f"\nwire client started in {time.monotonic() - t0:.1f} s")
    try:
        yield w
    finally:
        w.close()


def wire_round(w: ClientWorker, agent: PeerAgent) -> ClientResult:
    """One workload round with no transition (fresh QPs after the first), accounted with
    the peer's view."""
    t0 = time.monotonic()
    if w.rounds_done:
        w.new_round(WIRE_SPEC)
    w.request("go", GO_TIMEOUT_S)
    res, rep = finish(w, "no transition")
    out = account(res, rep, agent) if rep else res
    print(f"round of {WIRE_SPEC.count} requests took {time.monotonic() - t0:.1f} s")
    return out


def latencies_ms(ledger: list[dict]) -> list[float]:
    return [(a["completed_ns"] - a["posted_ns"]) / 1e6 for e in ledger for a in e["attempts"]
            if a["status"] == "SUCCESS"]


def round_under_netem(cfg, topo, w: ClientWorker, agent: PeerAgent, kind: str,
                      value: str) -> tuple[ClientResult, dict[str, dict], dict[str, dict]]:
    """One workload round with netem `kind value` on both switch ports: the result, how
    each HCA's counters moved during it, and the qdiscs' own statistics."""
    devs = (topo.local.dev, topo.peer.dev)
    before = {d: counters(d) for d in devs}
    with netem(switch_ports(cfg), kind, value) as qdiscs:
        c = wire_round(w, agent)
    return c, {d: delta(before[d], counters(d)) for d in devs}, qdiscs


def wire_healthy(c) -> None:
    """Every request completed once, the peer saw each SEND/WRITE exactly once and intact,
    and its atomic counter matches the FETCH_ADDs that completed here."""
    assert c.invariant_ok, (c.crash, c.unaccounted)
    assert c.counts == {"completed-ok": WIRE_SPEC.count}, c.counts
    assert c.peer_counts == {"delivered-once": PEER_VISIBLE,
                             "not-visible": WIRE_SPEC.count - PEER_VISIBLE}, c.peer_counts
    assert c.atomics["match"], c.atomics


def wait_first_progress(workers: list[ClientWorker], fraction: float) -> None:
    """Until one worker has an outcome for `fraction` of its requests (bounded): the
    others, at about the same pace, are then mid-workload too."""
    deadline = time.monotonic() + GO_TIMEOUT_S
    while True:
        for w in workers:
            rep = w.request("progress", GO_TIMEOUT_S)
            if sum(n for k, n in rep["counts"].items() if k != "unaccounted") \
                    >= fraction * w.spec.count:
                return
        assert time.monotonic() < deadline, "no client made progress within GO_TIMEOUT_S"
        time.sleep(0.02)  # polling interval of a bounded wait


def kill_agent(agent: PeerAgent) -> int:
    """SIGKILL the agent and reap it; returns CLOCK_MONOTONIC ns once it is gone."""
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait(AGENT_EXIT_TIMEOUT_S)
    return time.monotonic_ns()


def finish_bounded(w: ClientWorker, timeout_s: float) -> tuple[Ledger, dict, float]:
    """finish with our own deadline; the ledger alone (the peer is dead: no peer view)."""
    t0 = time.monotonic()
    rep = w.request("finish", timeout_s + 10, timeout_s=timeout_s)
    return w.fetch_ledger(int(rep["requests"])), rep, time.monotonic() - t0


# --- faults on the wire ---------------------------------------------------------------------


class TestWire:
    """netem on both switch ports under one fail-fast client (no transition)."""

    def test_loss_is_retransmitted(self, rxe_config, rxe_topology, peer_agent,
                                   wire_client) -> None:
        """10% loss each way: rxe recovers every loss by itself (a NAK-sequence from the
        responder when a later packet shows the gap, else its retransmit timer, 67 ms at
        timeout 14); no request fails, the peer gets every SEND/WRITE exactly once and
        intact, the atomics match. Measured over 80 requests (5 runs): 11-38 packets
        dropped per direction; rxe0 completer_retry_err 16-35 and rcvd_seq_err 3-7, rxe1
        out_of_seq_request 10-18 and duplicate_request 16-62; no retry_exceeded_err."""
        loc, peer = rxe_topology.local.dev, rxe_topology.peer.dev
        c, moved, qdiscs = round_under_netem(rxe_config, rxe_topology, wire_client, peer_agent,
                                             "loss", f"{LOSS_PCT}%")
        drops = {d: q.get("drops", 0) for d, q in qdiscs.items()}
        print(f"loss {LOSS_PCT}%: drops {drops}; counters {moved}; {c.counts}")
        assert all(n > 0 for n in drops.values()), drops
        wire_healthy(c)
        # the losses were repaired by retransmission, visible on both HCAs
        assert moved[loc].get("completer_retry_err", 0) + moved[loc].get("rcvd_seq_err", 0) > 0
        assert moved[peer].get("duplicate_request", 0) \
            + moved[peer].get("out_of_seq_request", 0) > 0
        assert moved[loc].get("retry_exceeded_err", 0) == 0

    def test_delay_raises_latency(self, rxe_config, rxe_topology, peer_agent,
                                  wire_client) -> None:
        """20 ms each way: every request's completion takes at least one round trip
        (40 ms); measured min 43 ms and median 47-65 ms, against min 5-7 ms and median
        8-34 ms (the higher under load) on the clean wire just before (same worker, a first
        round without the delay). 40 ms stays below the 67 ms retransmit timer, so nothing
        needs a retry."""
        clean = wire_round(wire_client, peer_agent)
        with netem(switch_ports(rxe_config), "delay", f"{DELAY_MS}ms"):
            delayed = wire_round(wire_client, peer_agent)
        base, slow = latencies_ms(clean.ledger), latencies_ms(delayed.ledger)
        print(f"delay {DELAY_MS} ms: latency median {statistics.median(base):.1f} -> "
              f"{statistics.median(slow):.1f} ms, min {min(base):.1f} -> {min(slow):.1f} ms")
        wire_healthy(clean)
        wire_healthy(delayed)
        assert min(slow) >= 2 * DELAY_MS
        assert min(base) < 2 * DELAY_MS  # the clean wire was faster than one delayed RTT
        assert statistics.median(slow) > statistics.median(base)

    def test_duplicates_are_dropped_by_psn(self, rxe_config, rxe_topology, peer_agent,
                                           wire_client) -> None:
        """5% of packets duplicated each way: rxe1's responder recognises a repeated PSN
        (duplicate_request rises, 3-10 over 80 requests), re-acknowledges it and does not
        deliver it again; repeated ACKs and READ responses are ignored by rxe0's
        completer. The peer sees every SEND/WRITE exactly once and intact; a duplicated
        FETCH_ADD is answered from rxe's atomic replay, not executed twice: the peer's
        counter equals the local successes."""
        peer = rxe_topology.peer.dev
        c, moved, qdiscs = round_under_netem(rxe_config, rxe_topology, wire_client, peer_agent,
                                             "duplicate", f"{DUPLICATE_PCT}%")
        sent = {d: q.get("packets", 0) for d, q in qdiscs.items()}
        print(f"duplicate {DUPLICATE_PCT}%: qdisc packets {sent}; counters {moved}; "
              f"{c.counts} {c.peer_counts} {c.atomics}")
        wire_healthy(c)
        assert moved[peer].get("duplicate_request", 0) > 0  # rxe1 saw repeated PSNs...
        assert c.peer_counts.get("duplicated", 0) == 0  # ...and delivered none twice


# --- the peer dies ----------------------------------------------------------------------------


def test_dead_peer_retry_cnt_7_retries_forever(rxe_topology, results_dir) -> None:
    """A SEND to a peer whose process died: with retry_cnt 6 it completes RETRY_EXC_ERR
    after (6 + 1) retransmit timeouts (measured 0.48-0.54 s at timeout 14); with retry_cnt 7
    (what ibv_rc_pingpong, perftest and these clients use) it never completes: rxe's
    completer takes 7 to mean "retry forever" (rxe_comp.c does not count it down), unlike
    the IB spec, where only rnr_retry 7 is infinite. A client with 7 on rxe never learns
    that its peer is gone."""
    loc = rxe_topology.local
    with contextlib.ExitStack() as stack:
        agent = stack.enter_context(PeerAgent(rxe_topology.peer,
                                                log_dir=results_dir / "logs" / "faults"))
        dev = stack.enter_context(Device(loc.dev, loc.port, loc.gid_index))
        qps: dict[int, RcQp] = {}
        for rc in (FINITE_RETRY, 7):
            qp = stack.enter_context(RcQp(dev, QpParams(max_send_wr=4, max_recv_wr=1,
                                                         mr_size=4096, retry_cnt=rc)))
            qp_id, remote = agent.create_qp(mr_size=1 << 16, recv_slots=4, slot_size=4096)
            qp.connect(remote)
            agent.connect_qp(qp_id, qp.info())
            qps[rc] = qp
        for rc, qp in qps.items():  # the pair works while the peer lives
            qp.write_local(0, encode(1, 64))
            qp.post_send(1, opcode("SEND_WITH_IMM"), 0, 64, imm=1)
            assert [wc_status_name(int(w.status)) for w in qp.wait(1)] == ["SUCCESS"], rc
        before = counters(loc.dev)
        kill_agent(agent)
        t0 = time.monotonic()
        for qp in qps.values():
            qp.post_send(2, opcode("SEND_WITH_IMM"), 0, 64, imm=2)
        wcs = qps[FINITE_RETRY].wait(1, RETRY_EXC_BOUND_S, "RETRY_EXC_ERR on a dead peer")
        took = time.monotonic() - t0
        assert wc_status_name(int(wcs[0].status)) == "RETRY_EXC_ERR"
        watch_end = time.monotonic() + FOREVER_WATCH_S
        forever: list = []
        while not forever and time.monotonic() < watch_end:
            forever = qps[7].poll(1)
            wait_readable(qps[7].channel_fd, max(0.0, watch_end - time.monotonic()))
        moved = delta(before, counters(loc.dev))
        print(f"dead peer: retry_cnt {FINITE_RETRY} -> RETRY_EXC_ERR after {took:.3f} s; "
              f"retry_cnt 7: {len(forever)} completions in {took + FOREVER_WATCH_S:.1f} s; "
              f"rxe0 counters {moved}")
        assert forever == []  # still retrying: no completion at all
        assert moved.get("retry_exceeded_err") == 1  # only the finite QP gave up
        assert moved.get("completer_retry_err", 0) >= FINITE_RETRY
        qps[7].to_err()  # what a client must do itself to get its WR back
        flushed = qps[7].wait(1, DRAIN_S, "the flush of the forever-retrying SEND")
        assert wc_status_name(int(flushed[0].status)) == "WR_FLUSH_ERR"


def test_peer_killed_during_traffic(rxe_topology, results_dir, tmp_path) -> None:
    """The peer agent SIGKILLed ~20% into the workload of naive and fail-fast (retry_cnt 6):
    the request in flight at rxe0 ends RETRY_EXC_ERR after rxe's retries run out (measured
    0.31-0.49 s after the kill, 0.40-0.53 s after its post: 7 timeouts of 67 ms; rxe0's
    retry_exceeded_err +1 per client); its QP is then in ERR, so naive's later posts are all
    flushed at once; fail-fast quiesces (the rest of its in-flight flushed) and waits for a
    resume that never comes: what it never posted is failed to the application at its
    deadline. Nothing is lost or unaccounted."""
    agent = PeerAgent(rxe_topology.peer, log_dir=results_dir / "logs" / "faults")
    policies = ["naive", "fail-fast"]
    try:
        workers = spawn_workers(policies, KILL_SPEC, rxe_topology.local, agent,
                                tmp_path / "clients", results_dir / "clients")
        try:
            before = counters(rxe_topology.local.dev)
            for w in workers:
                w.request("go", GO_TIMEOUT_S)
            wait_first_progress(workers, KILL_AT)
            killed_ns = kill_agent(agent)
            bound = {"naive": NAIVE_FINISH_S, "fail-fast": FAIL_FAST_FINISH_S}
            with ThreadPoolExecutor(len(workers)) as pool:  # both deadlines run at once
                got = dict(zip(policies, pool.map(
                    lambda w: finish_bounded(w, bound[w.policy]), workers), strict=True))
            moved = delta(before, counters(rxe_topology.local.dev))
        finally:
            for w in workers:
                w.close()
    finally:
        agent.close()
    print(f"rxe0 counters across the run: {moved}")
    assert moved.get("retry_exceeded_err") == len(policies)  # one QP per client gave up
    for policy, (ledger, rep, took) in got.items():
        counts = ledger.counts()
        exc = [a for e in ledger.entries.values() for a in e.attempts
               if a.status == "RETRY_EXC_ERR"]
        when = [(round((a.completed_ns - killed_ns) / 1e9, 3),
                 round((a.completed_ns - a.posted_ns) / 1e9, 3)) for a in exc]
        print(f"{policy}: {counts}; RETRY_EXC_ERR (s after the kill, s after its post): "
              f"{when}; finish took {took:.2f} s; notes {rep['metrics']['notes']}")
        assert ledger.unaccounted() == []
        assert counts.get("lost", 0) == 0
        assert len(exc) == 1 and 0 < exc[0].completed_ns - killed_ns < RETRY_EXC_BOUND_S * 1e9
        assert counts.get("completed-ok", 0) < KILL_SPEC.count - 1  # killed mid-way
        assert set(counts) <= {"completed-ok", "completed-error", "flushed", "failed-to-app"}
    naive = got["naive"][0].counts()
    assert naive.get("failed-to-app", 0) == 0  # it posted everything into the ERR QP
    assert naive["completed-ok"] + 1 + naive["flushed"] == KILL_SPEC.count
    ff_ledger = got["fail-fast"][0]
    assert {e.reason for e in ff_ledger.entries.values()
            if e.outcome and e.outcome.value == "failed-to-app"} <= {
        "never posted: the client had not resumed by the deadline"}


def test_standby_while_the_peer_is_down(power_shim, rxe_topology, results_dir,
                                        tmp_path) -> None:
    """The peer agent killed, then standby (clients-first) under queue-replay and graceful
    (retry_cnt 7: on rxe nothing tells them the peer died). The notice rescues what was in
    flight: queue-replay flushes it at once, graceful cannot drain (no ACK ever comes) and
    flushes at its drain deadline; both requeue it and release, the delete does not block,
    the verdict is completed. After resume no QP can be connected to the dead agent: each
    client says so (reconnect failed, the peer agent is unreachable), releases the device,
    and fails what is left to the application at once, instead of holding the device until
    its finish deadline. Every request is accounted; nothing is lost."""
    agent = PeerAgent(rxe_topology.peer, log_dir=results_dir / "logs" / "faults")
    try:
        workers = spawn_workers(DOWN_POLICIES, DOWN_SPEC, rxe_topology.local, agent,
                                power_shim.clients_dir, results_dir / "clients")
        try:
            for w in workers:
                w.request("go", GO_TIMEOUT_S)
            wait_progress(workers, 0.3)
            kill_agent(agent)
            res = power_shim.run("standby", ordering=Ordering.CLIENTS_FIRST, hold_ms=200,
                                 on_veto=OnVeto.FORCE, quiesce_timeout_s=2.0)
            held = {h.pid for h in find_holders(rxe_topology.local.dev)}
            got = {w.policy: finish_bounded(w, FINISH_PROMPT_S) for w in workers}
            pids = {w.policy: w.pid for w in workers}
        finally:
            for w in workers:
                w.close()
    finally:
        agent.close()
    print(f"standby with the peer down: verdict {res.verdict}; answers "
          f"{[(a['client'], a['kind']) for a in res.answers]}")
    assert res.verdict is Verdict.COMPLETED, res.reasons
    # nobody held rxe0 at the delete (under load a slow delete can pass the shim's 0.5 s
    # veto threshold with no holder found: that is not a hold, and verdict stays completed)
    assert res.veto is not None and res.veto.holders == [] and res.veto.terminated == []
    assert sorted(a["kind"] for a in res.answers) == ["released"] * 2 + ["resumed"] * 2
    assert not held & set(pids.values()), "a client still held rxe0 after giving up"
    for policy, (ledger, rep, took) in got.items():
        counts = ledger.counts()
        failed = {e.reason for e in ledger.entries.values()
                  if e.outcome and e.outcome.value == "failed-to-app"}
        m = rep["metrics"]
        print(f"{policy}: {counts}; finish took {took:.2f} s; quiesce {m['quiesce']!r}; "
              f"notes {m['notes']}")
        assert ledger.unaccounted() == [] and counts.get("lost", 0) == 0
        assert took < FINISH_PROMPT_S  # done at once, not at a deadline
        assert m["reconnects"] == 0
        assert counts.get("failed-to-app", 0) > 0
        assert len(failed) == 1 and next(iter(failed)).startswith(
            "reconnect failed: the peer agent is unreachable"), failed
        assert set(counts) <= {"completed-ok", "flushed", "failed-to-app"}
    assert "flushed" not in got["queue-replay"][0].counts()  # requeued, then refused
    assert got["graceful"][1]["metrics"]["quiesce"].startswith("drain incomplete")

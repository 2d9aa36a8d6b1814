"""Client policies under power transitions against real rxe, with the ledger invariant.

All policies of a scenario run at once, each in its own worker process, requests at
60/s (SEND, WRITE_WITH_IMM, READ, FETCH_ADD; 64 B and 4 KiB) that keep coming until the
transition has ended and a second more (WorkloadEnd.RESUMED: the transition meets the
workload by construction, whatever the machine's speed; every scenario here also checks
that it did, from the ledgers: a `missed` row fails the test). The expected classes below
are what rxe 6.1 does, measured; each test's docstring says why.
"""

from __future__ import annotations

import os
import signal

import pytest

from harness.run.matrix import rows_of
from harness.run.records import ScenarioKey
from harness.run.rows import Row, RowStatus
from harness.run.scenario import render, run_scenario
from harness.run.scenario_result import ClientEnd, ClientResult, ScenarioResult
from harness.workload.spec import Arrivals, WorkloadEnd, WorkloadSpec, resumed_cap
from power.plan import OnVeto, Ordering, StepKind
from power.result import TransitionRequest, Verdict

# closed loop: the next request is handed over when the client can take it
SPEC = WorkloadSpec(count=resumed_cap(60.0, 240), rate_per_s=60.0, queue_depth=4,
                    end=WorkloadEnd.RESUMED)
COOPERATIVE = ["fail-fast", "queue-replay", "graceful"]
# the default matrix's workload: open-loop arrivals at 60/s, depth 4: they keep arriving
# while rxe0 is away, and until a second after the transition
OPEN_SPEC = WorkloadSpec(count=resumed_cap(60.0, 120), rate_per_s=60.0, queue_depth=4,
                         arrivals=Arrivals.OPEN, end=WorkloadEnd.RESUMED)
OPEN_SPEC_SLEEP_MS_AT_LEAST = 300  # the hold: a request held across it waited longer


def issued(c: ClientResult) -> int:
    """The requests the client's workload issued (RESUMED: as many as arrived by the
    stop)."""
    return len(c.ledger)


def peer_visible(c: ClientResult) -> int:
    """Its SEND and WRITE requests: the peer sees these land."""
    return sum(1 for e in c.ledger if e["op"] in ("SEND", "WRITE"))


def scenario(power_shim, peer_agent, rxe_topology, results_dir, name: str,
             ordering: Ordering, policies: list[str], spec: WorkloadSpec = SPEC,
             **kw: object) -> ScenarioResult:
    req = TransitionRequest(name, ordering, hold_ms=300, **kw)
    res = run_scenario(power_shim.shim, peer_agent, rxe_topology.local, req, policies, spec,
                       power_shim.clients_dir, results_dir / "clients")
    print("\n".join(render(res)))
    for c in res.clients:  # a row whose transition missed its workload measures nothing
        print(f"  {c.policy}: coverage {c.coverage}")
        if not c.crashed:
            assert c.coverage is not None and c.coverage.crossed > 0, (c.policy, c.missed)
            assert not c.missed, (c.policy, c.missed)
    return res


def rows(res: ScenarioResult) -> dict[str, Row]:
    """The matrix rows of a scenario, by policy."""
    req = res.transition.request
    ordering = (req.ordering or Ordering.CLIENTS_FIRST).value
    policies = tuple(c.policy for c in res.clients)
    key = ScenarioKey(req.name, ordering, policies, "mixed",
                      f"{req.name}/{ordering}/{'+'.join(policies)}/mixed")
    return {r.policy: r for r in rows_of(key, res)}


def books_from_journal(c: ClientResult) -> None:
    """A killed client's row: its ledger up to the kill, read back from its journal, with
    an outcome for every request its workload issued (what was in flight at the kill:
    killed-in-flight)."""
    assert c.crashed and c.from_journal and c.invariant_ok, (c.crash, c.unaccounted)
    n = sum(c.counts.values())
    assert 0 < n <= SPEC.count and len(c.ledger) == n
    assert c.counts.get("completed-ok", 0) > 0  # it was mid-run
    assert c.counts.get("killed-in-flight", 0) == len(c.in_flight_at_crash)
    assert "unaccounted" not in c.counts


def healthy(c: ClientResult) -> None:
    """What every cooperative client must show: all accounted, nothing lost or corrupted,
    the atomics the peer executed equal to those that completed here, one reconnect."""
    assert c.invariant_ok, (c.crash, c.unaccounted)
    assert c.counts.get("lost", 0) == 0 and c.counts.get("failed-to-app", 0) == 0
    assert c.peer_counts.get("corrupted", 0) == 0
    # a replay can deliver twice: measured once (queue-replay, link-flap hca-first), a SEND
    # flushed at PORT_ERR had reached the peer (its ACK went with the carrier) and its
    # replay landed again. The ledger must then name exactly that request, a replayed one
    dup = [e for e in c.ledger if e.get("peer") == "duplicated"]
    assert len(dup) == c.peer_counts.get("duplicated", 0), c.peer_counts
    assert all(e["outcome"] == "replayed-ok" for e in dup), dup
    # a replayed FETCH_ADD can run twice at the peer: measured once (queue-replay, standby
    # hca-first: flushed at PORT_ERR after the peer had executed it; peer counter 61 for
    # 60 local successes). Any surplus must be at most the replayed atomics
    replayed_atomics = sum(1 for e in c.ledger
                           if e["op"] == "FETCH_ADD" and e["outcome"] == "replayed-ok")
    surplus = c.atomics["peer_counter"] - c.atomics["local_successes"]
    assert 0 <= surplus <= replayed_atomics, c.atomics
    assert c.clean_shutdown["reconnects"] == 1
    ok = c.counts.get("completed-ok", 0) + c.counts.get("replayed-ok", 0)
    assert c.peer_counts["delivered-once"] + c.peer_counts.get("missing", 0) \
        + c.peer_counts.get("duplicated", 0) == peer_visible(c)
    # a SEND or WRITE that did not succeed here is missing at the peer, or reached it once
    # (its ACK went with the carrier: measured, fail-fast under link-flap hca-first, one
    # SEND completed in error at PORT_ERR that the peer had received); one that succeeded
    # here reached it
    failed_here = [e for e in c.ledger if e["op"] in ("SEND", "WRITE")
                   and e["outcome"] not in ("completed-ok", "replayed-ok")]
    assert all(e.get("peer") in ("missing", "delivered-once") for e in failed_here), \
        failed_here
    assert c.peer_counts.get("missing", 0) == sum(1 for e in failed_here
                                                  if e.get("peer") == "missing")
    assert ok + c.clean_shutdown["error_completions"] == issued(c)
    # the peer's SEND to each QP generation the client left behind never succeeds; on
    # rxe 6.1 a vanished QP gives the peer no completion at all within the bound (it
    # keeps retransmitting): the peer does not notice a partner that left silently
    probes = c.clean_shutdown["peer_probe"]
    assert len(probes) == c.clean_shutdown["reconnects"]
    assert all(p["status"] != "SUCCESS" for p in probes), probes


FLAP_ERRORS = {"LOC_QP_OP_ERR", "RETRY_EXC_ERR"}  # what rxe completes a request with there


def naive_under_flap(naive: ClientResult, res: ScenarioResult) -> str:
    """Which known behaviour naive showed under the link flap, each checked against
    evidence the client does not make itself: the shim's step times (port-down begin,
    port-up end) against the ledger's attempt times, and the peer agent's own record of
    arrivals. An AssertionError naming what was seen when none of them happened.

    - `lost`: some of its posted requests never completed (measured once in five suite
      runs, a loaded guest): they were posted before the carrier came back, at most a
      window of them, and the row is bad saying how many;
    - `errored`: a request met the downed port and completed LOC_QP_OP_ERR (or
      RETRY_EXC_ERR) after the carrier dropped; rxe completes every later WR of the ERR QP
      at once, flushed; the peer misses exactly the SENDs and WRITEs not completed ok;
    - `retried`: no request met the downed port (none was posted between the carrier drop
      and its return) and one in flight across it completed ok after, retransmitted by RC;
      nothing failed and the peer has every SEND and WRITE once."""
    t = res.transition
    down, up = t.step(StepKind.PORT_DOWN), t.step(StepKind.PORT_UP)
    assert down is not None and up is not None and down.begin_ns and up.end_ns, t.steps
    ledger = naive.ledger
    attempts = [a for e in ledger for a in e["attempts"]]
    visible = [e for e in ledger if e["op"] in ("SEND", "WRITE")]
    not_ok = [e for e in visible if e["outcome"] != "completed-ok"]
    lost = [e for e in ledger if e["outcome"] == "lost"]
    if lost:
        assert all(e["attempts"][-1]["posted_ns"] < up.end_ns for e in lost), lost
        assert len(lost) <= SPEC.queue_depth
        assert naive.peer_counts.get("missing", 0) <= len(not_ok)  # a lost one may land
        return "lost"
    errors = sorted((a for a in attempts if a["status"] in FLAP_ERRORS),
                    key=lambda a: a["completed_ns"])
    if errors:
        first = errors[0]
        assert first["completed_ns"] >= down.begin_ns, (first, down)
        later = [a for a in attempts if a["posted_ns"] > first["completed_ns"]]
        assert later and all(a["status"] in ("WR_FLUSH_ERR", *FLAP_ERRORS) for a in later), \
            later[:5]
        assert naive.peer_counts.get("missing", 0) == len(not_ok) > 0, naive.peer_counts
        return "errored"
    during = [a for a in attempts if down.begin_ns <= a["posted_ns"] <= up.end_ns]
    across = [a for a in attempts if a["posted_ns"] < down.begin_ns
              and (a["completed_ns"] or 0) > up.end_ns and a["status"] == "SUCCESS"]
    assert not during and across, (
        "none of the known behaviours of naive under the flap: no request lost or failed, "
        f"{len(during)} posted while the carrier was down, {len(across)} carried across it; "
        f"counts {naive.counts}")
    assert naive.counts == {"completed-ok": issued(naive)}, naive.counts
    assert naive.peer_counts == {"delivered-once": len(visible),
                                 "not-visible": issued(naive) - len(visible)}
    return "retried"


@pytest.mark.parametrize("ordering", list(Ordering))
def test_link_flap(power_shim, peer_agent, rxe_topology, results_dir, ordering) -> None:
    """naive keeps posting through the flap. Which of its known behaviours happened
    (naive_under_flap: lost, errored or retried, each checked against the shim's step
    times and the peer agent's record) is printed, and its row must be what that
    behaviour makes it: bad naming the lost requests, else clean (errors surfaced to the
    application are honest). The others quiesce (on the notice, or on PORT_ERR when the
    link goes first), reconnect a fresh QP after the carrier returns, and finish
    everything."""
    res = scenario(power_shim, peer_agent, rxe_topology, results_dir, "link-flap", ordering,
                   ["naive", *COOPERATIVE])
    assert res.ok and res.transition.verdict is Verdict.COMPLETED
    naive = res.client("naive")
    row = rows(res)["naive"]
    behaviour = naive_under_flap(naive, res)
    print(f"naive under link-flap {ordering.value}: behaviour {behaviour}; row "
          f"{row.status.value} {row.findings}")
    assert sum(naive.counts.values()) == issued(naive)
    if behaviour == "lost":
        lost = naive.counts["lost"]
        assert row.status is RowStatus.BAD and row.findings == [
            f"{lost} lost (posted, never completed)"], row.findings
    else:
        assert row.status is RowStatus.CLEAN and not row.findings, row.findings
    for policy in COOPERATIVE:
        healthy(res.client(policy))


@pytest.mark.parametrize("ordering", list(Ordering))
def test_standby_cooperative(power_shim, peer_agent, rxe_topology, results_dir,
                             ordering) -> None:
    """Without a client that holds on, standby completes with no veto. queue-replay: every
    request delivered exactly once, none reported failed to the application. graceful under
    clients-first: drained, goodbye seen by the peer, zero error completions, and the delete
    did not block; under hca-first it had no chance to quiesce (PORT_ERR or an error
    completion came before any notice) and the peer saw no goodbye."""
    res = scenario(power_shim, peer_agent, rxe_topology, results_dir, "standby", ordering,
                   COOPERATIVE)
    assert res.transition.verdict is Verdict.COMPLETED, res.transition.reasons
    assert not (res.transition.veto and res.transition.veto.detected)
    for policy in COOPERATIVE:
        healthy(res.client(policy))
    qr = res.client("queue-replay")
    assert set(qr.counts) <= {"completed-ok", "replayed-ok"}
    assert qr.peer_counts == {"delivered-once": peer_visible(qr),
                              "not-visible": issued(qr) - peer_visible(qr)}
    graceful = res.client("graceful")
    if ordering is Ordering.CLIENTS_FIRST:
        assert graceful.clean_shutdown["peer_saw"] == "orderly disconnect (goodbye)"
        assert graceful.clean_shutdown["error_completions"] == 0
        assert graceful.clean_shutdown["quiesce"] == "drained, goodbye sent"
        # told by the goodbye, the peer moved its QP to ERR: its probe is flushed at once
        assert [p["status"] for p in graceful.clean_shutdown["peer_probe"]] == ["WR_FLUSH_ERR"]
        veto = res.transition.veto
        assert veto is not None and veto.blocked_s < 0.5  # the delete did not wait
    else:
        assert graceful.clean_shutdown["quiesce"].startswith("no chance to quiesce")
        assert graceful.clean_shutdown["peer_saw"] != "orderly disconnect (goodbye)"


@pytest.mark.parametrize("ordering", list(Ordering))
def test_naive_under_standby(power_shim, peer_agent, rxe_topology, results_dir,
                             ordering) -> None:
    """naive never lets go of its context, and rxe cannot take a held device away (no
    disassociate): the delete blocks, the shim names naive as the holder, and under
    --on-veto force terminates it. Its result is a failed client naming the transition
    and what was in flight, not a failed run; fail-fast beside it is unaffected."""
    res = scenario(power_shim, peer_agent, rxe_topology, results_dir, "standby", ordering,
                   ["naive", "fail-fast"], on_veto=OnVeto.FORCE)
    assert res.transition.verdict is Verdict.FORCED and res.transition.veto is not None
    naive = res.client("naive")
    assert naive.crashed and "terminated by the shim (SIGTERM)" in naive.crash
    assert naive.ended is ClientEnd.TERMINATED_BY_SHIM
    assert [h["pid"] for h in res.transition.veto.holders] == \
        [t["pid"] for t in res.transition.veto.terminated]
    books_from_journal(naive)
    assert rows(res)["naive"].status is RowStatus.BAD  # not broken: every request counted
    healthy(res.client("fail-fast"))


def test_surprise_removal(power_shim, peer_agent, rxe_topology, results_dir) -> None:
    """rxe gives no DEVICE_FATAL: the only sign of a removal is the device's uverbs node
    vanishing from sysfs when the delete starts. The cooperative clients watch it and let
    go; naive holds the device, so the delete blocks until the shim (--on-veto force)
    terminates it: a killed worker becomes a failed client result, not a failed run."""
    res = scenario(power_shim, peer_agent, rxe_topology, results_dir, "surprise-removal",
                   Ordering.HCA_FIRST, ["naive", *COOPERATIVE], on_veto=OnVeto.FORCE)
    assert res.transition.verdict is Verdict.FORCED and res.transition.veto is not None
    naive = res.client("naive")
    assert naive.crashed and "terminated by the shim" in naive.crash
    assert naive.ended is ClientEnd.TERMINATED_BY_SHIM
    assert "surprise-removal" in naive.crash
    books_from_journal(naive)
    held = [h["pid"] for h in res.transition.veto.holders]
    assert len(held) == 1  # only naive still held it
    for policy in COOPERATIVE:
        c = res.client(policy)
        healthy(c)
        assert "uverbs node vanished" in c.clean_shutdown["quiesce"]


def test_killed_worker_is_reported(power_shim, peer_agent, rxe_topology, results_dir,
                                   monkeypatch) -> None:
    """A worker killed mid-run (SIGKILL, as a segfault would end it) becomes a failed result
    naming the client, the transition and what its journal shows in flight; the others and
    pytest carry on."""
    import harness.run.scenario as cr

    real_run = power_shim.shim.run

    def kill_then_run(request):  # kill fail-fast just before the transition
        pid = next(w.pid for w in workers if w.policy == "fail-fast")
        os.kill(pid, signal.SIGKILL)
        return real_run(request)

    workers: list = []
    real_init = cr.ClientWorker.__init__

    def track(self, *a, **k):
        real_init(self, *a, **k)
        workers.append(self)

    monkeypatch.setattr(cr.ClientWorker, "__init__", track)
    monkeypatch.setattr(power_shim.shim, "run", kill_then_run)
    res = scenario(power_shim, peer_agent, rxe_topology, results_dir, "link-flap",
                   Ordering.CLIENTS_FIRST, COOPERATIVE)
    ff = res.client("fail-fast")
    assert ff.crashed and ff.ended is ClientEnd.DIED
    assert "killed by signal 9" in ff.crash and "link-flap" in ff.crash
    assert all(0 <= r < SPEC.count for r in ff.in_flight_at_crash)
    books_from_journal(ff)
    assert rows(res)["fail-fast"].status is RowStatus.BROKEN  # it died on its own
    journal = (results_dir / "clients" / "fail-fast.journal.jsonl").read_text()
    assert '"event": "posted"' in journal  # it was mid-run when killed
    for policy in ("queue-replay", "graceful"):
        healthy(res.client(policy))


def test_open_loop_standby_tells_the_policies_apart(power_shim, peer_agent, rxe_topology,
                                                    results_dir) -> None:
    """Open-loop arrivals (OPEN_SPEC) under standby hca-first: requests keep arriving while
    rxe0 is away, so the policies' rows differ. fail-fast refuses them to the application
    (failed-to-app: the peer misses exactly those SENDs and WRITEs); queue-replay and
    graceful hold them and complete them late after resume, with how long they waited
    (graceful gets no notice before the device goes, so it does what queue-replay does).
    Every request is accounted for, and each row says how many requests were in flight
    when the port went down and when the device was deleted."""
    res = scenario(power_shim, peer_agent, rxe_topology, results_dir, "standby",
                   Ordering.HCA_FIRST, COOPERATIVE, OPEN_SPEC)
    assert res.ok and res.transition.verdict is Verdict.COMPLETED, res.transition.reasons
    by = rows(res)
    for policy in COOPERATIVE:
        c, row = res.client(policy), by[policy]
        assert sum(c.counts.values()) == issued(c) > 0
        assert c.coverage is not None and c.coverage.arrived_away
        assert row.in_flight_port is not None and row.in_flight_device is not None
        assert c.counts.get("lost", 0) == 0
        # a replay may deliver twice (see healthy): measured here too (queue-replay, 1 of
        # 120, the SEND flushed at PORT_ERR had reached the peer). Only a replayed request
        # may be duplicated, and the row then says so and is bad
        dup = [e for e in c.ledger if e.get("peer") == "duplicated"]
        assert len(dup) == c.peer_counts.get("duplicated", 0), c.peer_counts
        assert all(e["outcome"] == "replayed-ok" for e in dup), dup
        if dup:
            assert row.status is RowStatus.BAD, row.findings
            assert row.findings == [f"{len(dup)} duplicated at the peer"], row.findings
        else:
            assert row.status is RowStatus.CLEAN, row.findings
    ff = res.client("fail-fast")
    refused = ff.counts.get("failed-to-app", 0)
    assert refused > 0 and "completed-late" not in ff.counts, ff.counts
    # what the peer misses is exactly what fail-fast did not complete ok; a SEND or WRITE
    # that completed with an error may still have landed (measured: 1 of 27, its ACK lost
    # with the carrier): the app was told it failed, the peer has it once, never twice
    not_ok = [e for e in ff.ledger if e["op"] in ("SEND", "WRITE")
              and e["outcome"] not in ("completed-ok", "replayed-ok")]
    assert all(e["peer"] in ("missing", "delivered-once") for e in not_ok), not_ok
    assert ff.peer_counts.get("missing", 0) == sum(1 for e in not_ok if e["peer"] == "missing")
    assert ff.peer_counts.get("missing", 0) > 0 and not ff.peer_counts.get("duplicated")
    for policy in ("queue-replay", "graceful"):
        c, row = res.client(policy), by[policy]
        assert c.counts.get("completed-late", 0) > 0 and "failed-to-app" not in c.counts
        assert row.wait_max_ms is not None and row.wait_max_ms > OPEN_SPEC_SLEEP_MS_AT_LEAST
        assert c.peer_counts.get("delivered-once", 0) + c.peer_counts.get("duplicated", 0) \
            == peer_visible(c)
    assert by["fail-fast"].counts != by["queue-replay"].counts


def test_a_transition_that_comes_after_the_workload_is_missed(
        power_shim, peer_agent, rxe_topology, results_dir) -> None:
    """The negative control of the coverage check, on real rxe: a fixed-count workload
    (WorkloadEnd.COUNT) whose transition is started only once every request has its
    outcome (what a slow machine did to CI's rows) is no measurement: its row is `missed`,
    never clean, with every request finished before the transition began."""
    spec = WorkloadSpec(count=30, rate_per_s=60.0, queue_depth=4, arrivals=Arrivals.OPEN)
    req = TransitionRequest("standby", Ordering.HCA_FIRST, hold_ms=300)
    res = run_scenario(power_shim.shim, peer_agent, rxe_topology.local, req, ["graceful"],
                       spec, power_shim.clients_dir, results_dir / "clients",
                       progress_fraction=1.0)
    print("\n".join(render(res)))
    c, row = res.client("graceful"), rows(res)["graceful"]
    assert c.counts == {"completed-ok": spec.count}, c.counts
    assert c.coverage is not None and c.coverage.crossed == 0, c.coverage
    assert c.coverage.before == spec.count and c.coverage.arrived_away == 0
    assert row.status is RowStatus.MISSED and row.status.fails_run, row.findings
    assert any("missed the workload" in f for f in row.findings), row.findings

"""A client worker SIGKILLed at any moment leaves books that hold every request it posted.

Its journal is a memfd it shares with the controller (harness.run.client_worker.ClientWorker):
each posting is written there before its ibv_post_send, each completion as soon as its
batch is taken off the CQ (clients.userspace.io_path), so nothing is lost with the process. The
independent evidence is the peer agent's own record of what arrived on the worker's QPs:
every SEND that reached the peer must be in the killed worker's books as posted, and
every request its books call completed-ok must have reached the peer. Before the fix the
journal was written every 20 ms: a kill right after a burst of posts left SENDs at the
peer that the books did not have. A worker killed in a later round (rxe-power stress)
gets that round's books only (the journal's "round" note), not every round's merged.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from harness.peer.controller import PeerAgent
from harness.run.scenario import ClientWorker, finish, spawn_workers
from harness.workload.journal import journal_records
from harness.workload.ledger import Ledger
from harness.workload.outcomes import Outcome
from harness.workload.spec import Op, WorkloadSpec

# flat out, closed loop, one op: the worker is always in the middle of a burst of posts
BURST = WorkloadSpec(ops=(Op.SEND,), sizes=(64,), count=100_000, queue_depth=16)
SHORT = WorkloadSpec(ops=(Op.SEND,), sizes=(64,), count=200, queue_depth=16)
KILL_AFTER_COMPLETED = 1500
PROGRESS_TIMEOUT_S = 60.0
DEATH_TIMEOUT_S = 10.0


def kill_mid_burst(w: ClientWorker) -> None:
    """Once `KILL_AFTER_COMPLETED` requests completed (it is posting flat out), SIGKILL."""
    w.request("go", PROGRESS_TIMEOUT_S)
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while True:
        rep = w.request("progress", PROGRESS_TIMEOUT_S)
        if rep["counts"].get("completed-ok", 0) >= KILL_AFTER_COMPLETED:
            break
        assert time.monotonic() < deadline, f"no progress within {PROGRESS_TIMEOUT_S} s: {rep}"
        time.sleep(0.01)  # polling interval of a bounded wait
    os.kill(w.pid, signal.SIGKILL)
    w.proc.wait(DEATH_TIMEOUT_S)


def current_round(text: str) -> tuple[int, list[int]]:
    """The generation and the peer agent's QP ids of the journal's current round."""
    recs = journal_records(text)
    starts = [i for i, r in enumerate(recs) if r["event"] == "round"]
    opened = [r["detail"] for r in recs[starts[-1] + 1 if starts else 0:]
              if r["event"] == "opened"]
    assert opened, "the journal has no opened note in its current round"
    return opened[-1]["generation"], list(opened[-1]["agent_qps"])


def check_books(led: Ledger, agent: PeerAgent, qps: list[int], generation: int) -> None:
    """The killed worker's books against the peer's record of what arrived."""
    arrived = {a["seq"] - 1 for qp in qps for a in agent.arrivals(qp, 0, timeout_s=0)["arrivals"]
               if a["ok"]}
    posted = {r for r, e in led.entries.items() if e.attempts}
    ok = {r for r, e in led.entries.items() if e.outcome is Outcome.COMPLETED_OK}
    killed = [r for r, e in led.entries.items() if e.outcome is Outcome.KILLED_IN_FLIGHT]
    print(f"books: {len(posted)} posted, {len(ok)} ok, {len(killed)} killed in flight; "
          f"peer: {len(arrived)} arrived")
    assert len(arrived) >= KILL_AFTER_COMPLETED
    assert arrived <= posted, f"at the peer, not in the books: {sorted(arrived - posted)[:20]}"
    assert ok <= arrived, f"completed ok, never at the peer: {sorted(ok - arrived)[:20]}"
    assert len(killed) <= BURST.queue_depth, killed  # at most one window was in flight
    assert not [r for r, e in led.entries.items() if e.outcome is None]
    assert {a.generation for e in led.entries.values() for a in e.attempts} == {generation}


def test_a_sigkill_right_after_a_burst_of_posts_loses_no_posting(
        rxe_topology, results_dir: Path, tmp_path: Path) -> None:
    with PeerAgent(rxe_topology.peer, log_dir=results_dir / "logs") as agent:
        [w] = spawn_workers(["naive"], BURST, rxe_topology.local, agent, tmp_path / "clients",
                            results_dir / "journal-kill", names=["burst"])
        try:
            kill_mid_burst(w)
            text = w.journal_text()
            led = w.journal_ledger()
            assert text is not None and led is not None
            generation, qps = current_round(text)
            check_books(led, agent, qps, generation)
        finally:
            w.close()


def test_a_worker_killed_in_round_three_gets_round_three_books(
        rxe_topology, results_dir: Path, tmp_path: Path) -> None:
    """rxe-power stress runs rounds on one worker; its journal holds them all. Killed in
    round 3, its books are round 3's: every attempt on round 3's QP generation, nothing
    of the requests rounds 1 and 2 completed (they reuse the same request ids)."""
    with PeerAgent(rxe_topology.peer, log_dir=results_dir / "logs") as agent:
        [w] = spawn_workers(["naive"], SHORT, rxe_topology.local, agent, tmp_path / "clients",
                            results_dir / "journal-kill", names=["rounds"])
        try:
            for n in (1, 2):
                if n > 1:
                    w.new_round(SHORT)
                w.request("go", PROGRESS_TIMEOUT_S)
                res, rep = finish(w, f"round {n}")
                assert rep is not None and res.ended.value == "completed", res.crash
                assert rep["ledger"].counts() == {"completed-ok": SHORT.count}
            w.new_round(BURST)
            kill_mid_burst(w)
            text = w.journal_text()
            led = w.journal_ledger()
            assert text is not None and led is not None
            generation, qps = current_round(text)
            assert generation == 3, generation
            check_books(led, agent, qps, generation)
        finally:
            w.close()

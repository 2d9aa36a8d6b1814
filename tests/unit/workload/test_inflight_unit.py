"""I/O in flight across the sleep and killed clients' books, pure logic (issue 15, 3 and 4):
the open-loop arrival process, the completed-late outcome and its waits, the in-flight
counts at the port going down and at the delete, and the ledger of a killed client read
back from its journal."""

from __future__ import annotations

import io
import time

from clients.userspace.io_path import ClientIoPath
from harness.run.matrix import rows_of
from harness.run.records import ScenarioKey
from harness.run.rows import RowStatus
from harness.run.scenario_result import ClientEnd, ClientResult, ScenarioResult
from harness.workload.inflight import in_flight_at, late_waits
from harness.workload.journal import journal_lines, journal_records, ledger_from_journal, note_line
from harness.workload.ledger import Ledger
from harness.workload.outcomes import Outcome
from harness.workload.recorder import Recorder
from harness.workload.spec import Arrivals, WorkloadSpec
from power.plan import Ordering, StepKind
from power.result import StepRecord, TransitionRequest, TransitionResult, Verdict
from power.timeline import Timeline

MS = 1_000_000
OPEN = WorkloadSpec(count=10, rate_per_s=60.0, arrivals=Arrivals.OPEN)


def test_open_loop_arrivals_follow_the_clock() -> None:
    """Request i arrives at go + i / rate; rate 0: every request at go."""
    assert OPEN.arrival_offset_ns(3) == 50 * MS
    assert [OPEN.arrived_by(t) for t in (-1, 0, 16 * MS, 17 * MS, 150 * MS, 10**10)] == \
        [0, 1, 1, 2, 10, 10]
    assert WorkloadSpec(count=5, rate_per_s=0, arrivals=Arrivals.OPEN).arrived_by(0) == 5
    back = WorkloadSpec.from_json(OPEN.to_json())
    assert back.arrivals is Arrivals.OPEN and back == OPEN
    old = {k: v for k, v in OPEN.to_json().items() if k != "arrivals"}
    assert WorkloadSpec.from_json(old).arrivals is Arrivals.CLOSED


def test_requests_arrive_while_the_client_has_no_device() -> None:
    """Open loop: with no QP at all (the device is asleep) requests still arrive and wait
    in the client's queue; while the client refuses (fail-fast without a device) what
    waits and what arrives is failed to the application at once, journaled; closed loop:
    nothing arrives, the queue is the whole workload from the start."""
    path = ClientIoPath(OPEN, io.StringIO())
    path.go()
    assert path.t0_ns is not None
    path.arrive(path.t0_ns + 100 * MS)  # 0, 16.7, ... 100 ms: 7 requests
    assert list(path.queue) == list(range(7)) and path.outstanding() == 0
    path.refuse("refused: no device")
    assert not path.queue and path.ledger.counts() == {"failed-to-app": 7, "unaccounted": 3}
    path.arrive(path.t0_ns + 120 * MS)
    assert path.ledger.counts()["failed-to-app"] == 8 and not path.queue
    path.refusing = ""  # resumed
    path.arrive(path.t0_ns + 10**10)
    assert list(path.queue) == [8, 9] and not path.done()
    path.flush_journal()
    assert path.journal is not None
    recs = journal_records(path.journal.getvalue())  # type: ignore[attr-defined]
    refused = [r for rec in recs if rec["event"] == "refused" for r in rec["detail"]["reqs"]]
    assert refused == list(range(8))
    closed = ClientIoPath(WorkloadSpec(count=4, rate_per_s=60.0), None)
    closed.go()
    closed.arrive(time.monotonic_ns() + 10**10)
    assert list(closed.queue) == [0, 1, 2, 3]


def test_a_request_held_across_the_sleep_completes_late_with_its_wait() -> None:
    """completed-late: first posted after a reopen, though it arrived before (held_below:
    the arrivals at the reopen); a replayed request stays replayed-ok; both ledgers agree
    and the page carries arrivals and the held mark."""
    reqs = WorkloadSpec(count=4).requests()
    rec, led = Recorder(reqs), Ledger(reqs)
    for book in (rec, led):
        book.arrived(0, 100)
        book.posted(0, 1, 150)
        book.completed(0, "SUCCESS", 0, 160)
        book.arrived(1, 200)  # arrives; the device goes; reopened with 3 arrived
        book.posted(1, 2, 900, 3)
        book.completed(1, "SUCCESS", 0, 950)
        book.arrived(2, 210)
        book.posted(2, 1, 220)
        book.completed(2, "WR_FLUSH_ERR", 0, 300)
        book.retry(2)
        book.posted(2, 2, 910, 3)
        book.completed(2, "SUCCESS", 0, 960)
        book.posted(3, 2, 920, 3)  # closed loop: arrives when taken, never late
        book.completed(3, "SUCCESS", 0, 970)
    want = {"completed-late": 1, "completed-ok": 2, "replayed-ok": 1}
    assert rec.counts() == led.counts() == want
    back = Ledger.from_pages([rec.page(0, 4)])
    assert back.counts() == want
    assert back.entries[1].outcome is Outcome.COMPLETED_LATE and back.entries[1].held
    assert back.entries[1].wait_ns == 700 and back.entries[0].wait_ns == 50
    assert back.entries[3].wait_ns == 0
    assert Ledger.from_json(back.to_json()).entries[1].arrived_ns == 200
    w = late_waits(back.entries.values())
    assert (w.count, w.median_ms, w.max_ms) == (1, 0.0, 0.0)
    assert late_waits(led.entries.values()).count == 1


def _steps(port_ns: int, delete_ns: int) -> TransitionResult:
    steps = [StepRecord(StepKind.PORT_DOWN, "ok", port_ns, port_ns + 1),
             StepRecord(StepKind.DELETE_DEVICE, "ok", delete_ns, delete_ns + 1)]
    return TransitionResult(TransitionRequest("standby", Ordering.HCA_FIRST), Verdict.FORCED,
                            [], steps, Timeline(0))


def test_in_flight_at_the_port_going_down_and_at_the_delete() -> None:
    """Posted and not completed at the moment; an attempt without a completion ends at the
    next attempt's post; the last one without a completion (abandoned, killed, lost) is in
    flight from its post on."""
    led = Ledger(WorkloadSpec(count=4).requests())
    led.posted(0, 1, 10)
    led.completed(0, "SUCCESS", 0, 30)
    led.posted(1, 1, 20)  # never completes
    led.posted(2, 1, 5)
    led.completed(2, "WR_FLUSH_ERR", 0, 15)
    led.retry(2)
    led.posted(2, 2, 40)
    led.completed(2, "SUCCESS", 0, 50)
    led.posted(3, 1, 8)
    led.abandoned(3, "the device went")
    es = list(led.entries.values())
    assert [in_flight_at(es, t) for t in (4, 12, 16, 25, 45, 60)] == [0, 3, 2, 3, 3, 2]
    led.finalize()
    assert led.entries[3].outcome is Outcome.ABANDONED and led.entries[1].outcome is Outcome.LOST
    res = ScenarioResult(_steps(25, 45), [ClientResult("q", "queue-replay",
                                                       counts=led.counts(),
                                                       ledger=led.to_json())])
    key = ScenarioKey("standby", "hca-first", ("queue-replay",), "mixed",
                      "standby/hca-first/queue-replay/mixed")
    (row,) = rows_of(key, res)
    assert (row.in_flight_port, row.in_flight_device) == (3, 3)
    # the mlx5 order: no port-down, the device goes inside the kernel's suspend (counted at
    # its begin); the same ledger at 16 ns
    steps = [StepRecord(StepKind.KERNEL_SUSPEND, "ok", 16, 30),
             StepRecord(StepKind.DEVICE_BACK, "ok", 30, 35)]
    res = ScenarioResult(TransitionResult(TransitionRequest("standby-devices",
                                                            Ordering.HCA_FIRST),
                                          Verdict.COMPLETED, [], steps, Timeline(0)),
                         [ClientResult("q", "queue-replay", counts=led.counts(),
                                       ledger=led.to_json())])
    key = ScenarioKey("standby-devices", "hca-first", ("queue-replay",), "mixed",
                      "standby-devices/hca-first/queue-replay/mixed")
    (row,) = rows_of(key, res)
    assert (row.in_flight_port, row.in_flight_device) == (None, 2)


def _journal(spec: WorkloadSpec) -> str:
    t0 = 1_000 * MS
    return "".join([
        note_line(t0, "go", {"t0_ns": t0, "arrivals": spec.arrivals.value}),
        note_line(t0 + 1, "opened", {"generation": 1, "held_below": 0}),
        journal_lines([1, 2, 3, 4], t0 + 10 * MS, 1),
        journal_lines([-1, -2], t0 + 20 * MS, 1, {1: "LOC_QP_OP_ERR"}),
        note_line(t0 + 21 * MS, "flushed", {"reqs": [1, 2], "requeued": False}),
        note_line(t0 + 22 * MS, "rejected", {"req": 3, "errno": 5}),
        note_line(t0 + 23 * MS, "refused", {"reqs": [4], "reason": "refused: no device"}),
        note_line(t0 + 90 * MS, "arrived", {"upto": 8}),
        journal_lines([6], t0 + 95 * MS, 1),  # request 5
        '{"t_ns": 1, "event": "posted", "de',  # the line the kill cut
    ])


def test_a_killed_clients_books_come_back_from_its_journal() -> None:
    """Every request the workload issued (posted, arrived or refused) has an outcome up to
    the kill; what was posted or waiting in the queue then is killed-in-flight; what never
    arrived is not in the books. Open and closed loop."""
    led = ledger_from_journal(_journal(OPEN), OPEN)
    assert sorted(led.entries) == list(range(8))
    assert led.counts() == {"completed-error": 1, "completed-ok": 1, "failed-to-app": 1,
                            "flushed": 1, "killed-in-flight": 3, "rejected-at-post": 1}
    assert led.unaccounted() == []
    assert led.entries[1].reason == "LOC_QP_OP_ERR vendor_err 0"
    assert led.entries[5].arrived_ns == 1_000 * MS + OPEN.arrival_offset_ns(5)
    closed = WorkloadSpec(count=10, rate_per_s=60.0)
    led = ledger_from_journal(_journal(closed), closed)
    assert sorted(led.entries) == [0, 1, 2, 3, 4, 5]  # issued = taken by the client
    assert led.counts()["killed-in-flight"] == 1


def test_a_killed_clients_row_is_bad_and_accounts_for_every_request() -> None:
    """Terminated by the shim: the row is bad (it held the device), its counts are the
    journal's and invariant_ok holds; with no journal to read, the row is broken."""
    led = ledger_from_journal(_journal(OPEN), OPEN)
    c = ClientResult("naive", "naive", ClientEnd.TERMINATED_BY_SHIM, "terminated",
                     [5, 6, 7], led.counts(), ledger=led.to_json(), from_journal=True)
    assert c.invariant_ok
    key = ScenarioKey("standby", "hca-first", ("naive",), "mixed",
                      "standby/hca-first/naive/mixed")
    (row,) = rows_of(key, ScenarioResult(_steps(1_000 * MS + 92 * MS, 2_000 * MS), [c]))
    assert row.status is RowStatus.BAD and sum(row.counts.values()) == 8
    assert row.counts["killed-in-flight"] == 3
    assert row.findings[0] == "held the device: terminated by the shim (3 in flight)"
    assert (row.in_flight_port, row.in_flight_device) == (0, 1)
    lost = ClientResult("naive", "naive", ClientEnd.TERMINATED_BY_SHIM, "terminated",
                        from_journal=False)
    assert not lost.invariant_ok
    (row,) = rows_of(key, ScenarioResult(_steps(1, 2), [lost]))
    assert row.status is RowStatus.BROKEN


def _fatal_core(requeue: bool) -> tuple[object, io.StringIO]:
    """A ClientCore whose device delivered DEVICE_FATAL with requests 3 and 5 posted on
    its QP (no device, agent or verbs needed: nothing is asked of the QP)."""
    from clients.userspace.connection import Conn
    from clients.userspace.core import ClientCore

    journal = io.StringIO()
    core = ClientCore.__new__(ClientCore)
    ClientIoPath.__init__(core, WorkloadSpec(count=8), journal)
    core.device, core.device_fatal = None, True
    for r in (3, 5):
        core.ledger.posted(r, 1, 100 + r)
        core._jpend.append(r + 1)  # journaled as _post does
    core.queue.remove(3)
    core.queue.remove(5)
    core.conns[0] = Conn(0, 1, None, 0, None, [2, 3], [3, 5, -1, -1], n_inflight=2)  # type: ignore[arg-type]
    assert core.flush_all(requeue=requeue) == 2
    assert core.outstanding() == 0 and core.conns[0].broken
    return core, journal


def test_device_fatal_ends_what_was_in_flight_without_a_drain() -> None:
    """After DEVICE_FATAL nothing posted completes (measured on rxe): fail-fast reports the
    requests in flight abandoned at once (not lost at the deadline, no drain wait), and
    its journal says so; queue-replay and graceful put them back in line for replay."""
    core, journal = _fatal_core(requeue=False)
    core.ledger.finalize()
    assert core.ledger.counts()["abandoned"] == 2 and "lost" not in core.ledger.counts()
    core.flush_journal()
    led = ledger_from_journal(journal.getvalue(), WorkloadSpec(count=8))
    assert led.counts() == {"abandoned": 2}
    core, _ = _fatal_core(requeue=True)
    assert list(core.queue)[:2] == [3, 5] and core.ledger.unaccounted()[:2] == [0, 1]
    assert 3 in core.ledger.unaccounted() and "abandoned" not in core.ledger.counts()

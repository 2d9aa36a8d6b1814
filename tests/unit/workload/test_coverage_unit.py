"""Did the transition meet the workload (harness.workload.coverage), pure logic: the
window from a transition's steps, the spans of a ledger's requests, the stop of a
RESUMED workload, and the `missed` status of a row whose transition met nothing: each
detector with the case that makes it fire and the case that must not."""

from __future__ import annotations

import io

import pytest

from clients.userspace.io_path import ClientIoPath
from harness.run.matrix import render_table, rows_of
from harness.run.records import ScenarioKey
from harness.run.rows import RowStatus
from harness.run.scenario import measure_coverage
from harness.run.scenario_result import ClientResult, ScenarioResult
from harness.workload.coverage import Coverage, FaultWindow, Span
from harness.workload.inflight import spans
from harness.workload.ledger import Ledger
from harness.workload.spec import Arrivals, WorkloadEnd, WorkloadSpec, resumed_cap
from power.plan import Ordering, StepKind
from power.result import StepRecord, TransitionRequest, TransitionResult, Verdict, fault_window
from power.timeline import Timeline

MS = 1_000_000
S = 1000 * MS


def steps(t0: int) -> list[StepRecord]:
    """standby hca-first: port down at t0, delete, notice, hold 300 ms, back at t0+500ms."""
    k = StepKind
    plan = [(k.PORT_DOWN, 0, 5), (k.DELETE_DEVICE, 5, 40), (k.NOTIFY_SUSPEND, 40, 45),
            (k.HOLD, 45, 345), (k.CREATE_DEVICE, 345, 400), (k.PORT_UP, 400, 500),
            (k.NOTIFY_RESUME, 500, 520)]
    return [StepRecord(kind, "ok", t0 + b * MS, t0 + e * MS) for kind, b, e in plan]


def test_the_window_comes_from_the_steps_that_ran() -> None:
    win = fault_window(steps(10 * S))
    assert win == FaultWindow(10 * S, 10 * S + 520 * MS, 10 * S, 10 * S + 500 * MS)
    # clients-first: the notice comes first and is part of the transition
    cf = [StepRecord(StepKind.NOTIFY_SUSPEND, "ok", S, S + 50 * MS), *steps(2 * S)]
    assert fault_window(cf) == FaultWindow(S, 2 * S + 520 * MS, 2 * S, 2 * S + 500 * MS)
    # the device never came back (create failed, port-up skipped): no away window
    broken = [s if s.step not in (StepKind.CREATE_DEVICE, StepKind.PORT_UP)
              else StepRecord(s.step, "skipped") for s in steps(S)]
    assert fault_window(broken) is not None and fault_window(broken).away_end_ns is None
    assert fault_window([StepRecord(StepKind.HOLD, "skipped")]) is None


def test_coverage_counts_what_crossed_and_what_missed() -> None:
    win = FaultWindow(10 * S, 11 * S, 10 * S + 100 * MS, 10 * S + 900 * MS)
    cov = Coverage.of([Span(1 * S, 2 * S),  # done long before
                       Span(9 * S, 10 * S + 50 * MS),  # in flight at the begin
                       Span(10 * S + 200 * MS, 11 * S + 300 * MS),  # arrived while away
                       Span(9 * S, None),  # never finished: lost
                       Span(12 * S, 12 * S + 1)], win)  # after
    assert cov == Coverage(requests=5, before=1, crossed=3, arrived_away=1, after=1,
                           in_flight_at_begin=2, unfinished=1)
    assert cov.missed(require_after=True) == []
    assert Coverage.from_json(cov.to_json()) == cov


def test_a_workload_that_ended_before_the_transition_missed_it() -> None:
    """The negative control of the detector: CI's failure (every request done before the
    sleep reached the device) must not read as a measurement."""
    win = FaultWindow(10 * S, 11 * S, 10 * S, 11 * S)
    done_before = [Span(i * MS, i * MS + 5 * MS) for i in range(120)]
    cov = Coverage.of(done_before, win)
    assert cov.crossed == 0 and cov.before == 120
    why = cov.missed(require_after=False)
    assert len(why) == 1 and "missed the workload" in why[0]
    # a RESUMED workload with nothing after the transition did not show recovery
    only_during = [Span(10 * S + 10 * MS, 10 * S + 20 * MS)]
    assert Coverage.of(only_during, win).missed(require_after=False) == []
    assert "recovery was not measured" in Coverage.of(only_during, win).missed(True)[0]


def test_ledger_spans_cover_every_outcome() -> None:
    """Open loop: from the arrival; closed loop: from go for the first, then from when
    the one before it was taken; the end is the last attempt's completion, a rejected
    post's time, a refusal's arrival; lost/abandoned/killed never end."""
    spec = WorkloadSpec(count=5)
    led = Ledger(spec.requests())
    led.arrived(0, 100), led.posted(0, 1, 110), led.completed(0, "SUCCESS", 0, 120)
    led.arrived(1, 200), led.posted(1, 1, 210), led.rejected(1, 5, "EIO")
    led.arrived(2, 300), led.failed_to_app(2, "refused")
    led.arrived(3, 400), led.posted(3, 1, 410)
    led.finalize()  # 3: lost
    led.arrived(4, 500), led.posted(4, 1, 510), led.completed(4, "WR_FLUSH_ERR", 0, 520)
    led.retry(4), led.posted(4, 2, 600), led.completed(4, "SUCCESS", 0, 650)
    entries = list(led.entries.values())
    assert spans(entries) == [Span(100, 120), Span(200, 210), Span(300, 300), Span(400, None),
                              Span(500, 650)]
    assert [s.start_ns for s in spans(entries, closed_loop_go_ns=7)] == [7, 100, 200, 300, 400]


def result_with(ledger: Ledger, t0: int, spec: WorkloadSpec) -> ScenarioResult:
    tres = TransitionResult(TransitionRequest("standby", Ordering.HCA_FIRST),
                            Verdict.COMPLETED, [], steps(t0), Timeline())
    c = ClientResult("graceful", "graceful", counts=ledger.counts(),
                     ledger=ledger.to_json())
    window = tres.fault_window()
    assert window is not None
    measure_coverage(c, spec, window, go_ns=0)
    return ScenarioResult(tres, [c])


def test_a_row_whose_transition_missed_the_workload_is_missed_never_clean() -> None:
    """rows_of: the same clean ledger is `clean` when the transition met it and `missed`
    when the transition came after its last request: counted apart in the summary, and a
    run with such a row fails (RowStatus.fails_run)."""
    spec = WorkloadSpec(count=4, rate_per_s=60.0, arrivals=Arrivals.OPEN)
    led = Ledger(spec.requests())
    for i in range(4):
        led.arrived(i, i * 16 * MS)
        led.posted(i, 1, i * 16 * MS + MS)
        led.completed(i, "SUCCESS", 0, i * 16 * MS + 2 * MS)
    key = ScenarioKey("standby", "hca-first", ("graceful",), "mixed",
                      "standby/hca-first/graceful/mixed")
    [missed] = rows_of(key, result_with(led, 10 * S, spec))
    assert missed.status is RowStatus.MISSED and missed.status.fails_run
    assert not missed.status.measured and "missed the workload" in missed.findings[0]
    assert missed.coverage is not None and missed.coverage.crossed == 0
    # the sleep began while request 2 was in flight; request 3 arrived while the device
    # was away
    [met] = rows_of(key, result_with(led, 33 * MS, spec))
    assert met.status is RowStatus.CLEAN and met.coverage is not None
    assert met.coverage.crossed == 2 and met.coverage.arrived_away == 1
    table = render_table([missed, met])
    assert table[-1].startswith("2 rows: 1 clean, 0 bad") and "1 missed" in table[-1]


def test_a_resumed_workload_stops_where_the_controller_says() -> None:
    """stop_arrivals: open loop, what has arrived is the workload and the rest of the cap
    leaves the ledger; closed loop, what was taken (posted, refused, replayed); a
    workload that had issued its whole cap says it ran dry."""
    spec = WorkloadSpec(count=100, rate_per_s=60.0, arrivals=Arrivals.OPEN,
                        end=WorkloadEnd.RESUMED)
    path = ClientIoPath(spec, io.StringIO())
    path.go()
    assert path.t0_ns is not None
    path.t0_ns -= 100 * MS  # 100 ms ago: 7 requests have arrived by now
    assert path.stop_arrivals() == {"issued": 7, "ran_dry": False}
    assert len(path.ledger) == 7 and len(path.requests) == 7 and list(path.queue) == list(
        range(7))
    path.arrive(path.t0_ns + 10 * S)  # nothing arrives after the stop
    assert path.n_arrived == 7 and not path.done()
    closed = ClientIoPath(WorkloadSpec(count=6, end=WorkloadEnd.RESUMED), io.StringIO())
    closed.go()
    for i in (0, 1):
        closed.queue.popleft()
        closed.ledger.posted(i, 1, 10)
        closed.ledger.completed(i, "SUCCESS", 0, 20)
    assert closed.stop_arrivals() == {"issued": 2, "ran_dry": False}
    assert not closed.queue and closed.done()
    dry = ClientIoPath(WorkloadSpec(count=3, rate_per_s=60.0, arrivals=Arrivals.OPEN,
                                    end=WorkloadEnd.RESUMED), io.StringIO())
    dry.go()
    assert dry.t0_ns is not None
    dry.t0_ns -= 10 * S
    assert dry.stop_arrivals() == {"issued": 3, "ran_dry": True}


def test_resumed_workloads_are_capped_and_checked() -> None:
    assert resumed_cap(60.0, 120) == 18_000 and resumed_cap(0.0, 120) == 120
    assert resumed_cap(float("nan"), 5) == 5
    with pytest.raises(Exception, match="needs a rate"):
        WorkloadSpec(count=10, arrivals=Arrivals.OPEN, end=WorkloadEnd.RESUMED).validate()
    spec = WorkloadSpec(count=10, rate_per_s=5.0, end=WorkloadEnd.RESUMED, settle_ms=250)
    assert WorkloadSpec.from_json(spec.to_json()) == spec
    old = {k: v for k, v in spec.to_json().items() if k not in ("end", "settle_ms")}
    assert WorkloadSpec.from_json(old).end is WorkloadEnd.COUNT


def test_a_closed_loop_client_that_holds_its_queue_crosses_the_transition() -> None:
    """Closed loop: nothing in flight at the notice (it drained), nothing posted while
    away, yet the request after the last one taken waited through the whole transition:
    it crossed; the one taken after it came after."""
    spec = WorkloadSpec(count=6, rate_per_s=60.0)
    led = Ledger(spec.requests())
    for i, t in enumerate((0, 10, 20, 600, 610)):
        led.posted(i, 1, t * MS)
        led.completed(i, "SUCCESS", 0, t * MS + MS)
    win = FaultWindow(25 * MS, 525 * MS, 30 * MS, 500 * MS)
    cov = Coverage.of(spans(led.entries.values(), closed_loop_go_ns=0), win)
    assert cov == Coverage(requests=5, before=3, crossed=1, arrived_away=0, after=1,
                           in_flight_at_begin=1)
    assert cov.missed(require_after=True) == []
    # the negative control: all five taken and done before the notice
    early = Ledger(spec.requests())
    for i in range(5):
        early.posted(i, 1, i * MS)
        early.completed(i, "SUCCESS", 0, i * MS + MS // 2)
    assert Coverage.of(spans(early.entries.values(), 0), win).missed(False)


def test_a_client_held_by_its_own_lost_requests_is_measured_not_missed() -> None:
    """Recorded in CI beside a CPU hog (naive under link-flap clients-first): 105 requests,
    91 done before the flap, 14 crossed it, 4 of those never completed, and the closed-loop
    application, waiting on them, handed nothing over after the flap. That is the client
    not recovering (its row is bad for the 4 lost), not a workload that ran dry. The
    control: the same run with those 4 completed and nothing after is still a miss."""
    win = FaultWindow(10 * S, 11 * S, 10 * S + 100 * MS, 11 * S)
    before = [Span(i * 100 * MS, i * 100 * MS + 5 * MS) for i in range(91)]
    crossed_done = [Span(10 * S + i * MS, 10 * S + i * MS + 2 * MS) for i in range(10)]
    stuck = [Span(10 * S + 50 * MS + i * MS, None) for i in range(4)]
    cov = Coverage.of(before + crossed_done + stuck, win)
    assert (cov.requests, cov.before, cov.crossed, cov.after, cov.unfinished) == \
        (105, 91, 14, 0, 4)
    assert cov.missed(require_after=True) == []
    assert Coverage.from_json(cov.to_json()) == cov
    finished = [Span(s.start_ns, s.start_ns + 3 * MS) for s in stuck]
    control = Coverage.of(before + crossed_done + finished, win)
    assert control.unfinished == 0
    assert "recovery was not measured" in control.missed(require_after=True)[0]
    # files written before the field existed read as 0
    old = {k: v for k, v in cov.to_json().items() if k != "unfinished"}
    assert Coverage.from_json(old).unfinished == 0

"""The accounting's own negative controls, pure logic: an extra completion the worker
cannot place, a request dropped from the ledger a worker hands back (found by its
journal, and by the peer's arrivals), and the rows they make (broken). The same controls
on real rxe: tests/rxe/test_negative_controls.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from clients.userspace.connection import Conn
from clients.userspace.io_path import ClientIoPath
from harness.rdma.payload import GOODBYE_SEQ
from harness.run.matrix import rows_of
from harness.run.records import ScenarioRecord
from harness.run.resultsfile import RecordKind, read_results
from harness.run.rows import RowStatus
from harness.workload.journal import journal_run, note_line, restore_dropped
from harness.workload.ledger import Ledger, apply_peer_view
from harness.workload.spec import Op, WorkloadSpec

DATA = Path(__file__).parents[2] / "data" / "matrix-standby-linkflap.jsonl"
SPEC = WorkloadSpec(count=8, ops=(Op.SEND,), sizes=(64,), queue_depth=2)


def _wc(wr_id: int, status: int = 0) -> SimpleNamespace:
    return SimpleNamespace(wr_id=wr_id, status=status, vendor_err=0)


def test_an_extra_completion_is_counted_not_dropped() -> None:
    """A completion whose wr_id names no request in flight (its slot is free: the request
    already completed, or was never posted) is counted and noted; the goodbye's (wr_id 0)
    is not one. Before, both were dropped without a word."""
    io = ClientIoPath(SPEC, None)
    conn = Conn(0, 1, None, 0, None, free_slots=[], slot_req=[4, -1])
    conn.n_inflight = 1
    io.ledger.posted(4, 1, 100)
    io._complete(conn, _wc(1))  # request 4's completion: its outcome
    assert io.ledger.outcome[4] and io.metrics.extra_completions == 0
    io._complete(conn, _wc(0))  # the goodbye
    assert io.metrics.extra_completions == 0
    io._complete(conn, _wc(1))  # the same slot again: nothing of ours is there now
    io._complete(conn, _wc(2))  # a slot never used
    io._complete(conn, _wc(99))  # no such slot
    assert io.metrics.extra_completions == 3
    assert [e["event"] for e in io.events] == ["extra completion"] * 3
    assert io.events[0]["wr_id"] == 1 and io.events[0]["status"] == "SUCCESS"
    assert io.ledger.counts() == {"completed-ok": 1, "unaccounted": SPEC.count - 1}


def _journal() -> str:
    return "".join([note_line(1, "go", {"t0_ns": 1, "arrivals": "closed"}),
                    journal_run(2, True, [0, 1, 2, 3], 1),
                    journal_run(3, False, [0, 1, 2, 3], 1)])


def _handed_back(drop: int | None = None) -> Ledger:
    led = Ledger([r for r in SPEC.requests() if r.req_id < 4 and r.req_id != drop])
    for i in led.entries:
        led.posted(i, 1, 2)
        led.completed(i, "SUCCESS", 0, 3)
    return led


def test_a_request_dropped_from_the_ledger_is_found_by_the_journal() -> None:
    """The journal (written ahead of each post) shows requests 0-3 issued; the ledger
    handed back lacks request 2: it is put back without an outcome, so it is unaccounted
    and named. A ledger that has them all is left as it was."""
    whole = _handed_back()
    assert restore_dropped(whole, _journal(), SPEC) == [] and not whole.unaccounted()
    led = _handed_back(drop=2)
    assert restore_dropped(led, _journal(), SPEC) == [2]
    assert led.unaccounted() == [2] and list(led.entries) == [0, 1, 2, 3]
    assert led.counts() == {"completed-ok": 3, "unaccounted": 1}
    assert "missing from the ledger" in led.entries[2].reason


def test_a_request_dropped_from_the_ledger_is_found_by_the_peer() -> None:
    """The peer received requests 0-3 intact (seq = request + 1) and the client's
    goodbye; the ledger lacks request 2: apply_peer_view names it. A damaged arrival
    names no request (its header may be garbage)."""
    arrivals = [{"seq": i + 1, "ok": True} for i in range(4)] + [
        {"seq": GOODBYE_SEQ, "ok": True}, {"seq": 77, "ok": False}]
    assert apply_peer_view(_handed_back(), arrivals) == []
    led = _handed_back(drop=2)
    assert apply_peer_view(led, arrivals) == [2]
    assert {e.peer.value for e in led.entries.values()} == {"delivered-once"}


def _recorded_clean_row() -> tuple[ScenarioRecord, dict]:
    res = read_results(DATA)
    for scen in res.of_kind(RecordKind.SCENARIO):
        rec = ScenarioRecord.from_json(scen)
        assert rec.result is not None
        for i, row in enumerate(rows_of(rec.scenario, rec.result)):
            if row.status is RowStatus.CLEAN:
                return rec, {"scen": scen, "client": i}
    raise AssertionError("the recorded run has no clean row")


def test_recorded_clean_row_turns_broken_by_an_extra_completion_or_a_dropped_entry() -> None:
    """A clean row of a recorded matrix run, with the worker's count of extra completions
    set to 1, or with one of its requests unaccounted (what restore_dropped and the peer's
    view leave): broken, saying why."""
    _, where = _recorded_clean_row()
    for change, finding in ((lambda c: c["metrics"].update(extra_completions=1),
                             "1 completions matched no request in flight"),
                            (lambda c: c.update(unaccounted=[5]), "1 requests unaccounted")):
        result = json.loads(json.dumps(where["scen"]["result"]))
        change(result["clients"][where["client"]])
        rec = ScenarioRecord.from_json({**where["scen"], "result": result})
        assert rec.result is not None
        row = rows_of(rec.scenario, rec.result)[where["client"]]
        assert row.status is RowStatus.BROKEN and finding in row.findings, row.findings


# --- the verbs tracer's ledger, on recorded logs (tests/data/trace) -------------------------

TRACE = Path(__file__).parents[2] / "data" / "trace"
REC_SIZE = 64


def _recorded_pair(scenario: str) -> tuple[bytes, bytes]:
    """(client log, server log) of a recorded clean run, as the tracer wrote them."""
    import gzip

    from harness.workload.tracelog import parse

    logs = [gzip.decompress(p.read_bytes()) for p in sorted((TRACE / scenario).glob("*.gz"))]
    client = [d for d in logs if "198.18.0.2" in parse(d).cmdline]
    assert len(logs) == 2 and len(client) == 1, scenario
    return client[0], next(d for d in logs if d is not client[0])


def _offsets(data: bytes, rtype: int) -> list[int]:
    import struct

    return [off for off in range(REC_SIZE, len(data) - len(data) % REC_SIZE, REC_SIZE)
            if struct.unpack_from("<I", data, off)[0] == rtype]


def _row(client: bytes, server: bytes) -> object:
    """The outside program's row from the two logs, as harness.run.outside makes it."""
    from harness.run.records import ScenarioKey
    from harness.workload.traced_ledger import build_ledger
    from harness.workload.traced_peer import match_peer
    from harness.workload.tracelog import parse
    from tests.helpers.outside_results import outside_result

    led, peer = build_ledger(parse(client)), build_ledger(parse(server))
    ms = match_peer(led, peer)
    res = outside_result(
        program="cmd:ibv_rc_pingpong", counts=dict(led.counts()),
        peer_counts={"delivered-once": sum(m.delivered_once for m in ms),
                     "missing": sum(m.missing for m in ms),
                     "duplicated": sum(m.duplicated for m in ms)},
        unaccounted=len(led.unaccounted()),
        unmatched_completions=len(led.unmatched_completions()),
        posted_after_error=led.posted_after_error())
    (row,) = res.rows(ScenarioKey("link-flap", "hca-first", ("cmd:ibv_rc_pingpong",),
                                  "program", "x"))
    return row


def test_recorded_trace_an_extra_or_a_dropped_record_makes_the_row_broken() -> None:
    """A recorded clean ibv_rc_pingpong run (both ends traced): its row is clean. The
    same client log with one completion record written twice (an extra completion), or
    with one SEND's post record missing (a dropped ledger entry): the completion no
    request explains is found and the row is broken; with the post dropped the traced
    server also received one SEND more than the client posted."""
    from harness.workload.tracelog import RecType

    client, server = _recorded_pair("pingpong-clean")
    assert _row(client, server).status is RowStatus.CLEAN
    comp = _offsets(client, RecType.COMPLETION)[10]
    extra = client[:comp + REC_SIZE] + client[comp:]
    row = _row(extra, server)
    assert row.status is RowStatus.BROKEN, row.findings
    assert row.findings == ["1 completions matched no request"], row.findings
    post = _offsets(client, RecType.POST_SEND)[10]
    dropped = client[:post] + client[post + REC_SIZE:]
    row = _row(dropped, server)
    assert row.status is RowStatus.BROKEN, row.findings
    assert "1 completions matched no request" in row.findings, row.findings
    assert row.peer["duplicated"] == 1, row.peer

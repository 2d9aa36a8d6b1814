"""The tracer's log reader and the traced ledger, on logs recorded from real runs under
the tracer (tests/data/trace/SCENARIO/*.bin.gz, captured by tests/rxe/test_tracer.py in the
guest: rxe0 <-> rxe1, kernel 6.1, rdma-core 44, perftest 4.5; gzipped, and the killed
process's logs trimmed at their first unfinished record), and on edits of them (cut,
zeroed, extra records appended in the tracer's own record layout) for the cases a clean
run does not show."""

from __future__ import annotations

import errno
import gzip
import struct
from pathlib import Path

import pytest

from harness.workload.ledger import Outcome, PeerView
from harness.workload.traced_ledger import build_ledger
from harness.workload.traced_peer import match_peer
from harness.workload.traced_types import EndedBy, FindingKind
from harness.workload.tracelog import (
    REC_SIZE,
    PostKind,
    RecType,
    TraceLog,
    TraceLogError,
    WrOpcode,
    log_paths,
    parse,
    read_log,
)

TRACE = Path(__file__).parents[2] / "data" / "trace"
REC = struct.Struct("<IIQQQIIiIIIQ")


def recorded(scenario: str) -> list[tuple[str, bytes]]:
    return [(p.name, gzip.decompress(p.read_bytes()))
            for p in sorted((TRACE / scenario).glob("*.bin.gz"))]


def logs(scenario: str) -> list[TraceLog]:
    return [parse(data, name) for name, data in recorded(scenario)]


def by_role(scenario: str) -> tuple[TraceLog, TraceLog]:
    """(server, client): the client is the one given the peer's address."""
    found = logs(scenario)
    assert len(found) == 2, [lg.name for lg in found]
    client = [lg for lg in found if "198.18.0.2" in lg.cmdline]
    server = [lg for lg in found if lg not in client]
    return server[0], client[0]


def rec(rtype: RecType, qp_num: int = 0, t_ns: int = 0, obj: int = 0, wr_id: int = 0,
        opcode: int = 0, length: int = 0, result: int = 0, flags: int = 0, aux: int = 0,
        aux2: int = 0) -> bytes:
    return REC.pack(int(rtype), qp_num, t_ns, obj, wr_id, opcode, length, result, flags, 0,
                    aux, aux2)


def without_end(data: bytes) -> bytes:
    """The records up to (not including) END and what follows it."""
    for off in range(REC_SIZE, len(data), REC_SIZE):
        if struct.unpack_from("<I", data, off)[0] in (0, RecType.END):
            return data[:off]
    return data


def end_record() -> bytes:
    return rec(RecType.END, wr_id=1)


def client_bytes(scenario: str) -> tuple[bytes, TraceLog]:
    _, client = by_role(scenario)
    return dict(recorded(scenario))[client.name], client


def test_clean_send_bw_reused_wr_ids_all_completed() -> None:
    """ib_send_bw -n 300: perftest gives every WR of its QP the same wr_id and signals
    one in 100 (CQ moderation): 300 SENDs, each completed-ok, most through the next
    signalled completion; the server received each once."""
    server, client = by_role("send_bw-clean")
    assert client.closed and server.closed and client.cmdline[0] == "ib_send_bw"
    led = build_ledger(client)
    sends = led.sends()
    assert len(sends) == 300 and len({r.wr_id for r in sends}) < 300
    assert {r.outcome for r in sends} == {Outcome.COMPLETED_OK}
    assert {r.ended_by for r in sends} == {EndedBy.COMPLETION, EndedBy.LATER_COMPLETION}
    assert not led.unmatched_completions() and not led.unaccounted()
    (m,) = match_peer(led, build_ledger(server))
    assert (m.sent, m.delivered_once, m.missing, m.duplicated) == (300, 300, 0, 0)
    assert {r.peer for r in sends} == {PeerView.DELIVERED_ONCE}


def test_clean_pingpong_both_ways() -> None:
    server, client = by_role("pingpong-clean")
    cl, sv = build_ledger(client), build_ledger(server)
    for led in (cl, sv):
        assert led.devices and not led.unaccounted() and not led.unmatched_completions()
        assert {r.outcome for r in led.sends()} == {Outcome.COMPLETED_OK}
    (a,), (b,) = match_peer(cl, sv), match_peer(sv, cl)
    assert a.delivered_once == a.sent == len(cl.sends()) > 0 and a.missing == 0
    assert b.delivered_once == b.sent == len(sv.sends()) > 0 and b.missing == 0
    # the receive buffers pingpong left posted at its exit: lost, by the exit
    left = [r for r in cl.receives() if r.outcome is Outcome.LOST]
    assert left and {r.ended_by for r in left} <= {EndedBy.PROGRAM_EXITED,
                                                    EndedBy.QP_DESTROYED}


def test_write_bw_not_visible_to_peer() -> None:
    server, client = by_role("write_bw-clean")
    led = build_ledger(client)
    assert {r.opcode for r in led.sends()} == {WrOpcode.RDMA_WRITE}
    (m,) = match_peer(led, build_ledger(server))
    assert m.sent == 0 and {r.peer for r in led.sends()} == {PeerView.NOT_VISIBLE}


def test_killed_process_log_read_to_last_record() -> None:
    """The client the shim terminated: no END, zeros after its last record (the tracer's
    mapping is not trimmed); every request accounted, the in-flight ones lost by the
    log's end."""
    _, client = by_role("send_bw-forced")
    assert not client.closed
    led = build_ledger(client)
    assert not led.unaccounted()
    lost = [r for r in led.sends() if r.outcome is Outcome.LOST]
    assert lost and {r.ended_by for r in lost} == {EndedBy.LOG_ENDED}
    assert FindingKind.LOG_NOT_CLOSED in {f.what for f in led.findings}


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.9])
def test_cut_log_still_accounts(cut: float) -> None:
    """A log cut anywhere (even mid-record) reads up to the last whole record, and every
    request it shows gets an outcome."""
    data, _ = client_bytes("send_bw-clean")
    led = build_ledger(parse(data[:int(len(data) * cut)], "cut"))
    assert not led.closed and not led.unaccounted() and led.requests


def test_unfinished_record_stops_the_reader() -> None:
    data, full = client_bytes("send_bw-clean")
    at = REC_SIZE * (len(full.records) // 2)
    cut = bytearray(data)
    cut[at:at + 4] = b"\0\0\0\0"
    assert len(parse(bytes(cut)).records) < len(full.records)


def test_not_a_log() -> None:
    data, _ = client_bytes("send_bw-clean")
    with pytest.raises(TraceLogError, match="magic"):
        parse(b"X" * 8 + data[8:])
    with pytest.raises(TraceLogError, match="version"):
        parse(data[:8] + struct.pack("<I", 99) + data[12:])
    with pytest.raises(TraceLogError, match="header"):
        parse(data[:10])


def test_read_log_refuses_symlink(tmp_path: Path) -> None:
    data, _ = client_bytes("send_bw-clean")
    real = tmp_path / "rxe-power-trace.1.bin"
    real.write_bytes(data)
    link = tmp_path / "rxe-power-trace.2.bin"
    link.symlink_to(real)
    with pytest.raises(TraceLogError, match=f"errno {errno.ELOOP}"):
        read_log(link)
    assert log_paths(tmp_path) == [real, link]


def _qp_of(log: TraceLog) -> int:
    return next(r.qp_num for r in log.records if r.type is RecType.QP_CREATE)


def test_failed_chain_rejected_from_bad_wr() -> None:
    """A chain of 3 posted in one call, bad_wr at the second: the first was posted (and,
    never completed, is lost at the exit); the second and third are rejected-at-post."""
    data, log = client_bytes("send_bw-clean")
    qp = _qp_of(log)
    extra = b"".join(rec(RecType.POST_SEND, qp, obj=10**9, wr_id=7, opcode=WrOpcode.SEND,
                         length=64, flags=1, aux=i) for i in range(3))
    extra += rec(RecType.POST_FAIL, qp, obj=10**9, result=errno.ENOMEM, aux=1,
                 opcode=PostKind.SEND)
    led = build_ledger(parse(without_end(data) + extra + end_record()))
    tail = led.sends()[-3:]
    assert [r.outcome for r in tail] == [Outcome.LOST, Outcome.REJECTED_AT_POST,
                                         Outcome.REJECTED_AT_POST]
    assert tail[1].errno == errno.ENOMEM and tail[0].ended_by is EndedBy.PROGRAM_EXITED


def test_wr_complete_failure_rejects_whole_batch() -> None:
    data, log = client_bytes("send_bw-clean")
    qp = _qp_of(log)
    extra = b"".join(rec(RecType.POST_SEND, qp, obj=10**9, wr_id=i, opcode=WrOpcode.SEND,
                         flags=0x11, aux=i) for i in range(2))
    extra += rec(RecType.POST_FAIL, qp, obj=10**9, result=errno.EINVAL,
                 opcode=PostKind.WR_COMPLETE)
    led = build_ledger(parse(without_end(data) + extra + end_record()))
    assert {r.outcome for r in led.sends()[-2:]} == {Outcome.REJECTED_AT_POST}
    assert all(r.wr_api for r in led.sends()[-2:])


def test_error_then_flush_and_posting_on() -> None:
    """After the clean run's last completion: unsignalled, signalled (RETRY_EXC_ERR),
    then two more posted on the QP in error (flushed): the unsignalled one completed
    before the error; the error is named; the program is found posting after it."""
    data, log = client_bytes("send_bw-clean")
    qp = _qp_of(log)
    posts = [(1, 0), (2, 1), (3, 1), (4, 1)]  # (wr_id, signalled)
    extra = b"".join(rec(RecType.POST_SEND, qp, obj=10**9 + i, wr_id=w, opcode=WrOpcode.SEND,
                         flags=s) for i, (w, s) in enumerate(posts))
    extra += rec(RecType.COMPLETION, qp, wr_id=2, result=12)  # RETRY_EXC_ERR
    extra += rec(RecType.COMPLETION, qp, wr_id=3, result=5)  # WR_FLUSH_ERR
    extra += rec(RecType.COMPLETION, qp, wr_id=4, result=5)
    led = build_ledger(parse(without_end(data) + extra + end_record()))
    tail = led.sends()[-4:]
    assert [r.outcome for r in tail] == [Outcome.COMPLETED_OK, Outcome.COMPLETED_ERROR,
                                         Outcome.FLUSHED, Outcome.FLUSHED]
    assert tail[1].status == "RETRY_EXC_ERR" and tail[0].ended_by is EndedBy.LATER_COMPLETION
    assert led.posted_after_error() == 0  # posted before the error came back
    extra2 = rec(RecType.POST_SEND, qp, obj=2 * 10**9, wr_id=5, flags=1)
    led2 = build_ledger(parse(without_end(data) + extra + extra2 + end_record()))
    assert led2.posted_after_error() == 1
    assert FindingKind.POSTED_AFTER_ERROR in {f.what for f in led2.findings}


def test_completion_nobody_posted_is_named() -> None:
    data, log = client_bytes("send_bw-clean")
    extra = rec(RecType.COMPLETION, _qp_of(log), wr_id=0xDEAD)
    led = build_ledger(parse(without_end(data) + extra + end_record()))
    assert len(led.unmatched_completions()) == 1


def test_recorded_under_transitions_all_accounted() -> None:
    """Whatever happened to them, every process under a transition has an outcome for
    every request and no completion without its request."""
    for scenario in ("send_bw-link-flap", "notify-standby", "broken-link-flap"):
        for log in logs(scenario):
            led = build_ledger(log)
            assert not led.unaccounted(), scenario
            assert not led.unmatched_completions(), (scenario, led.unmatched_completions())


def test_broken_client_found_posting_after_error() -> None:
    (log,) = logs("broken-link-flap")
    led = build_ledger(log)
    assert led.posted_after_error() > 0
    counts = led.counts()
    assert counts.get(Outcome.FLUSHED.value, 0) + counts.get(Outcome.COMPLETED_ERROR.value,
                                                             0) > 0


def test_notify_client_clean_through_standby() -> None:
    (log,) = logs("notify-standby")
    led = build_ledger(log)
    assert log.closed and len(led.devices) == 4 and led.posted_after_error() == 0
    assert {r.outcome for r in led.sends()} == {Outcome.COMPLETED_OK}


def test_data_logs_are_small() -> None:
    """The committed recordings stay small; each is whole records."""
    total = sum(p.stat().st_size for p in TRACE.rglob("*.bin.gz"))
    assert total < 2 * 1024 * 1024, total
    for scenario in (p.name for p in TRACE.iterdir()):
        assert all(len(data) % REC_SIZE == 0 for _, data in recorded(scenario))


def test_same_qp_number_on_two_devices_is_named() -> None:
    """rxe numbers QPs per device: a process with QP 500 on two devices at once cannot be
    told apart request by request (format 1): the ledger says so instead of guessing."""
    data, _ = client_bytes("send_bw-clean")
    extra = rec(RecType.QP_CREATE, 500, aux2=0x1000) + \
        rec(RecType.POST_SEND, 500, obj=10**9, wr_id=1, flags=1) + \
        rec(RecType.QP_CREATE, 500, aux2=0x2000)
    led = build_ledger(parse(without_end(data) + extra + end_record()))
    assert led.sends()[-1].ended_by is EndedBy.QP_NUM_REUSED
    assert FindingKind.NOT_TRACED in {f.what for f in led.findings}


def test_format_2_tells_same_numbered_qps_apart() -> None:
    """Format 2 names the context in every POST record: QP 17 on two devices (contexts
    0xA and 0xB, CQs 0xCA and 0xCB) at once, each with its own request and completion,
    are two QPs in the ledger, each request completed by its own device's completion."""
    header = struct.pack("<8sIIIIQQ16sQ", b"RXPTRACE", 2, REC_SIZE, 42, 1, 0, 0, b"t", 0)
    body = b"".join([
        rec(RecType.CQ_CREATE, obj=0xCA, aux2=0xA), rec(RecType.CQ_CREATE, obj=0xCB, aux2=0xB),
        rec(RecType.QP_CREATE, 17, obj=0x1A, aux2=0xA),
        rec(RecType.QP_CREATE, 17, obj=0x1B, aux2=0xB),
        rec(RecType.QP_MODIFY, 17, obj=0x1A, opcode=2, aux2=17),
        rec(RecType.QP_MODIFY, 17, obj=0x1B, opcode=2, aux2=17),
        rec(RecType.POST_SEND, 17, obj=1, wr_id=5, opcode=WrOpcode.SEND, flags=1, aux2=0xA),
        rec(RecType.POST_RECV, 17, obj=2, wr_id=6, opcode=128, aux2=0xB),
        rec(RecType.COMPLETION, 17, obj=0xCB, wr_id=6, opcode=128, length=64),
        rec(RecType.COMPLETION, 17, obj=0xCA, wr_id=5, opcode=0),
        end_record()])
    led = build_ledger(parse(header + body))
    assert len(led.qps) == 2 and {q.context for q in led.qps} == {0xA, 0xB}
    assert [r.outcome for r in led.requests] == [Outcome.COMPLETED_OK] * 2
    assert not led.findings
    (m,) = [m for m in match_peer(led, led) if m.sent]
    assert (m.sent, m.delivered_once) == (1, 1)


def test_an_error_completion_is_matched_whatever_its_opcode_says() -> None:
    """A WC's opcode is undefined unless its status is SUCCESS (ibv_poll_cq(3)). Measured
    under link-flap: ibv_rc_pingpong's SEND (its wr_id 2) completed with LOC_QP_OP_ERR and
    an opcode that named a receive, and the ledger called it unmatched (the row broken).
    An error completion is looked for in both of its QP's queues."""
    data, log = client_bytes("pingpong-clean")
    qp = _qp_of(log)
    cq = next(r.obj for r in log.records if r.type is RecType.COMPLETION and r.qp_num == qp)
    send = next(r for r in log.records if r.type is RecType.POST_SEND and r.qp_num == qp)
    cut = next(off for off in range(REC_SIZE, len(data), REC_SIZE)
               if struct.unpack_from("<I", data, off)[0] == RecType.QP_DESTROY)
    extra = rec(RecType.POST_SEND, qp, obj=send.obj, wr_id=2, opcode=WrOpcode.SEND,
                length=4096, flags=1)
    extra += rec(RecType.COMPLETION, qp, obj=cq, wr_id=2, result=2, opcode=128)  # "RECV"
    led = build_ledger(parse(data[:cut] + extra + data[cut:]))
    assert not led.unmatched_completions(), led.unmatched_completions()
    last = led.sends()[-1]
    assert last.outcome is Outcome.COMPLETED_ERROR and last.status == "LOC_QP_OP_ERR"

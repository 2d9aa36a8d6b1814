"""The block ledger: block format, outcome rules, target check, summary (pure logic)."""

from __future__ import annotations

import errno

from harness.workload.block_ledger import (
    HEADER,
    BlockState,
    IoOp,
    IoOutcome,
    IoRecord,
    Window,
    check_block,
    latest_write_per_block,
    make_block,
    outcome,
    summarize,
)

S = 4096
MS = 1_000_000


def rec(seq: int, submit_ms: float, done_ms: float | None, err: int | None = None,
        op: IoOp = IoOp.WRITE, nbytes: int | None = S) -> IoRecord:
    return IoRecord(seq, op, seq, 1, int(submit_ms * MS),
                    None if done_ms is None else int(done_ms * MS),
                    None if err is not None else nbytes, err)


def test_block_round_trip_and_damage() -> None:
    b = make_block(7, 1, 7, S)
    assert len(b) == S
    assert check_block(b, 7, 1, 7) is BlockState.INTACT
    assert check_block(bytes(S), 7, 1, 7) is BlockState.ABSENT
    assert check_block(make_block(8, 1, 8, S), 7, 1, 7) is BlockState.ABSENT
    assert check_block(make_block(7, 2, 7, S), 7, 1, 7) is BlockState.ABSENT
    torn = bytearray(b)
    torn[HEADER.size + 100] ^= 0xFF
    assert check_block(bytes(torn), 7, 1, 7) is BlockState.CORRUPTED
    half = b[:S // 2] + bytes(S // 2)  # the second half never landed
    assert check_block(half, 7, 1, 7) is BlockState.CORRUPTED


def test_patterns_differ_between_writes() -> None:
    assert make_block(1, 1, 1, S)[HEADER.size:] != make_block(2, 1, 1, S)[HEADER.size:]


def test_outcomes() -> None:
    win = Window(1000 * MS, 2000 * MS)
    assert outcome(rec(0, 10, 12), win) is IoOutcome.COMPLETED_OK
    # in flight across the window and slow: it waited for the transition
    assert outcome(rec(1, 900, 2100), win) is IoOutcome.COMPLETED_LATE
    # inside the window but fast: not late
    assert outcome(rec(2, 1001, 1003), win) is IoOutcome.COMPLETED_OK
    # slow but nowhere near the transition: not late either
    assert outcome(rec(3, 3000, 3900), win) is IoOutcome.COMPLETED_OK
    assert outcome(rec(4, 900, 1200, err=errno.EIO), win) is IoOutcome.FAILED_TO_APP
    assert outcome(rec(5, 900, 1200, nbytes=512), win) is IoOutcome.FAILED_TO_APP
    assert outcome(rec(6, 900, None), win) is IoOutcome.STUCK
    assert outcome(rec(1, 900, 2100), None) is IoOutcome.COMPLETED_OK


def test_summary_counts_target_states_and_errnos() -> None:
    win = Window(1000 * MS, 2000 * MS)
    records = [rec(0, 10, 12), rec(1, 900, 2100), rec(2, 950, 1100, err=errno.EIO),
               rec(3, 960, None), rec(4, 20, 25), rec(5, 30, 35),
               IoRecord(6, IoOp.READ, 0, 1, 40 * MS, 41 * MS, S, None, read_ok=False,
                        expect_seq=0)]
    target = {0: BlockState.INTACT, 1: BlockState.INTACT, 4: BlockState.ABSENT,
              5: BlockState.CORRUPTED}
    s = summarize(records, target, win)
    assert s.outcomes == {"completed-ok": 4, "completed-late": 1, "failed-to-app": 1,
                          "stuck": 1}
    assert s.errnos == {"EIO (Input/output error)": 1}
    assert s.acknowledged_writes == 4
    assert s.target == {"intact": 2, "lost": 1, "corrupted": 1}
    assert s.lost_seqs == [4] and s.corrupted_seqs == [5]
    assert s.reads_bad == 1
    assert s.stuck[0]["seq"] == 3
    assert not s.unaccounted and not s.invariant_ok


def test_acknowledged_write_without_target_verdict_is_unaccounted() -> None:
    s = summarize([rec(0, 1, 2), rec(1, 3, 4)], {0: BlockState.INTACT}, None)
    assert s.unaccounted == [1] and not s.invariant_ok


def test_duplicate_seq_is_unaccounted() -> None:
    s = summarize([rec(0, 1, 2), rec(0, 3, 4)], {0: BlockState.INTACT}, None)
    assert s.unaccounted == [0]


def test_clean_summary_holds_the_invariant() -> None:
    records = [rec(i, i, i + 1) for i in range(10)]
    s = summarize(records, {i: BlockState.INTACT for i in range(10)}, None)
    assert s.invariant_ok and s.count(IoOutcome.COMPLETED_OK) == 10


def test_latest_write_per_block_ignores_failed() -> None:
    recs = [rec(0, 1, 2), rec(1, 3, 4, err=errno.EIO)]
    assert set(latest_write_per_block(recs, None)) == {0}


def test_record_json_round_trip() -> None:
    r = rec(3, 1, 2)
    assert IoRecord.from_json(r.to_json()) == r

"""The target's blocks of a recorded kernel-client run (tests/data), as that run read them
on the peer side: for the unit tests that re-derive a recorded row."""

from __future__ import annotations

from typing import Any

from harness.workload.block_ledger import BlockState, IoRecord, Window, acknowledged


def recorded_target(res: dict[str, Any], recs: list[IoRecord],
                    win: Window) -> dict[int, BlockState]:
    """The target's blocks as the run read them on the peer side, from its record: the
    seqs it found lost or corrupted, and for every other acknowledged write the count of
    blocks it read intact. Checked against the records, not assumed: the run read one
    block per acknowledged write re-derived here, and found exactly the rest intact."""
    lg = res["ledger"]
    acked = [x.seq for x in recs if acknowledged(x, win)]
    bad = ({s: BlockState.ABSENT for s in lg["lost_seqs"]}
           | {s: BlockState.CORRUPTED for s in lg["corrupted_seqs"]})
    assert set(bad) <= set(acked), sorted(set(bad) - set(acked))
    assert sum(lg["target"].values()) == len(acked), (lg["target"], len(acked))
    intact = [s for s in acked if s not in bad]
    assert lg["target"].get("intact", 0) == len(intact), (lg["target"], len(intact))
    return {s: BlockState.INTACT for s in intact} | bad

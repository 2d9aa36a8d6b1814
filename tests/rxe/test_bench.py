"""rxe-power bench against real rxe, small: the sections run, every ledger holds, and
the figures are there (their values are the bench's business, not a test's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.run.bench.run import run_bench
from harness.run.bench.spec import BenchSpec

pytestmark = pytest.mark.rxe


@pytest.mark.timeout(400)
def test_bench_smoke(rxe_config, rxe_topology, tmp_path: Path) -> None:
    spec = BenchSpec(sizes=(64,), queue_depth=8, scale=0.02, lat_iters=30, cycles=1,
                     qps=16, qp_workers=2, hold_ms=50, cycle_count=100,
                     sections=("throughput", "cycle", "qps")).validate()
    lines: list[str] = []
    assert run_bench(spec, rxe_config, tmp_path, log=lines.append) == 0, lines
    res = json.loads((tmp_path / "bench.json").read_text())
    rows = res["throughput"]
    # SEND and WRITE at CQ moderation, and SEND with every WR signaled
    assert [(r["op"], r["signal_every"]) for r in rows] == [("SEND", 8), ("SEND", 1),
                                                            ("WRITE", 8)]
    for r in rows:
        assert r["ledger_ok"], r["harness"]
        assert r["perftest"]["msg_per_s"] > 0 and r["harness"]["msg_per_s"] > 0
        assert r["ratio_msg"] == pytest.approx(r["harness"]["msg_per_s"]
                                               / r["perftest"]["msg_per_s"], rel=1e-2)
    assert "latency" not in res  # (its parsing is tested in test_bench_unit; the path is
    # the throughput runs' at queue depth 1)
    cycle = res["cycle"]["cycles"][0]
    assert cycle["verdict"] == "completed" and cycle["ledger_ok"]
    assert {"quiesce", "delete", "recreate", "port_up", "reconnect"} <= set(cycle["parts_ms"])
    qps = res["qps"]
    assert qps["ledger_ok"] and qps["unaccounted"] == 0 and qps["requests"] == 2 * 32
    assert res["load_start"]["nproc"] >= 1 and len(res["load_end"]["loadavg"]) == 3
    assert any("throughput: 1 QP" in line for line in lines)

"""rxe-power bench, pure logic: perftest output parsing (real captured output in
tests/data/perftest, from perftest 4.5 on rxe in the TCG guest), statistics, the
cycle breakdown, targets and option checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import bench_command
from harness.cli.main import build_parser
from harness.core.errors import RxePowerError, SettingError
from harness.run.bench.perftest import BW_COLUMNS, LAT_COLUMNS, PerftestFormatError, parse_perftest
from harness.run.bench.record import targets
from harness.run.bench.series import percentile, spread
from harness.run.bench.spec import MIN_COUNT, BenchSpec
from harness.run.bench.standby_cycle import cycle_parts

PERF = Path(__file__).parents[2] / "data" / "perftest"


@pytest.mark.parametrize("name,size,avg,rate", [
    ("ib_send_bw-64-client.txt", 64, 1.08, 0.017776),
    ("ib_send_bw-64-server.txt", 64, 1.08, 0.017767),
    ("ib_write_bw-64-client.txt", 64, 1.25, 0.020516),
    ("ib_send_bw-4096-client.txt", 4096, 22.12, 0.005663),
    ("ib_write_bw-4096-client.txt", 4096, 24.09, 0.006168),
    ("ib_send_bw-65536-client.txt", 65536, 32.50, 0.000520),
    ("ib_write_bw-65536-client.txt", 65536, 33.50, 0.000536),
])
def test_parse_bw(name: str, size: int, avg: float, rate: float) -> None:
    rows = parse_perftest((PERF / name).read_text(), BW_COLUMNS)
    assert len(rows) == 1
    row = rows[0]
    assert row["#bytes"] == size
    assert row["BW average[MB/sec]"] == avg and row["MsgRate[Mpps]"] == rate
    assert "BW peak[MB/sec]" in row


@pytest.mark.parametrize("name,typical,p99", [
    ("ib_write_lat-64-client.txt", 26.99, 4092.95),  # ends in a "Correlation" warning line
    ("ib_send_lat-64-client.txt", 28.86, 199.39),
    ("ib_send_lat-64-server.txt", 28.86, 200.01),
])
def test_parse_lat(name: str, typical: float, p99: float) -> None:
    row = parse_perftest((PERF / name).read_text(), LAT_COLUMNS)[0]
    assert row["t_typical[usec]"] == typical and row["99% percentile[usec]"] == p99
    assert row["#iterations"] == 2000 and row["99.9% percentile[usec]"] > p99


def test_parse_many_rows_up_to_the_closing_rule() -> None:
    text = (" #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]\n"
            " 2          1000             0.10               0.09   \t\t   0.047000\n"
            " 4          1000             0.20               0.18   \t\t   0.047100\n"
            "----------------------------------------------------------------------\n"
            " 8          5 9 9 9\n")
    rows = parse_perftest(text, BW_COLUMNS)
    assert [r["#bytes"] for r in rows] == [2, 4]


@pytest.mark.parametrize("text,needle", [
    ("Couldn't connect to 198.18.0.2:18515\nUnable to init the socket connection\n",
     "no result table"),
    (" #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]\n"
     "------\n", "no row"),
    (" #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]\n"
     " 64         5000             1.17               1.08\n", "4 values, its header 5"),
    (" #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]\n"
     " 64         5000             n/a               1.08   0.01\n", "not numbers"),
    (" #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]\n"
     " 64      2000          24.32          6214.50      26.99\n", "lacks"),
])
def test_parse_refuses_what_it_does_not_know(text: str, needle: str) -> None:
    with pytest.raises(PerftestFormatError, match=needle):
        parse_perftest(text, LAT_COLUMNS if "t_min" in text else BW_COLUMNS)


def test_percentile_and_spread() -> None:
    xs = [float(x) for x in range(1, 101)]
    assert percentile(xs, 50) == 50.5 and percentile(xs, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert s == {"median": 2.5, "min": 1.0, "max": 10.0, "q1": 1.8, "q3": 4.8, "n": 4}
    assert spread([]) == {}


def _round(t0: int = 10_000_000_000) -> dict:
    ms = 1_000_000
    steps = [("notify-suspend", 0, 80), ("port-down", 81, 150), ("delete-device", 151, 250),
             ("hold", 251, 351), ("create-device", 352, 500), ("port-up", 501, 900),
             ("notify-resume", 901, 1100)]
    return {"ok": True, "transition": {
        "total_ms": 1100.0, "verdict": "completed",
        "steps": [{"step": n, "outcome": "ok", "begin_ns": t0 + b * ms, "end_ns": t0 + e * ms,
                   "ms": float(e - b)} for n, b, e in steps],
        "answers": [{"kind": "released", "answered_ns": t0 + 60 * ms},
                    {"kind": "released", "answered_ns": t0 + 75 * ms},
                    {"kind": "resumed", "answered_ns": t0 + 1050 * ms},
                    {"kind": "resumed", "answered_ns": t0 + 1090 * ms}]},
        "clients": [{"crashed": False, "metrics": {"first_ok_after_resume_ns": t0 + 1120 * ms}},
                    {"crashed": False, "metrics": {"first_ok_after_resume_ns": t0 + 1200 * ms}}]}


def test_cycle_parts() -> None:
    parts = cycle_parts(_round())
    assert parts == {"port_down": 69.0, "delete": 99.0, "hold": 100.0, "recreate": 148.0,
                     "port_up": 399.0, "quiesce": 75.0, "reconnect": 189.0, "first_ok": 299.0,
                     "whole": 1200.0, "shim_total": 1100.0}


def test_cycle_parts_without_a_first_ok_has_no_whole() -> None:
    r = _round()
    r["clients"][1]["metrics"]["first_ok_after_resume_ns"] = None
    parts = cycle_parts(r)
    assert "whole" not in parts and "first_ok" not in parts and parts["quiesce"] == 75.0


def test_targets() -> None:
    res = {"spec": {"queue_depth": 64}, "load_start": {"in_vm": True},
           "throughput": [
               {"size": 64, "op": "SEND", "signal_every": 64, "ratio_mib": 0.5, "ratio_msg": 0.31},
               {"size": 64, "op": "SEND", "signal_every": 1, "ratio_mib": 0.1, "ratio_msg": 0.1},
               {"size": 65536, "op": "SEND", "signal_every": 64, "ratio_mib": 0.79,
                "ratio_msg": 0.79}],
           "cycle": {"summary": {"whole": {"median": 2900.0}}}}
    got = {t["target"]: t["met"] for t in targets(res)}
    assert got == {"harness SEND throughput >= 80% of ib_send_bw at 65536 B": False,
                   "harness SEND message rate >= 30% of ib_send_bw at 64 B": True,
                   "standby cycle (whole, median) under 3 s (emulated VM)": True}


def test_spec_checks() -> None:
    spec = BenchSpec().validate()
    assert spec.count(64) == 20000 and spec.count(4096) == 8000 and spec.count(65536) == 2000
    assert BenchSpec(scale=0.001).validate().count(64) == MIN_COUNT
    tp = spec.throughput_spec("WRITE", 65536)
    assert tp.signal_every == 64 and tp.write_slots == 256 and tp.slot_size == 65536
    assert spec.throughput_spec("SEND", 64, queue_depth=1).signal_every == 1
    qp = spec.qp_spec()
    assert qp.qps == 128 and qp.slot_size == 64 and qp.count == 512
    for bad in (dict(sections=("nope",)), dict(sizes=(0,)), dict(qps=1001, qp_workers=8),
                dict(scale=0), dict(cycles=0), dict(queue_depth=0)):
        with pytest.raises(SettingError):
            BenchSpec(**bad).validate()


def test_cli_options() -> None:
    args = build_parser().parse_args(["bench", "--sizes", "64,4096", "--only", "throughput",
                                      "--only", "latency,cycle", "--scale", "0.1"])
    spec = bench_command.bench_spec(args)
    assert spec.sizes == (64, 4096) and spec.sections == ("throughput", "latency", "cycle")
    args = build_parser().parse_args(["bench", "--sizes", "64,x"])
    with pytest.raises(SettingError, match="--sizes"):
        bench_command.bench_spec(args)


PERFTEST_UNCALIBRATED = """\
Correlation coefficient r^2: 0.613245 < 0.9
---------------------------------------------------------------------------------------
                    Send BW Test
"""


def test_perftest_clock_calibration_failure_is_read_from_its_line() -> None:
    """perftest says r^2 (its %g) when its clock fit fails, and only then; a line that
    merely mentions r^2 elsewhere, or a malformed value, is not taken for a figure."""
    from harness.run.bench import perftest as pt

    assert pt.clock_calibration_r2(PERFTEST_UNCALIBRATED) == pytest.approx(0.613245)
    assert pt.clock_calibration_r2("Correlation coefficient r^2: 1e-05 < 0.9\n") == 1e-05
    assert pt.clock_calibration_r2("x Correlation coefficient r^2: 0.5 < 0.9\n") is None
    assert pt.clock_calibration_r2(" #bytes #iterations BW peak[MB/sec]\n") is None
    bad = pt.clock_calibration_r2("Correlation coefficient r^2: -nan < 0.9\n")
    assert bad is not None and bad != bad  # said, but not a number: nan, still counted


def test_a_perftest_run_reporting_zero_is_run_again_and_counted(monkeypatch) -> None:
    """perftest 4.5 under TCG sometimes completes a bandwidth run and prints 0.00 MB/s
    (seen in the tracer bench and in a CI run of the bench smoke test): such a run is
    run again, at most PERFTEST_ATTEMPTS times in all, and the left-out runs are counted."""
    from harness.run.bench import perftest as pt

    rates = iter([0.0, 0.0, 0.25])
    outputs = iter([])

    def fake(tool, topo, size, iters, qd, bound=None):
        return pt.PerftestRun(tool, size, iters, {pt.RATE_COLUMN: next(rates)}, [tool], 1.0,
                              next(outputs, ""))

    monkeypatch.setattr(pt, "run_perftest", fake)
    run = pt.run_perftest_counted("ib_send_bw", None, 64, 10, 8)
    assert run.figure(pt.RATE_COLUMN) == 0.25 and run.zero_runs == 2 and run.failure is None
    rates = iter([0.0] * pt.PERFTEST_ATTEMPTS)
    # perftest's own line (get_clock.c: "Correlation coefficient r^2: %g < 0.9\n") in all
    # runs but the first
    outputs = iter(["", *[PERFTEST_UNCALIBRATED] * (pt.PERFTEST_ATTEMPTS - 1)])
    run = pt.run_perftest_counted("ib_send_bw", None, 64, 10, 8)
    # every run said 0: no figure, a failed run saying so and how many said why
    assert run.zero_runs == pt.PERFTEST_ATTEMPTS - 1
    assert run.uncalibrated_runs == pt.PERFTEST_ATTEMPTS - 1
    assert run.failure.startswith(f"ib_send_bw reported a message rate of 0 in all "
                                  f"{pt.PERFTEST_ATTEMPTS} runs (PERFTEST_ATTEMPTS); in "
                                  f"{pt.PERFTEST_ATTEMPTS - 1} of them"), run.failure
    with pytest.raises(RxePowerError, match="no figure"):
        run.figure(pt.RATE_COLUMN)
    rates = iter([0.0])
    assert pt.run_perftest_counted("ib_send_lat", None, 64, 10, 1).zero_runs == 0


def test_a_failed_perftest_run_is_not_run_again(monkeypatch) -> None:
    from harness.run.bench import perftest as pt

    calls = []

    def fake(tool, topo, size, iters, qd, bound=None):
        calls.append(tool)
        return pt.PerftestRun(tool, size, iters, {}, [tool], 1.0, "", failure="it broke")

    monkeypatch.setattr(pt, "run_perftest", fake)
    assert pt.run_perftest_counted("ib_send_bw", None, 64, 10, 8).failure == "it broke"
    assert calls == ["ib_send_bw"]

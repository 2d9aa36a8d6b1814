"""rxe-power report: tables, pictures and the HTML summary from results files (pure logic).

Pictures are drawn for two scenarios and one stress run only, to keep the suite fast."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import report
from harness.core.errors import RxePowerError
from harness.core.printer import RecordingPrinter
from harness.report.drawing import timeline_name
from harness.report.section import scenario_rows
from harness.run.records import ScenarioRecord
from harness.run.resultsfile import RecordKind, ResultsWriter
from harness.run.rows import RowStatus
from harness.run.stress_checks import summarize

DATA = Path(__file__).parents[2] / "data"
REAL = DATA / "matrix-standby-linkflap.jsonl"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert('pwned')</script>"


class Log(RecordingPrinter):
    """What the report said (a RecordingPrinter), read as a list of lines and as text."""

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)

    def __getitem__(self, i: int) -> str:
        return self.lines[i]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def real_lines() -> list[str]:
    return REAL.read_text().splitlines()


def write_lines(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + end)
    return path


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


# --- the table -------------------------------------------------------------------------------


def test_table_from_the_real_matrix_file(tmp_path: Path) -> None:
    log = Log()
    assert report.write_report(REAL, tmp_path, out=log, pictures=False) == 0
    sec = report.load_section(REAL, tmp_path, out=Log())
    assert len(sec.scenarios) == 8 and len(sec.rows) == 8
    by = {(r.transition, r.ordering, r.policy): r for r in sec.rows}
    for ordering in ("clients-first", "hca-first"):
        naive = by[("standby", ordering, "naive")]
        assert naive.status is RowStatus.BAD
        assert any("held the device" in f for f in naive.findings)
        assert "terminated" in naive.veto
        for transition in ("standby", "link-flap"):
            graceful = by[(transition, ordering, "graceful")]
            assert graceful.status is RowStatus.CLEAN and not graceful.findings
            assert graceful.counts == {"completed-ok": 120}
    assert by[("link-flap", "clients-first", "naive")].counts["flushed"] == 71
    table = (tmp_path / "table.txt").read_text()
    assert "8 rows: 6 clean, 2 bad" in table
    assert "8 rows: 6 clean, 2 bad" in log.text
    assert "held the device" in log.text
    assert "started 2026-11-22T05:02:46+00:00 on virtme-ng" in log.text
    assert not any(m.startswith("warning") for m in log)
    assert str(tmp_path / "summary.html") in log[-1] and "0 picture(s)" in log[-1]


def test_truncated_file_is_read_up_to_the_cut(tmp_path: Path) -> None:
    lines = real_lines()
    cut = write_lines(tmp_path / "cut.jsonl", [*lines[:4], lines[4][: len(lines[4]) // 2]],
                      end="")
    log = Log()
    assert report.write_report(cut, tmp_path / "out", out=log, pictures=False) == 0
    warnings = [m for m in log if m.startswith("warning")]
    assert len(warnings) == 1
    assert "line 5" in warnings[0] and "cut short" in warnings[0]
    sec = report.load_section(cut, tmp_path, out=Log())
    assert [r.scenario for r in sec.rows] == [json.loads(x)["scenario"]["id"]
                                              for x in lines[1:4]]
    assert "3 rows:" in (tmp_path / "out" / "table.txt").read_text()
    html = (tmp_path / "out" / "summary.html").read_text()
    assert "line 5" in html and "cut short" in html


def test_corrupt_line_in_the_middle(tmp_path: Path) -> None:
    lines = real_lines()
    bad = write_lines(tmp_path / "bad.jsonl",
                      [*lines[:3], '{"schema": 1, "kind": "scen', *lines[4:]])
    log = Log()
    assert report.write_report(bad, tmp_path / "out", out=log, pictures=False) == 0
    assert any("line 4 is corrupt" in m for m in log if m.startswith("warning"))
    assert "2 rows:" in log.text


def test_foreign_schema_is_an_error_with_the_fix(tmp_path: Path) -> None:
    lines = real_lines()
    header = json.loads(lines[0])
    header["schema"] = 42  # neither 1 nor 2
    path = write_lines(tmp_path / "foreign.jsonl", [json.dumps(header), *lines[1:3]])
    with pytest.raises(RxePowerError) as exc:
        report.write_report(path, tmp_path / "out", out=Log(), pictures=False)
    assert "line 1 has results schema 42" in exc.value.problem
    assert "rxe-power version that wrote it" in exc.value.fix


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RxePowerError, match="holds no results records"):
        report.write_report(empty, tmp_path / "out", out=Log())
    with pytest.raises(RxePowerError, match="cannot read results file"):
        report.write_report(tmp_path / "nope.jsonl", tmp_path / "out", out=Log())
    assert not (tmp_path / "out" / "summary.html").exists()


def test_header_only_has_no_usable_records(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "h.jsonl", real_lines()[:1])
    log = Log()
    assert report.write_report(path, tmp_path / "out", out=log) == report.NO_RECORDS_EXIT
    assert "no usable records" in log.text and "fix:" in log.text
    assert not (tmp_path / "out" / "summary.html").exists()


def test_error_record_uses_its_stored_rows(tmp_path: Path) -> None:
    rec = json.loads(real_lines()[2])
    del rec["result"]
    rec["error"] = "interrupted (Ctrl-C)"
    rec["rows"][0]["findings"] = ["harness error: interrupted (Ctrl-C)"]
    rec["rows"][0]["status"] = "broken"
    rows = scenario_rows(ScenarioRecord.from_json(rec))
    assert [(r.policy, r.status) for r in rows] == [("naive", RowStatus.BROKEN)]
    del rec["rows"]
    rows = scenario_rows(ScenarioRecord.from_json(rec))
    assert rows[0].status is RowStatus.BROKEN and "interrupted" in rows[0].findings[0]


# --- pictures --------------------------------------------------------------------------------


def test_timeline_pictures_are_valid_pngs(tmp_path: Path) -> None:
    lines = real_lines()
    two = write_lines(tmp_path / "two.jsonl", lines[:3])  # standby clients-first: both policies
    log = Log()
    assert report.write_report(two, tmp_path / "out", out=log) == 0
    pics = sorted((tmp_path / "out" / "timelines").iterdir())
    assert [p.name for p in pics] == ["001-standby-clients-first-graceful-mixed.png",
                                      "002-standby-clients-first-naive-mixed.png"]
    for p in pics:
        w, h = png_size(p)
        assert 1300 <= w <= 1500 and 700 <= h <= 1100
        assert p.stat().st_size > 30_000  # a drawing, not a blank canvas
    assert "2 picture(s)" in log[-1]
    html = (tmp_path / "out" / "summary.html").read_text()
    assert 'src="timelines/001-standby-clients-first-graceful-mixed.png"' in html


def test_no_matplotlib_skips_pictures_with_the_fix(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    path = write_lines(tmp_path / "one.jsonl", real_lines()[:2])
    log = Log()
    assert report.write_report(path, tmp_path / "out", out=log) == 0
    assert any("pip install matplotlib" in m for m in log if m.startswith("warning"))
    assert (tmp_path / "out" / "summary.html").exists()
    assert not (tmp_path / "out" / "timelines").exists()


def test_timeline_name() -> None:
    rec = {"index": 7, "scenario": {"transition": "link-flap", "ordering": "hca-first",
                                    "policies": ["naive", "my.mod:Class"], "mix": "mixed"}}
    assert timeline_name(ScenarioRecord.from_json(rec), 1) == \
        "007-link-flap-hca-first-naive+my.mod_Class-mixed.png"


# --- HTML --------------------------------------------------------------------------------------


def hostile_file(tmp_path: Path) -> Path:
    lines = real_lines()
    header = json.loads(lines[0])
    header["host"]["node"] = HOSTILE
    crashed = json.loads(lines[2])  # the naive worker the shim terminated
    crashed["result"]["clients"][0]["crash"] = f"worker died: {HOSTILE}"
    crashed["scenario"]["id"] += HOSTILE
    err = json.loads(lines[3])
    del err["result"]
    err["error"] = f"harness error {HOSTILE}"
    err["rows"] = []
    return write_lines(tmp_path / "hostile" / "results.jsonl",
                       [json.dumps(header), lines[1], json.dumps(crashed), json.dumps(err)])


def test_html_has_every_scenario_and_escapes_the_file(tmp_path: Path) -> None:
    assert report.write_report(REAL, tmp_path / "real", out=Log(), pictures=False) == 0
    html = (tmp_path / "real" / "summary.html").read_text()
    for line in real_lines()[1:9]:
        assert json.loads(line)["scenario"]["id"] in html
    assert 'class="bad">bad<' in html and 'class="clean">clean<' in html
    assert "held the device" in html and "<script" not in html

    path = hostile_file(tmp_path)
    log = Log()
    assert report.write_report(path, tmp_path / "out", out=log, pictures=False) == 0
    html = (tmp_path / "out" / "summary.html").read_text()
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;") >= 3
    sec = report.load_section(path, tmp_path, out=Log())
    assert [r.status for r in sec.rows] == [RowStatus.CLEAN, RowStatus.BROKEN, RowStatus.BROKEN]
    assert HOSTILE in sec.rows[1].findings[0]


def test_summary_of_a_folder_has_one_section_per_file(tmp_path: Path) -> None:
    lines = real_lines()
    write_lines(tmp_path / "runs" / "m1" / "results.jsonl", lines[:2])
    write_lines(tmp_path / "runs" / "m2" / "results.jsonl", [lines[0], lines[5]])
    stress_file(tmp_path / "runs" / "s1" / "results.jsonl")
    log = Log()
    assert report.write_report(tmp_path / "runs", tmp_path / "out", out=log, pictures=False) == 0
    html = (tmp_path / "out" / "summary.html").read_text()
    assert html.count("<h2 ") == 4  # the two matrix files merged, then a section per file
    assert html.count('<h2 id="merged">') == 1 and html.count('<h2 id="s') == 3
    for sub in ("m1", "m2", "s1"):
        assert (tmp_path / "out" / "runs" / sub / "table.txt").exists()
    assert "standby/clients-first/graceful/mixed" in html
    assert "link-flap/clients-first/graceful/mixed" in html
    assert "3 cycles, 1 failed" in html
    out = report.write_summary([tmp_path / "runs" / "m1" / "results.jsonl",
                                tmp_path / "runs" / "s1" / "results.jsonl"],
                               tmp_path / "two.html", out=Log())
    assert out == tmp_path / "two.html" and out.read_text().count("<h2 ") == 2
    (tmp_path / "void").mkdir()
    with pytest.raises(RxePowerError, match=r"no results\.jsonl under"):
        report.write_report(tmp_path / "void", tmp_path / "o2", out=Log())


# --- stress --------------------------------------------------------------------------------------

NAMES = ("fail-fast-0", "graceful-1")


def cycle_body(n: int, ok: bool = True, rss_step: int = 0) -> dict:
    usage = {name: {"fds": 12, "rss_kb": 20000 + n * rss_step, "threads": 1} for name in NAMES}
    usage["controller"] = {"fds": 20 + (0 if ok else 3), "rss_kb": 26000, "threads": 2}
    failures = [] if ok else [f"controller: 23 open fds, 20 after cycle 1 (slack 2) {HOSTILE}"]
    return {"cycle": n, "ok": ok, "failures": failures, "notes": [], "seconds": 6.5 + n / 10,
            "verdict": "completed", "transition_ms": 2200.0 + 10 * n,
            "clients": [{"client": c, "policy": c.rsplit("-", 1)[0],
                         "counts": {"completed-ok": 60}, "unaccounted": 0, "ended": "completed",
                         "crash": "", "recovery_ms": 60.0 + n} for c in NAMES],
            "usage": usage,
            "rdma_res": {"rxe0": {"qp": 4, "cq": 4, "mr": 3, "pd": 4},
                         "rxe1": {"qp": 1, "cq": 1, "mr": 0, "pd": 2}},
            "kernel_hits": []}


def stress_file(path: Path, summary: bool = True) -> Path:
    spec = {"cycles": 3, "transition": "standby", "ordering": None, "policies": ["fail-fast",
            "graceful"], "mix": "mixed", "count": 60, "rate_per_s": 60.0, "queue_depth": 4,
            "hold_ms": 100, "on_veto": "force", "maxfail": 0, "keep_ledgers": False}
    bodies = [cycle_body(1, rss_step=100), cycle_body(2, False, 100), cycle_body(3, rss_step=100)]
    with ResultsWriter(path, "stress", spec, provenance=None) as out:
        for b in bodies:
            out.write(RecordKind.CYCLE, b)
        if summary:
            series: dict[str, list[float]] = {}
            for b in bodies:
                for name, u in b["usage"].items():
                    for k, v in u.items():
                        series.setdefault(f"{name}.{k}", []).append(v)
                series.setdefault("transition_ms", []).append(b["transition_ms"])
            out.write(RecordKind.SUMMARY, {"cycles": 3, "failed": 1, "interrupted": False,
                                           "trends": summarize(series)})
    return path


def test_stress_table_picture_and_html(tmp_path: Path) -> None:
    path = stress_file(tmp_path / "s" / "results.jsonl")
    log = Log()
    assert report.write_report(path, tmp_path / "out", out=log) == 0
    table = (tmp_path / "out" / "table.txt").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("provenance: not recorded")  # made by hand, without one
    lines = lines[lines.index("") + 1:]
    assert lines[2].split()[:3] == ["1", "ok", "completed"]
    assert lines[3].split()[:3] == ["2", "FAILED", "completed"]
    assert "120 requests: 120 ok" in lines[2]
    assert "failed cycles:" in table and "cycle 2: controller: 23 open fds" in table
    assert "3 cycles, 1 failed" in table
    rss = next(x for x in lines if x.startswith("fail-fast-0.rss_kb")).split()
    assert rss[1:] == ["20100", "20300", "20300", "100"]  # first, last, max, slope per cycle
    w, h = png_size(tmp_path / "out" / "stress.png")
    assert w == 1400 and h == 950 and (tmp_path / "out" / "stress.png").stat().st_size > 30_000
    html = (tmp_path / "out" / "summary.html").read_text()
    assert 'src="stress.png"' in html and "FAILED" in html and "<script" not in html
    assert "1 picture(s)" in log[-1]


def test_stress_without_summary_computes_the_trends(tmp_path: Path) -> None:
    path = stress_file(tmp_path / "results.jsonl", summary=False)
    log = Log()
    assert report.write_report(path, tmp_path / "out", out=log, pictures=False) == 0
    assert "no summary record" in log.text
    assert "3 cycles, 1 failed" in log.text
    trend = next(x for x in log.text.splitlines() if x.startswith("rxe0.qp")).split()
    assert trend[1:] == ["4", "4", "4", "0"]

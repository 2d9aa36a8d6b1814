"""Issue 17 #12 and #15: the report and the JUnit XML survive hostile or broken input."""

from __future__ import annotations

# --- issue 17 #15: JUnit XML always parses ----------------------------------------------


def test_junit_xml_parses_with_control_characters_in_findings_and_veto() -> None:
    import xml.etree.ElementTree as ET

    from harness.run.matrix import Row, RowStatus, junit_xml
    nasty = "holder pid 7 (evil\x1b[31m\x00\x07\x0b\x0c\ud800\ufffe cmd)"
    rows = [Row(scenario="standby/clients-first/naive/mix\x01", transition="standby\x02",
                ordering="clients-first", policy="naive\x1f", mix="mixed", verdict="forced\x7f",
                veto=nasty, findings=[f"held the device: {nasty}", "second\x08"],
                status=RowStatus.BAD)]
    suite = ET.fromstring(junit_xml(rows, {}))
    failure = suite.find("testcase/failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert "held the device: holder pid 7 (evil" in message
    assert "\\x1b" in message and "\\x00" in message  # shown, not dropped silently
    assert suite.find("testcase").get("name") == "naive\\x1f[mixed]"  # type: ignore[union-attr]


# --- issue 17 #12: report robustness ------------------------------------------------------

import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from harness.cli import main as cli_main  # noqa: E402
from harness.core.errors import RxePowerError  # noqa: E402
from harness.core.printer import NULL  # noqa: E402
from harness.report.command import write_report  # noqa: E402
from harness.report.html_summary import summary_html  # noqa: E402
from harness.report.section import section_of  # noqa: E402
from harness.report.tables import header_line, table_lines  # noqa: E402
from harness.run import resultsfile  # noqa: E402
from harness.run.matrix import render_table  # noqa: E402
from harness.run.resultsfile import Results, read_results  # noqa: E402

DATA = Path(__file__).parents[2] / "data"
REPORT_DEV_ZERO_TIMEOUT_S = 5.0  # what "quickly" means for `report /dev/zero`


def test_report_of_dev_zero_is_a_clear_error_quickly(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(RxePowerError, match=r"not a regular file(.|\n)*fix: "):
        write_report(Path("/dev/zero"), tmp_path / "out", out=NULL)
    assert time.monotonic() - t0 < REPORT_DEV_ZERO_TIMEOUT_S


def test_a_line_over_the_cap_stops_reading_in_bounded_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resultsfile, "MAX_LINE_BYTES", 1 << 20)
    good = (DATA / "matrix-standby-linkflap.jsonl").read_bytes().splitlines(keepends=True)[:2]
    path = tmp_path / "results.jsonl"
    with open(path, "wb") as fh:
        fh.write(b"".join(good))
        fh.truncate(len(b"".join(good)) + (64 << 20))  # then 64 MiB of zeros (sparse)
    tracemalloc.start()
    try:
        res = read_results(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "over MAX_LINE_BYTES=1048576 bytes" in res.problem
    assert len(res.records) == 1 and res.header is not None
    assert peak < 16 << 20


def test_report_out_an_existing_file_is_a_clear_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(RxePowerError, match=r"existing file(.|\n)*fix: "):
        write_report(DATA / "matrix-standby-linkflap.jsonl", afile, out=NULL)
    with pytest.raises(RxePowerError, match=r"cannot create the report folder(.|\n)*fix: "):
        write_report(DATA / "matrix-standby-linkflap.jsonl", afile / "sub", out=NULL)


def test_cli_report_and_matrix_out_an_existing_file_before_any_vm(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import operations

    def no_vm(*a: object, **k: object) -> int:
        raise AssertionError("a VM was started")

    monkeypatch.setattr(operations, "boot_guest", no_vm)
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv in (["report", str(DATA / "matrix-standby-linkflap.jsonl"), "--out", str(afile)],
                 ["matrix", "--out", str(afile), "--mode", "vm"],
                 ["report", "/dev/zero"]):
        assert cli_main.main(argv) == cli_main.HARNESS_ERROR_EXIT, argv
        err = capsys.readouterr().err
        assert "rxe-power: error:" in err and "fix:" in err and "Traceback" not in err


BAD_VALUES: tuple[Any, ...] = ("x", [1], {"a": 1}, 1.5, None, -1, True)


def _paths(o: Any, pre: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[Any, ...]]:
    if depth > 3:
        return
    if isinstance(o, dict):
        for k, v in o.items():
            yield (*pre, k)
            yield from _paths(v, (*pre, k), depth + 1)
    elif isinstance(o, list) and o:
        yield (*pre, 0)
        yield from _paths(o[0], (*pre, 0), depth + 1)


def _mutants(rec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path in _paths(rec):
        if path == ("schema",) or path == ("kind",):
            continue  # read_results refuses those with a clear error
        for bad in BAD_VALUES:
            m = copy.deepcopy(rec)
            o = m
            for k in path[:-1]:
                o = o[k]
            o[path[-1]] = bad
            yield m


@pytest.mark.parametrize("name, drop_result", [
    ("matrix-standby-linkflap.jsonl", False), ("matrix-standby-linkflap.jsonl", True),
    ("matrix-v1-405a4e6.jsonl", False), ("stress-v1-405a4e6.jsonl", False)])
def test_records_of_the_wrong_types_never_crash_the_report(name: str, drop_result: bool,
                                                          tmp_path: Path) -> None:
    """Each field of a real record (3 levels deep) replaced by a value of another type: the
    report reads, tabulates and renders it (warnings allowed), never a traceback."""
    real = read_results(DATA / name)
    rec = next(r for r in real.records if r["kind"] in ("scenario", "cycle"))
    if drop_result:
        rec = {k: v for k, v in rec.items() if k != "result"}  # the stored rows stand in
    n = 0
    for m in _mutants(rec):
        res = Results(real.path, real.header, [m])
        sec = section_of(res, tmp_path, out=NULL)
        header_line(sec)
        table_lines(sec)
        render_table(sec.rows)
        summary_html([sec], tmp_path / "summary.html")
        json.dumps([r.to_json() for r in sec.rows])
        n += 1
    assert n > 100

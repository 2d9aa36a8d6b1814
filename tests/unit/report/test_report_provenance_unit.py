"""rxe-power report and provenance: shown at the top of table.txt and the HTML; several
results files of different provenance refused, naming the fields that differ, unless
--allow-mixed-provenance (then the table and HTML say it is mixed and how); files
without provenance still read, shown as not recorded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness import report
from harness.cli.main import main
from harness.core.errors import RxePowerError
from harness.core.printer import NULL
from harness.system.provenance import Provenance
from tests.unit.system.test_provenance_unit import a_provenance

DATA = Path(__file__).parents[2] / "data"
REAL = DATA / "matrix-standby-linkflap.jsonl"


def results_file(path: Path, prov: Provenance | None, scenarios: slice = slice(1, 3)) -> Path:
    """The real matrix file's header (with `prov`) and two of its scenario records."""
    lines = REAL.read_text().splitlines()
    header = json.loads(lines[0])
    if prov is not None:
        header["provenance"] = prov.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([json.dumps(header), *lines[scenarios]]) + "\n")
    return path




def test_one_file_shows_its_provenance_on_top(tmp_path: Path) -> None:
    p = a_provenance(tmp_path)
    path = results_file(tmp_path / "a" / "results.jsonl", p)
    assert report.write_report(path, tmp_path / "out", out=NULL, pictures=False) == 0
    table = (tmp_path / "out" / "table.txt").read_text().splitlines()
    assert table[0].startswith("provenance: mode native")
    assert p.module.sha256 and p.module.sha256 in table[2]
    assert "transition" in table[table.index("") + 1]  # then the table itself
    html = (tmp_path / "out" / "summary.html").read_text()
    top = html.index('<pre class="provenance">')
    assert top < html.index("<h2") and p.module.sha256 in html[top:html.index("<h2")]


def test_an_old_file_reads_as_not_recorded(tmp_path: Path) -> None:
    assert report.write_report(REAL, tmp_path / "out", out=NULL, pictures=False) == 0
    table = (tmp_path / "out" / "table.txt").read_text()
    assert table.startswith("provenance: not recorded")
    assert "provenance: not recorded" in (tmp_path / "out" / "summary.html").read_text()


def test_different_provenance_is_refused_naming_the_fields(tmp_path: Path) -> None:
    p = a_provenance(tmp_path)
    q = dataclasses.replace(
        p, kernel=dataclasses.replace(p.kernel, release="6.1.0-56-amd64"),
        module=dataclasses.replace(p.module, sha256="0" * 64))
    a = results_file(tmp_path / "runs" / "a" / "results.jsonl", p)
    b = results_file(tmp_path / "runs" / "b" / "results.jsonl", q, slice(3, 5))
    for given in ([a, b], tmp_path / "runs"):
        with pytest.raises(RxePowerError) as exc:
            report.write_report(given, tmp_path / "out", out=NULL, pictures=False)
        assert "kernel.release" in exc.value.problem and "module.sha256" in exc.value.problem
        assert "6.1.0-56-amd64" in exc.value.problem
        assert "--allow-mixed-provenance" in exc.value.fix
        assert not list((tmp_path / "out").rglob("table.txt"))  # nothing written
    # the same setup again: merged without a word
    c = results_file(tmp_path / "same" / "results.jsonl", dataclasses.replace(
        p, mode_reason="another run's reason"), slice(3, 5))
    assert report.write_report([a, c], tmp_path / "ok", out=NULL, pictures=False) == 0
    assert "MIXED" not in "".join(x.read_text() for x in (tmp_path / "ok").rglob("*.txt"))


def test_mixed_when_allowed_says_so(tmp_path: Path) -> None:
    p = a_provenance(tmp_path)
    q = dataclasses.replace(p, removal=None, tree=dataclasses.replace(p.tree, dirty=False))
    a = results_file(tmp_path / "runs" / "a" / "results.jsonl", p)
    b = results_file(tmp_path / "runs" / "b" / "results.jsonl", q, slice(3, 5))
    assert report.write_report([a, b], tmp_path / "out", out=NULL, pictures=False,
                               allow_mixed=True) == 0
    tables = sorted((tmp_path / "out").rglob("table.txt"))
    # each file's own table, and the merged one (harness.report.merge) at the top
    assert len(tables) == 3 and tmp_path / "out" / "table.txt" in tables
    for t in tables:
        text = t.read_text()
        assert "provenance: MIXED across 2 results files" in text
        assert "removal: disassociate" in text and "tree.dirty: " in text
    html = (tmp_path / "out" / "summary.html").read_text()
    assert "Mixed provenance" in html and "removal: disassociate" in html


def test_recorded_and_not_recorded_do_not_mix(tmp_path: Path) -> None:
    a = results_file(tmp_path / "a" / "results.jsonl", a_provenance(tmp_path))
    b = results_file(tmp_path / "b" / "results.jsonl", None, slice(3, 5))
    with pytest.raises(RxePowerError, match=r"provenance: recorded \(\S+a/results.jsonl\); "
                       r"not recorded \(\S+b/results.jsonl\)"):
        report.write_report([a, b], tmp_path / "out", out=NULL, pictures=False)
    with pytest.raises(RxePowerError, match="provenance"):
        report.write_summary([a, b], tmp_path / "s.html", out=NULL)
    # two old files: nothing to compare, each says so
    c = results_file(tmp_path / "c" / "results.jsonl", None)
    assert report.write_report([b, c], tmp_path / "old", out=NULL, pictures=False) == 0
    for t in (tmp_path / "old").rglob("table.txt"):
        assert t.read_text().startswith("provenance: not recorded")


def test_the_command_takes_several_files_and_the_option(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        ) -> None:
    p = a_provenance(tmp_path)
    a = results_file(tmp_path / "a" / "results.jsonl", p)
    b = results_file(tmp_path / "b" / "results.jsonl", dataclasses.replace(
        p, packages=dataclasses.replace(p.packages, perftest="4.5+0.20-1")), slice(3, 5))
    assert main(["report", str(a), str(b), "--no-pictures"]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "o"), "--no-pictures"]) == 2
    err = capsys.readouterr().err
    assert "packages.perftest: 4.5+0.17-1" in err and "4.5+0.20-1" in err
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "o"), "--no-pictures",
                 "--allow-mixed-provenance"]) == 0
    assert "provenance: MIXED" in capsys.readouterr().out

"""Measurements as data: every file under docs/measurements/ that README.md or docs/*.md
names (as `docs/measurements/F`, or as a link relative to its page: `measurements/F` from
a page in docs/) exists, is read by the project's own reader, carries its provenance (the commit
that made it) and, for a results.jsonl, is re-rendered by `rxe-power report`; every file
there is named by some doc (a figure names its file, a file backs a figure)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from harness import report
from harness.core.errors import RxePowerError
from harness.core.printer import NULL
from harness.run.bench.record import read_bench
from harness.run.resultsfile import read_results
from harness.system.provenance_text import Recorded, header_provenance
from tests.helpers.doc_links import links, pages

REPO = Path(__file__).resolve().parents[3]
MEASUREMENTS = "docs/measurements"
# `docs/measurements/NAME` in a doc: a file (a reference ending in "/" is the folder)
REFERENCE = re.compile(r"docs/measurements/[A-Za-z0-9_.+-][A-Za-z0-9_./+-]*")


def linked(doc: Path, root: Path) -> list[str]:
    """The docs/measurements/... files a page links to, relative to its own folder."""
    top = root.resolve()
    out = []
    for link in links(doc):
        target = link.resolved()
        if not link.external and link.path_part and target.is_relative_to(top):
            rel = target.relative_to(top).as_posix()
            if rel.startswith(MEASUREMENTS + "/"):
                out.append(rel)
    return out


def named(root: Path) -> dict[str, list[str]]:
    """Each docs/measurements/... path a doc names -> the docs naming it."""
    out: dict[str, list[str]] = {}
    for doc in pages(root):
        mentioned = [ref.rstrip(".") for ref in REFERENCE.findall(doc.read_text())]
        for ref in dict.fromkeys(mentioned + linked(doc, root)):
            if not ref.endswith("/"):
                out.setdefault(ref, []).append(doc.name)
    return out


def stored(root: Path) -> list[str]:
    folder = root / MEASUREMENTS
    return sorted(str(p.relative_to(root)) for p in folder.rglob("*")
                  if p.is_file() and p.suffix != ".md") if folder.is_dir() else []


def read_problem(path: Path) -> str:
    """"" when the project's reader takes the file whole and it records what made it."""
    try:
        if path.suffix == ".jsonl":
            res = read_results(path)
            if res.problem:
                return res.problem
            if res.header is None or not res.header.get("started"):
                return "no header with the date it was started"
            prov = res.provenance
        elif path.suffix == ".json":
            data = read_bench(path) if "bench" in path.name else json.loads(path.read_text())
            if not isinstance(data, dict):
                return "not a JSON object"
            prov = header_provenance(data)
        else:
            return f"no reader for {path.suffix or 'a file without a suffix'}"
    except (RxePowerError, ValueError) as exc:
        return str(exc)
    if prov.state is not Recorded.YES or prov.provenance is None:
        return f"provenance {prov.state}" + (f": {prov.problem}" if prov.problem else "")
    if not prov.provenance.tree.commit:
        return "its provenance names no commit"
    return ""


def problems(root: Path) -> list[str]:
    out = []
    refs = named(root)
    for ref, by in sorted(refs.items()):
        path = root / ref
        if not path.is_file():
            out.append(f"{ref} (named in {', '.join(sorted(set(by)))}) does not exist")
        elif why := read_problem(path):
            out.append(f"{ref}: {why}")
    out += [f"{f} is named by no doc (README.md, docs/*.md)" for f in stored(root)
            if f not in refs]
    return out


def test_every_named_measurement_exists_parses_and_says_what_made_it() -> None:
    assert stored(REPO), f"{MEASUREMENTS} holds no results file"
    assert problems(REPO) == []


def test_report_re_renders_every_results_file(tmp_path: Path) -> None:
    files = [f for f in stored(REPO) if f.endswith(".jsonl")]
    assert files, f"no results.jsonl under {MEASUREMENTS}"
    for i, f in enumerate(files):
        out = tmp_path / str(i)
        assert report.write_report(REPO / f, out, out=NULL, pictures=False) == 0, f
        table = (out / "table.txt").read_text()
        assert table.startswith("provenance: mode "), (f, table[:200])
        assert "summary.html" in {p.name for p in out.iterdir()}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A repository of one good results file, named by the README (from the real matrix
    file's records, with a provenance)."""
    from tests.unit.system.test_provenance_unit import a_provenance

    lines = (REPO / "tests/data/matrix-standby-linkflap.jsonl").read_text().splitlines()
    header = json.loads(lines[0]) | {"provenance": a_provenance(tmp_path).to_json()}
    (tmp_path / MEASUREMENTS).mkdir(parents=True)
    (tmp_path / MEASUREMENTS / "good.jsonl").write_text(
        "\n".join([json.dumps(header), lines[1]]) + "\n")
    (tmp_path / "README.md").write_text(f"figures from `{MEASUREMENTS}/good.jsonl`.\n")
    return tmp_path


def test_the_check_finds_a_missing_a_corrupt_and_an_orphan_file(tree: Path) -> None:
    """Negative controls: each defect is named (the check above is not vacuous)."""
    assert problems(tree) == []
    (tree / "docs").mkdir(exist_ok=True)
    (tree / "docs" / "more.md").write_text(f"see {MEASUREMENTS}/gone.jsonl and "
                                           f"[this]({MEASUREMENTS}/bad.jsonl). And "
                                           f"{MEASUREMENTS}/old.jsonl. And [rel]("
                                           "measurements/rel-gone.jsonl) and [kept]"
                                           "(measurements/linked.jsonl).\n")
    (tree / MEASUREMENTS / "bad.jsonl").write_text('{"schema": 2, "kind": "header"}\n{"cut\n')
    lines = (REPO / "tests/data/matrix-standby-linkflap.jsonl").read_text().splitlines()
    (tree / MEASUREMENTS / "old.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (tree / MEASUREMENTS / "orphan.json").write_text("{}")
    shutil.copy(tree / MEASUREMENTS / "good.jsonl", tree / MEASUREMENTS / "linked.jsonl")
    found = problems(tree)
    assert len(found) == 5, found
    assert "bad.jsonl: " in found[0] and "line 2" in found[0]
    assert found[1] == f"{MEASUREMENTS}/gone.jsonl (named in more.md) does not exist"
    assert found[2] == f"{MEASUREMENTS}/old.jsonl: provenance not recorded"
    # a link relative to its page (docs/more.md -> measurements/F) names docs/measurements/F
    assert found[3] == f"{MEASUREMENTS}/rel-gone.jsonl (named in more.md) does not exist"
    assert found[4] == f"{MEASUREMENTS}/orphan.json is named by no doc (README.md, docs/*.md)"
    assert named(tree)[f"{MEASUREMENTS}/linked.jsonl"] == ["more.md"]


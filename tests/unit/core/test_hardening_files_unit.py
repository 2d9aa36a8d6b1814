"""Issue 17 #11: fixed-name writes never follow a planted symlink (one writer for all)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import RxePowerError


def _plant(folder: Path, name: str, victim: Path) -> Path:
    link = folder / name
    link.symlink_to(victim)
    return link


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_text("precious\n")
    return v


def test_atomic_write_replaces_a_planted_symlink_not_its_target(tmp_path: Path,
                                                                victim: Path) -> None:
    from harness.core.files import atomic_write
    out = tmp_path / "results"
    out.mkdir()
    _plant(out, "table.txt", victim)
    _plant(out, "table.txt.tmp", victim)
    atomic_write(out / "table.txt", "rows\n")
    assert victim.read_text() == "precious\n"
    assert not (out / "table.txt").is_symlink()
    assert (out / "table.txt").read_text() == "rows\n"
    assert [p.name for p in out.iterdir() if p.name.startswith(".table")] == []


def test_atomic_write_to_an_unusable_folder_is_a_clear_error(tmp_path: Path) -> None:
    from harness.core.files import atomic_write
    (tmp_path / "afile").write_text("")
    with pytest.raises(RxePowerError, match=r"cannot write .*afile/x.json: \[E.*\n  fix: "):
        atomic_write(tmp_path / "afile" / "x.json", "{}")


def test_open_new_refuses_a_planted_symlink(tmp_path: Path, victim: Path) -> None:
    from harness.core.files import open_new
    _plant(tmp_path, "results.jsonl", victim)
    with pytest.raises(RxePowerError, match="symbolic link"):
        open_new(tmp_path / "results.jsonl")
    assert victim.read_text() == "precious\n"


def test_matrix_table_does_not_follow_a_symlink(tmp_path: Path, victim: Path) -> None:
    from harness.run import matrix
    _plant(tmp_path, "table.txt", victim)
    matrix.write_table(tmp_path, ["row"])
    assert victim.read_text() == "precious\n"
    assert "row" in (tmp_path / "table.txt").read_text()


def test_html_summary_tmp_does_not_follow_a_symlink(tmp_path: Path, victim: Path) -> None:
    from harness.report import html_summary
    _plant(tmp_path, "summary.html.tmp", victim)
    _plant(tmp_path, "summary.html", victim)
    html_summary.write_html([], tmp_path / "summary.html")
    assert victim.read_text() == "precious\n"
    assert "<html" in (tmp_path / "summary.html").read_text().lower()


def test_transition_result_tmp_does_not_follow_a_symlink(tmp_path: Path,
                                                         victim: Path) -> None:
    from power.result import TransitionResult
    _plant(tmp_path, "t.json.tmp", victim)
    res = TransitionResult.__new__(TransitionResult)
    res.to_json = lambda: {"schema": 1}  # type: ignore[method-assign]
    TransitionResult.write(res, tmp_path / "t.json")
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "t.json").read_text().startswith("{")


def test_state_file_tmp_does_not_follow_a_symlink(tmp_path: Path, victim: Path) -> None:
    from harness.core.state import StateFile
    _plant(tmp_path, "topology.json.tmp", victim)
    StateFile(tmp_path / "topology.json").save()
    assert victim.read_text() == "precious\n"
    assert '"schema"' in (tmp_path / "topology.json").read_text()


def test_results_file_refuses_a_planted_symlink(tmp_path: Path, victim: Path) -> None:
    from harness.run.resultsfile import ResultsWriter
    _plant(tmp_path, "results.jsonl", victim)
    with pytest.raises(RxePowerError):
        ResultsWriter(tmp_path / "results.jsonl", "matrix", {}, provenance=None)
    assert victim.read_text() == "precious\n"


def test_open_new_append_keeps_and_refuses_a_symlink(tmp_path: Path, victim: Path) -> None:
    from harness.core.files import open_new
    path = tmp_path / "cycle-transitions.jsonl"
    for line in ("a\n", "b\n"):
        with open_new(path, append=True) as fh:
            fh.write(line)
    assert path.read_text() == "a\nb\n"
    _plant(tmp_path, "other.jsonl", victim)
    with pytest.raises(RxePowerError, match="symbolic link"):
        open_new(tmp_path / "other.jsonl", append=True)
    assert victim.read_text() == "precious\n"

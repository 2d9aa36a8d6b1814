"""rxe-power report: the table, pictures and HTML summary of one results file or a folder.

    code = write_report(Path("results/matrix-X/results.jsonl"), out_dir, out)  # 0; 2: nothing
                                                         # usable (out: a Printer, the CLI's)
    code = write_report(Path("results"), out_dir, out)   # every results.jsonl beneath: one each
    code = write_report([a, b], out_dir, out, allow_mixed=True)  # several; differing provenance
                                                                  # is refused unless allowed
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.core.errors import RxePowerError
from harness.core.files import atomic_write, make_dir
from harness.core.printer import Printer
from harness.report.drawing import MATPLOTLIB_FIX, load_matplotlib
from harness.report.html_summary import write_html
from harness.report.merge import (
    merge_matrix,
    merged_head,
    merged_junit,
    merged_lines,
    shard_note,
)
from harness.report.merge_stress import merge_stress, merged_stress_lines
from harness.report.pictures import picture_dir, write_pictures
from harness.report.section import (
    NO_RECORDS_EXIT,
    Section,
    check_provenance,
    load_section,
    provenance_lines,
    section_dirs,
)
from harness.report.tables import header_line, table_lines
from harness.run.matrix import LEGEND


def write_report(path: Path | Sequence[Path], out_dir: Path, out: Printer,
                 pictures: bool = True, allow_mixed: bool = False) -> int:
    """Table, pictures and HTML for one results file, for every results.jsonl beneath a
    folder, or for several files and folders (one section each). 0 when something was
    reported; 2 (logged) when there were no usable records at all. A missing file or a
    foreign schema raises RxePowerError (for a folder, such a file is skipped with a
    warning); so do files of different provenance, unless `allow_mixed` (then every table
    and the HTML say what differs). Several matrix (or stress) files are also merged into
    one table in out_dir (write_merged)."""
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    if not paths:
        raise RxePowerError("no results file given", "give a results.jsonl or a folder")
    out_dir = Path(out_dir)
    make_dir(out_dir, "report folder")  # a file there or no permission: said before reading
    if len(paths) == 1 and not paths[0].is_dir():
        sections = [load_section(paths[0], out_dir, out)]
    else:
        sections = _load_many(paths, out_dir, out)
    usable = [s for s in sections if s.usable]
    for s in sections:
        if not s.usable:
            out(f"warning: {s.path} has no scenario or cycle records"
                + (f" ({s.results.problem})" if s.results.problem else ""))
    if not usable:
        out(f"rxe-power report: error: no usable records in {path}\n  fix: give a results.jsonl "
            "written by rxe-power matrix, run or stress that got past its first scenario or "
            "cycle")
        return NO_RECORDS_EXIT
    mix = check_provenance(usable, allow_mixed)  # refused here, before anything is written
    written: list[Path] = []
    for s in usable:
        lines = [*provenance_lines(s), *mix, "", *table_lines(s),
                 *(shard_note(s) if len(usable) == 1 else [])]
        out("\n".join(["", header_line(s), *lines]))
        make_dir(s.out_dir, "report folder")
        table = s.out_dir / "table.txt"
        atomic_write(table, "\n".join(lines) + "\n")
        written.append(table)
    written += write_merged(usable, out_dir, [*merged_head(provenance_lines(usable[0])), *mix],
                            out)
    npics = 0
    if pictures:
        if load_matplotlib() is None:
            out(f"warning: no pictures: matplotlib is not installed; fix: {MATPLOTLIB_FIX}")
        else:
            npics = sum(write_pictures(s, out) for s in usable)
    html_path = write_html(usable, out_dir / "summary.html", allow_mixed)
    out("report: " + ", ".join(str(p) for p in written) + f", {html_path}, {npics} picture(s)"
        + (f" in {', '.join(sorted({str(picture_dir(s)) for s in usable if s.pictures}))}"
           if npics else ""))
    return 0


def write_merged(sections: list[Section], out_dir: Path, head: list[str],
                 out: Printer) -> list[Path]:
    """Several matrix files: one table of every row (out_dir/table.txt) and one JUnit XML
    (out_dir/junit.xml); several stress files: one table of their cycles
    (out_dir/stress-table.txt). `head`: the provenance lines (and how they are mixed)."""
    written: list[Path] = []
    if sum(not s.is_stress for s in sections) > 1:
        merged = merge_matrix(sections)
        lines = [*head, "", *merged_lines(merged), "", LEGEND]
        out("\n".join(["", "merged:", *lines]))
        written.append(atomic_write(out_dir / "table.txt", "\n".join(lines) + "\n"))
        written.append(atomic_write(out_dir / "junit.xml", merged_junit(merged)))
    if sum(s.is_stress for s in sections) > 1:
        lines = [*head, "", *merged_stress_lines(merge_stress(sections))]
        out("\n".join(["", "merged:", *lines]))
        written.append(atomic_write(out_dir / "stress-table.txt", "\n".join(lines) + "\n"))
    return written


def _load_many(paths: list[Path], out_dir: Path, out: Printer) -> list[Section]:
    """Every results.jsonl of `paths` (a folder: those beneath it), each read into its own
    section folder under out_dir; an unreadable file in a folder is skipped with a warning."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.rglob("results.jsonl"))
            if not found:
                raise RxePowerError(f"no results.jsonl under {p}",
                                    "give a results.jsonl, or a folder holding rxe-power "
                                    "results")
            files += found
        else:
            files.append(p)
    if len(paths) == 1:  # one folder: its layout below out_dir
        base = paths[0].absolute().parent
        dirs = [out_dir / f.absolute().parent.relative_to(base) for f in files]
    else:
        dirs = section_dirs(files, out_dir)
    sections: list[Section] = []
    for f, d in zip(files, dirs, strict=True):
        try:
            sections.append(load_section(f, d, out))
        except RxePowerError as exc:
            if f in paths:  # named by the caller: its error is the command's
                raise
            out(f"warning: skipped {f}: {exc.problem}")
    return sections

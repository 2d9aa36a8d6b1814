"""The merged part of the HTML summary: the files with their shards and times, what a run
given in shards lacks, and every row once with the file and shard that ran it (duplicates
resolved to the worst outcome, and said); a stress run's cycles alike. Everything taken
from a results file is HTML-escaped."""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from harness.report.merge import Merged, Source, files_lines, kept_row, merge_matrix
from harness.report.merge_stress import merge_stress, merged_stress_lines
from harness.report.pictures import existing_picture
from harness.report.section import Section
from harness.run.matrix import COLUMNS, summary_line


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(target: Path, html_dir: Path) -> str:
    rel = os.path.relpath(target.absolute(), html_dir.absolute()).replace(os.sep, "/")
    return _e(quote(rel))


def _files_table(sources: list[Source]) -> list[str]:
    out = ["<table><tr><th>file</th><th>shard</th><th>scenarios / cycles</th>"
           "<th>seconds (scenarios or cycles)</th><th>expected s</th><th>start to finish s</th>"
           "<th>results</th></tr>"]
    for s in sources:
        n = len(s.section.cycles) if s.section.is_stress else len(s.section.scenarios)
        secs = (sum(c.seconds or 0.0 for c in s.section.cycles) if s.section.is_stress
                else s.scenario_seconds)
        exp_s = s.shard.expected_s if s.shard else None
        exp = f"{exp_s:.0f}" if exp_s is not None else "-"
        wall = f"{s.wall_s:.0f}" if s.wall_s is not None else "-"
        out.append(f'<tr><td class="n">{s.number}</td><td>{_e(s.shard_label)}</td>'
                   f'<td class="n">{n}</td><td class="n">{secs:.1f}</td>'
                   f'<td class="n">{exp}</td><td class="n">{wall}</td>'
                   f"<td><code>{_e(s.section.path)}</code></td></tr>")
    out.append("</table>")
    return out


def _rows_table(merged: Merged, html_dir: Path) -> list[str]:
    heads = ["file", "shard", "#", "scenario", "policy", "verdict", *(h for h, _ in COLUMNS),
             "status", "findings / veto", "timeline"]
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr>"]
    for m in merged.rows:
        r = kept_row(m)
        pic = m.source.section.pictures.get(str(m.record)) \
            or existing_picture(m.source.section, m.record)
        notes = [*r.findings, *([f"veto: {r.veto}"] if r.veto else [])]
        cells = "".join(f"<td>{_e(c)}</td>" for c in (m.source.number, m.source.shard_label,
                                                       m.index, r.scenario, r.policy,
                                                       r.verdict))
        cells += "".join(f'<td class="n">{_e(r.counts.get(k, 0))}</td>' for _, k in COLUMNS)
        dup = ' duplicate' if m.others else ""
        cells += (f'<td class="{_e(r.status.value)}{dup}">{_e(r.status.value)}</td>'
                  f'<td class="findings">{"<br>".join(_e(n) for n in notes) or "-"}</td>')
        link = (f'<a href="{_href(pic, html_dir)}">picture</a>' if pic
                else '<span class="muted">-</span>')
        out.append(f"<tr>{cells}<td>{link}</td></tr>")
    out.append("</table>")
    return out


def merged_html(sections: list[Section], html_dir: Path) -> list[str]:
    """The merged part for several matrix (or stress) sections; [] for fewer than two."""
    out: list[str] = []
    if sum(not s.is_stress for s in sections) > 1:
        merged = merge_matrix(sections)
        out += ['<h2 id="merged">Merged: every row once</h2>',
                f"<p>{_e(files_lines(merged)[0])} "
                "(the file and shard that ran each row are in its first columns)</p>",
                *_files_table(merged.sources)]
        out += [f'<div class="warn">{_e(g)}</div>' for g in merged.gaps]
        dup = merged.duplicates
        if dup:
            out.append(f'<div class="warn">{len(dup)} case(s) in several files (the same '
                       "scenario and policy): the worst outcome is kept, the others are "
                       "named in its findings</div>")
        out.append(f"<p>{_e(summary_line([m.row for m in merged.rows]))}</p>")
        out += _rows_table(merged, html_dir)
    if sum(s.is_stress for s in sections) > 1:
        stress = merge_stress(sections)
        lines = merged_stress_lines(stress)
        out += ['<h2 id="merged-stress">Merged: the stress cycles</h2>',
                *_files_table(stress.sources),
                *[f'<div class="warn">{_e(g)}</div>' for g in stress.gaps],
                f"<pre>{_e(chr(10).join(lines[lines.index('') + 1:]))}</pre>"]
    return out

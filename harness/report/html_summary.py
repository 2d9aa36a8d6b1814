"""The HTML summary: one self-contained page (inline CSS) with a section per results file.

Everything taken from a results file is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from harness.core.files import atomic_write
from harness.core.printer import NULL, Printer
from harness.report.merged_html import merged_html
from harness.report.pictures import existing_picture
from harness.report.section import (
    Section,
    check_provenance,
    load_section,
    provenance_lines,
    provenance_mix,
    section_dirs,
)
from harness.report.tables import cycle_clients, stress_trends
from harness.run.matrix import COLUMNS, LEGEND, PEER_COLUMNS
from harness.workload.findings import RowStatus

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em 2em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:2px solid #24476b;
padding-bottom:.2em;margin-top:2em} h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
th{background:#eef2f7;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
.clean{background:#e3f1e4;color:#1b5e20;font-weight:bold}
.bad{background:#fbe3e1;color:#b71c1c;font-weight:bold}
.broken{background:#efe1f5;color:#4a148c;font-weight:bold}
.missed{background:#fff3cd;color:#7a5200;font-weight:bold}
.ok{color:#1b5e20;font-weight:bold} .failed{color:#b71c1c;font-weight:bold}
.warn{background:#fff4d6;border:1px solid #e0b000;padding:.5em .8em;margin:.6em 0}
.meta td:first-child{font-weight:bold;background:#f6f6f6} .muted{color:#777}
.gallery{display:flex;flex-wrap:wrap;gap:14px}
.gallery figure{margin:0;width:460px;border:1px solid #ddd;padding:6px;background:#fafafa}
.gallery img{width:100%;height:auto;border:1px solid #eee}
.gallery figcaption{font-size:.8em;margin-top:.3em}
code{font-size:.9em} td.findings{max-width:38em}
pre.provenance{font-size:.8em;background:#f6f8fa;border:1px solid #ddd;padding:.5em .8em;
white-space:pre-wrap}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(target: Path, html_dir: Path) -> str:
    rel = os.path.relpath(target.absolute(), html_dir.absolute()).replace(os.sep, "/")
    return _e(quote(rel))


def _meta_html(sec: Section) -> list[str]:
    h = sec.results.header or {}
    host = h.get("host") or {}
    spec = h.get("spec") or {}
    spec_txt = ", ".join(f"{k}={json.dumps(v) if isinstance(v, list | dict) else v}"
                         for k, v in spec.items()) if isinstance(spec, dict) else str(spec)
    rows = [("command", f"rxe-power {sec.results.command}"), ("started", h.get("started", "?")),
            ("host", f"{host.get('node', '?')}, kernel {host.get('kernel', '?')}"
                     + (", in the VM" if host.get("in_vm") else "")),
            ("spec", spec_txt), ("results file", str(sec.path))]
    out = ['<table class="meta">']
    out += [f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in rows]
    out.append("</table>")
    out.append('<pre class="provenance">' + _e("\n".join(provenance_lines(sec))) + "</pre>")
    if sec.results.problem:
        out.append(f'<div class="warn">warning: {_e(sec.results.problem)}</div>')
    if not sec.usable:
        out.append('<div class="warn">no usable records in this file</div>')
    return out


def _matrix_html(sec: Section, html_dir: Path) -> list[str]:
    rows = sec.rows
    by = Counter(r.status.value for r in rows)
    out = [f"<p>{len(rows)} rows: " + ", ".join(
        f'<span class="{s.value}">{by.get(s.value, 0)} {s.value}</span>' for s in RowStatus)
        + "</p>"]
    s = sec.summary
    if s is None:
        out.append('<div class="warn">no summary record: the run is still going or stopped '
                   "early; these are the scenarios that finished</div>")
    elif s.get("interrupted"):
        out.append('<div class="warn">the matrix was interrupted</div>')
    heads = (["#", "scenario", "policy", "verdict"]
             + [h for h, _ in COLUMNS] + [f"peer {h}" for h, _ in PEER_COLUMNS]
             + ["peer saw", "recov ms", "status", "findings / veto", "timeline"])
    out.append("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr>")
    for pos, rec in enumerate(sec.scenarios, 1):
        rrows = sec.rows_by.get(pos, [])
        pic = sec.pictures.get(str(pos)) or existing_picture(sec, pos)
        extra = []
        if rec.not_restored:
            extra.append(f"not restored: {rec.not_restored}")
        for r in rrows:
            notes = [*r.findings, *([f"veto: {r.veto}"] if r.veto else []), *extra]
            cells = [str(rec.index if rec.index is not None else pos), r.scenario, r.policy,
                     r.verdict]
            tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
            tds += "".join(f'<td class="n">{_e(r.counts.get(k, 0))}</td>' for _, k in COLUMNS)
            tds += "".join(f'<td class="n">{_e(r.peer.get(k, 0))}</td>' for _, k in PEER_COLUMNS)
            rec_ms = f"{r.recovery_ms:.0f}" if r.recovery_ms is not None else "-"
            tds += (f"<td>{_e(r.peer_saw or '-')}</td><td class=\"n\">{_e(rec_ms)}</td>"
                    f'<td class="{_e(r.status.value)}">{_e(r.status.value)}</td>'
                    f'<td class="findings">{"<br>".join(_e(n) for n in notes) or "-"}</td>')
            link = (f'<a href="{_href(pic, html_dir)}">picture</a>' if pic else
                    '<span class="muted">-</span>')
            out.append(f"<tr>{tds}<td>{link}</td></tr>")
    out.append("</table>")
    out.append(f'<p class="muted">{_e(LEGEND)}</p>')
    gallery = []
    for pos, rec in enumerate(sec.scenarios, 1):
        pic = sec.pictures.get(str(pos)) or existing_picture(sec, pos)
        if not pic:
            continue
        rrows = sec.rows_by.get(pos, [])
        cap = ", ".join(f'{_e(r.policy)} <span class="{_e(r.status.value)}">'
                        f"{_e(r.status.value)}</span>" for r in rrows)
        finds = "; ".join(f for r in rrows for f in r.findings)
        gallery.append(f'<figure><a href="{_href(pic, html_dir)}"><img src="{_href(pic, html_dir)}"'
                       f' alt="{_e(rec.scenario.id)}" loading="lazy"></a><figcaption>'
                       f'<b>{_e(rec.index if rec.index is not None else pos)} '
                       f'{_e(rec.scenario.id)}</b>: {cap}'
                       + (f"<br>{_e(finds)}" if finds else "") + "</figcaption></figure>")
    if gallery:
        out += ["<h3>Timelines</h3>", '<div class="gallery">', *gallery, "</div>"]
    return out


def _stress_html(sec: Section, html_dir: Path) -> list[str]:
    done, failed, trends, from_summary = stress_trends(sec)
    out = [f'<p><span class="{"failed" if failed else "ok"}">{_e(done)} cycles, {_e(failed)} '
           f"failed</span>" + ("" if from_summary else
                               ' <span class="muted">(no summary record: trends computed from '
                               "the cycle records)</span>") + "</p>"]
    pic = sec.pictures.get("stress") or (sec.out_dir / "stress.png"
                                         if (sec.out_dir / "stress.png").is_file() else None)
    if pic:
        out.append(f'<p><a href="{_href(pic, html_dir)}"><img src="{_href(pic, html_dir)}" '
                   'alt="per-cycle figures" style="max-width:100%;width:1100px"></a></p>')
    out.append("<h3>Trends</h3><table><tr><th>figure</th><th>first</th><th>last</th>"
               "<th>max</th><th>slope / cycle</th></tr>")
    for k, v in trends.items():
        slope = v.get("slope_per_cycle", 0)
        cls = ' class="failed"' if isinstance(slope, int | float) and slope > 0 and \
            not k.startswith(("transition_ms",)) else ""
        out.append(f"<tr><td>{_e(k)}</td>" + "".join(
            f'<td class="n">{_e(v.get(x, "-"))}</td>' for x in ("first", "last", "max"))
            + f'<td class="n"{cls}>{_e(slope)}</td></tr>')
    out.append("</table><h3>Cycles</h3><table><tr><th>cycle</th><th>result</th>"
               "<th>verdict</th><th>transition ms</th><th>seconds</th><th>requests</th>"
               "<th>recovery ms</th><th>failures / notes</th></tr>")
    for c in sec.cycles:
        ok = c.ok
        ms = c.transition_ms
        rec_ms = ", ".join(f"{cl.client} {cl.recovery_ms:.0f}" for cl in c.clients
                           if cl.recovery_ms is not None)
        notes = [*c.failures, *c.notes]
        out.append(f"<tr><td class=\"n\">{_e(c.cycle if c.cycle is not None else '?')}</td>"
                   f'<td class="{"ok" if ok else "failed"}">{"ok" if ok else "FAILED"}</td>'
                   f"<td>{_e(c.verdict or '-')}</td>"
                   f'<td class="n">{_e(f"{ms:.0f}" if ms is not None else "-")}</td>'
                   f'<td class="n">{_e(c.seconds if c.seconds is not None else "-")}</td>'
                   f"<td>{_e(cycle_clients(c.clients))}</td><td>{_e(rec_ms or '-')}</td>"
                   f"<td class=\"findings\">{'<br>'.join(_e(n) for n in notes) or '-'}</td></tr>")
    out.append("</table>")
    return out


def summary_html(sections: list[Section], html_path: Path) -> str:
    html_dir = html_path.parent
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>rxe-power report</title>", f"<style>{CSS}</style></head><body>",
           "<h1>rxe-power report</h1>",
           f'<p class="muted">written {_e(now)} from {len(sections)} results file(s)</p>']
    mix = provenance_mix(sections)
    if mix:
        out.append('<div class="warn mixed"><b>Mixed provenance</b>: these results were made '
                   "by different setups (reported with --allow-mixed-provenance)"
                   f"<pre>{_e(chr(10).join(mix))}</pre></div>")
    elif sections and (len(sections) == 1 or all(s.results.provenance.provenance is not None
                                                 for s in sections)):
        out.append('<pre class="provenance">' + _e("\n".join(provenance_lines(sections[0])))
                   + "</pre>")
    out += merged_html(sections, html_dir)  # several files: every row once, and who ran it
    if len(sections) > 1:
        out.append("<ul>")
        for i, sec in enumerate(sections, 1):
            out.append(f'<li><a href="#s{i}">{_e(sec.path)}</a>: {_e(_section_brief(sec))}</li>')
        out.append("</ul>")
    for i, sec in enumerate(sections, 1):
        out.append(f'<h2 id="s{i}">{_e(sec.results.command)}: {_e(sec.path)}</h2>')
        out += _meta_html(sec)
        if sec.usable:
            out += _stress_html(sec, html_dir) if sec.is_stress else _matrix_html(sec, html_dir)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _section_brief(sec: Section) -> str:
    if sec.is_stress:
        done, failed, _, _ = stress_trends(sec)
        return f"{done} cycles, {failed} failed"
    by = Counter(r.status.value for r in sec.rows)
    return f"{len(sec.rows)} rows, " + ", ".join(f"{by.get(s.value, 0)} {s.value}"
                                                  for s in RowStatus)


def write_summary(paths: list[Path], dest: Path, out: Printer = NULL,
                  dirs: list[Path] | None = None, allow_mixed: bool = False) -> Path:
    """The HTML summary of several results files at `dest` (a .html path, or a folder: then
    dest/summary.html). Pictures already drawn in each file's section folder (section_dirs:
    dest's folder for one file) are linked; nothing is drawn here. Files of different
    provenance are refused unless `allow_mixed`; `out` hears the warnings of reading them."""
    dest = dest / "summary.html" if dest.is_dir() or not dest.suffix else dest
    paths = [Path(p) for p in paths]
    dirs = dirs or section_dirs(paths, dest.parent)
    sections = [load_section(p, d, out) for p, d in zip(paths, dirs, strict=True)]
    return write_html(sections, dest, allow_mixed)


def write_html(sections: list[Section], out: Path, allow_mixed: bool = False) -> Path:
    """The summary of sections already read, written atomically at `out` (refused for
    sections of different provenance unless `allow_mixed`)."""
    check_provenance(sections, allow_mixed)
    return atomic_write(out, summary_html(sections, out))

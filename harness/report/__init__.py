"""rxe-power report: the table, timeline pictures and an HTML summary from results.jsonl.

    code = write_report(Path("results/matrix-X/results.jsonl"), out_dir, out)  # 0; 2: nothing
    code = write_report(Path("results"), out_dir, out)  # every results.jsonl beneath: a section
    write_summary([path_a, path_b], out_dir / "summary.html")             # the HTML alone

What it writes, per results file (a *section*):

- `table.txt`: the file's provenance (what made it; harness.system.provenance_text), then
  for a matrix the rows (harness.run.matrix.render_table), for a stress run the per-cycle
  table and the trends (first, last, max, slope of every figure);
- `timelines/NNN-<transition>-<ordering>-<policies>-<mix>.png`: one picture per matrix
  scenario (harness.report.timeline);
- `stress.png` for a stress run (harness.report.stress_plot);

and one `summary.html` (self-contained, inline CSS) with every section. Several matrix files
(the shards of one run, or runs of other days) are also merged: `table.txt` and `junit.xml`
in the report folder hold every row once, with the file and shard that ran it, a case in
several files keeping its worst outcome (and saying so), the shards' times and what a run
given in shards lacks; the HTML begins with the same; several stress files give
`stress-table.txt`, their cycles by number. Files of different provenance are refused in
one report unless allowed, and then said to be mixed. Pictures need
matplotlib (imported lazily, Agg); without it the table and HTML are still written.

Modules: section (reading results files into sections, typed), tables (text tables),
drawing (colours, figure, names), timeline_canvas, timeline_lanes and timeline (a
scenario's picture), stress_plot, pictures (drawing a section's pictures), html_summary,
merge and merge_stress (several files in one table; merge also the JUnit XML),
merged_html, command (write_report). What it says (the tables, the warnings) goes to
`out`, the CLI's Printer (harness.core.printer; NULL for silence).
"""

from harness.report.command import write_report
from harness.report.html_summary import write_summary
from harness.report.section import NO_RECORDS_EXIT, load_section

__all__ = ["NO_RECORDS_EXIT", "load_section", "write_report", "write_summary"]

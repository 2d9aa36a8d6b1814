"""One table of the cycles of several stress results files (the shards of one stress run).

    merged = merge_stress(sections)     # every cycle number once, with the file that ran it
    merged_stress_lines(merged)         # the files, what is missing, the cycles

Each shard of a stress run runs its own share of the cycles, numbered as in the whole run
(harness.core.shards.cycle_share), on its own workers: its leak figures are measured
against its own first cycle, so the trends stay per file (each file's own table). A cycle
number found in several files keeps the failed one (the first file's on a tie) and says
so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.report.merge import Source, sources_of
from harness.report.section import Section
from harness.report.tables import cycle_clients, cycle_number
from harness.run.records import CycleRecord


@dataclass
class MergedCycle:
    cycle: CycleRecord
    number: int
    source: Source
    others: list[tuple[Source, bool]] = field(default_factory=list)  # (file, ok) not kept


@dataclass
class MergedStress:
    sources: list[Source]
    cycles: list[MergedCycle]
    gaps: list[str]


def merge_stress(sections: list[Section]) -> MergedStress:
    sources = [s for s in sources_of(sections) if s.section.is_stress]
    kept: dict[tuple[str, int], MergedCycle] = {}
    for src in sources:
        for pos, c in enumerate(src.section.cycles, 1):
            new = MergedCycle(c, cycle_number(c, pos), src)
            key = (src.run_key, new.number)
            old = kept.get(key)
            if old is None:
                kept[key] = new
            elif old.cycle.ok and not c.ok:
                new.others = [*old.others, (old.source, old.cycle.ok)]
                kept[key] = new
            else:
                old.others.append((src, c.ok))
    runs = list(dict.fromkeys(s.run_key for s in sources))
    cycles = sorted(kept.values(), key=lambda m: (runs.index(m.source.run_key), m.number,
                                                  m.source.number))
    gaps = []
    for run in runs:
        mine = [s for s in sources if s.run_key == run]
        plans = [s.shard for s in mine if s.shard is not None]
        if not plans or any(s.shard is None for s in mine):
            continue
        ran = {m.number for m in cycles if m.source.run_key == run}
        lost = [n for n in range(1, plans[0].whole + 1) if n not in ran]
        if lost:
            given = sorted({str(p.shard) for p in plans})
            gaps.append(f"{len(lost)} of the run's {plans[0].whole} cycles are not in these "
                        f"files (shards given: {', '.join(given)}): cycles "
                        + _ranges(lost))
    return MergedStress(sources, cycles, gaps)


def _ranges(numbers: list[int]) -> str:
    out: list[str] = []
    for n in numbers:
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def merged_stress_lines(merged: MergedStress) -> list[str]:
    out = [f"stress: merged from {len(merged.sources)} results files:"]
    for s in merged.sources:
        cyc = s.section.cycles
        total = sum(c.seconds or 0.0 for c in cyc)
        wall = f", {s.wall_s:.0f} s start to finish" if s.wall_s is not None else ""
        span = (f"cycles {cycle_number(cyc[0], 1)}-{cycle_number(cyc[-1], len(cyc))}"
                if cyc else "no cycles")
        out.append(f"  file {s.number}: shard {s.shard_label}, {span}, "
                   f"{sum(not c.ok for c in cyc)} failed, {total:.1f} s of cycles{wall}: "
                   f"{s.section.path}")
    out += [f"warning: {g}" for g in merged.gaps]
    head = (f"{'file':<5}{'shard':<7}{'cycle':>5}  {'result':<7}{'verdict':<11}"
            f"{'trans ms':>9}{'secs':>7}  requests / failures / notes")
    out += ["", head, "-" * len(head)]
    for m in merged.cycles:
        c = m.cycle
        notes = [*c.failures, *c.notes]
        if m.others:
            notes.append("duplicate: also in " + "; ".join(
                f"file {s.number} (shard {s.shard_label}): {'ok' if ok else 'FAILED'}"
                for s, ok in m.others) + "; the failed one kept")
        ms = f"{c.transition_ms:.0f}" if c.transition_ms is not None else "-"
        secs = f"{c.seconds:.1f}" if c.seconds is not None else "-"
        out.append(f"{m.source.number:<5}{m.source.shard_label:<7}{m.number:>5}  "
                   f"{'ok' if c.ok else 'FAILED':<7}{c.verdict or '-':<11}{ms:>9}{secs:>7}  "
                   f"{cycle_clients(c.clients)}" + (f" | {'; '.join(notes)}" if notes else ""))
    failed = sum(not m.cycle.ok for m in merged.cycles)
    dup = sum(1 for m in merged.cycles if m.others)
    out.append(f"{len(merged.cycles)} cycles, {failed} failed"
               + (f"; {dup} cycle number(s) in several files: the failed one kept"
                  if dup else "")
               + "; the leak trends are per file (each shard has its own first cycle)")
    return out

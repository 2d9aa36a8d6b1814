"""What a stress run prints and notes: the summary at its end (cycles, failures, the
run's findings, each figure's trend) and a cycle's note on a delete that blocked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.system.kstacks import ThreadInKernel


def render_summary(done: int, failed: int, trends: dict[str, dict[str, float]],
                   out_dir: Path, found: dict[str, Any] | None = None) -> list[str]:
    """The run's end: cycles, failed cycles, its findings (a results file written before
    findings existed has none: `found` None), and each figure's trend."""
    out = [f"{done} cycles, {failed} failed; results in {out_dir / 'results.jsonl'}"]
    if found is not None:
        findings = list(found.get("findings") or [])
        out.append(f"{len(findings)} finding(s) of the run" + (":" if findings else ""))
        out += [f"  {f}" for f in findings]
        if found.get("rss_not_judged"):
            out.append("RSS growth not judged (too few cycles) for: "
                       + "; ".join(x.split(":")[0] for x in found["rss_not_judged"]))
    out.append(f"{'figure':<28}{'first':>10}{'last':>10}{'max':>10}{'slope/cycle':>13}")
    for k, v in trends.items():
        out.append(f"{k:<28}{v['first']:>10g}{v['last']:>10g}{v['max']:>10g}"
                   f"{v['slope_per_cycle']:>13g}")
    return out


def async_events(events: list[dict[str, Any]]) -> list[str]:
    """The async event names a client read in its round (PORT_ERR, DEVICE_FATAL...)."""
    return [str(e.get("name")) for e in events if e.get("event") == "async"]


def veto_note(blocked_s: float, holders: list[dict[str, Any]],
              terminated: list[dict[str, Any]], view: dict[str, Any]) -> str:
    """One line on a delete that blocked: who held the device, in which call on which
    file, where the delete waited (the kernel's view at detection), how it ended."""
    def threads(rows: list[dict[str, Any]]) -> str:
        return " | ".join(ThreadInKernel.from_json(r).describe() for r in rows) or "gone"

    held = "; ".join(f"pid {h['pid']} ({h['cmdline'][:60]}): "
                     f"{threads(view.get('holders', {}).get(str(h['pid']), []))}"
                     for h in holders) or "no holder found in /proc"
    ended = ", ".join(f"pid {x['pid']} {x['how']}" for x in terminated) or "not forced"
    return (f"delete blocked {blocked_s:.3f} s: the delete {threads(view.get('delete', []))}; "
            f"held by {held}; {ended}")

"""A transition's result for a terminal: its timeline, its steps and its verdict."""

from __future__ import annotations

from power import kmsg
from power.result import TransitionResult


def render(result: TransitionResult) -> list[str]:
    """The timeline and the verdict, for a terminal."""
    req = result.request
    out = [f"transition {req.name} ({req.ordering}, hold {req.hold_ms} ms, on veto "
           f"{req.on_veto})", "", *result.timeline.render(), ""]
    out.append(f"{'step':<16} {'outcome':<8} {'ms':>10}")
    for s in result.steps:
        out.append(f"{s.step.value:<16} {s.outcome:<8} "
                   f"{(f'{s.ms:.1f}' if s.outcome != 'skipped' else '-'):>10}"
                   + (f"  {s.error.splitlines()[0]}" if s.error else ""))
    if result.veto and result.veto.detected:
        out.append(f"veto: delete blocked {result.veto.blocked_s:.3f} s by "
                   + "; ".join(f"pid {h['pid']} ({h['cmdline']})" for h in result.veto.holders))
    if result.kernel:
        out += kmsg.render(result.kernel)
    out.append(f"peer {result.device_before and 'HCA'} stayed ACTIVE: "
               f"{'yes' if result.peer_active_throughout else 'NO'}")
    out.append(f"verdict: {result.verdict.value.upper()}"
               + (f" - {'; '.join(result.reasons)}" if result.reasons else ""))
    return out

"""The client worker's journal: what a worker killed while running leaves behind.

One JSON line per note, and one per run of postings or completions:
{"t_ns": ..., "event": "posted"|"completed", "detail": {"reqs": [...], "gen": ...}}.
harness.run.scenario's ClientWorker.in_flight reads it back.
"""

from __future__ import annotations

import json
from typing import Any

# The journal is written at most this often (and at every note, finish and release): in
# the VM it lives on the host's shared folder, where one write costs ~0.7 ms; writing it
# per loop turn made every request at queue depth 1 cost two of them.
JOURNAL_FLUSH_S = 0.02


def journal_lines(pending: list[int], t_ns: int, generation: int) -> str:
    """The lines for `pending` (seq posted (+) or completed (-), in order): one line per
    run of the same kind."""
    lines: list[str] = []
    run: list[int] = []
    posted = pending[0] > 0
    for v in pending:
        if (v > 0) != posted:
            lines.append(journal_run(t_ns, posted, run, generation))
            run, posted = [], v > 0
        run.append(v - 1 if v > 0 else -v - 1)
    lines.append(journal_run(t_ns, posted, run, generation))
    return "".join(lines)


def note_line(t_ns: int, what: str, detail: dict[str, Any]) -> str:
    return f'{{"t_ns": {t_ns}, "event": "{what}", "detail": {_json(detail)}}}\n'


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def journal_run(t_ns: int, posted: bool, reqs: list[int], generation: int) -> str:
    if posted:
        return (f'{{"t_ns": {t_ns}, "event": "posted", "detail": {{"reqs": {_json(reqs)}, '
                f'"gen": {generation}}}}}\n')
    return f'{{"t_ns": {t_ns}, "event": "completed", "detail": {{"reqs": {_json(reqs)}}}}}\n'

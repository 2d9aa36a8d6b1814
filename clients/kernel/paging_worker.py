"""The paging workload: a process that keeps every page of a large anonymous mapping
verifiable and touches them in random order, so that under a memory limit its pages are
paged out to swap and paged in again all through a transition (the page ledger:
harness/workload/page_ledger.py).

    python -m clients.kernel.paging_worker PAGES SEED [--plant zero:P|damage:P ...]

Lines in (stdin): `go` (the parent has put this process into its cgroup: fill every page,
then touch), `stop` (sweep every page, report, exit 0). Lines out (stdout, JSON, one
event a line, flushed): `ready` (pid), `filled` (every page written once), `progress`
(touches so far, about once a second), `touch` (a touch that waited LATE_TOUCH_MS or more,
or whose check failed: harness.workload.page_ledger.Touch), `sweep` (the final check).

`--plant` is the negative control of the ledger: right after the fill, page P is zeroed
(`zero`: reads as lost) or one byte of its body flipped (`damage`: corrupted), as a
failed page-in would leave it.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import random
import select
import sys
import time

from harness.workload.page_ledger import (
    LATE_TOUCH_MS,
    PAGE_SIZE,
    PageCheck,
    Sweep,
    Touch,
    check_page,
    make_page,
)

PROGRESS_EVERY_S = 1.0
POLL_EVERY_TOUCHES = 64  # stdin is looked at every this many touches


def emit(**rec: object) -> None:
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


def plant(mm: mmap.mmap, spec: str, pages: int) -> None:
    how, _, page = spec.partition(":")
    p = int(page)
    if not 0 <= p < pages or how not in ("zero", "damage"):
        raise SystemExit(f"--plant {spec!r}: want zero:P or damage:P with 0 <= P < {pages}")
    off = p * PAGE_SIZE
    if how == "zero":
        mm[off:off + PAGE_SIZE] = bytes(PAGE_SIZE)
    else:
        mm[off + PAGE_SIZE - 1] ^= 0xFF


def read_command(block: bool) -> str | None:
    if not block and not select.select([sys.stdin], [], [], 0)[0]:
        return None
    line = sys.stdin.readline()
    return line.strip() if line else "stop"  # the parent's end closed: stop


def main(argv: list[str]) -> int:
    pages, seed = int(argv[0]), int(argv[1])
    plants = [argv[i + 1] for i, a in enumerate(argv) if a == "--plant"]
    emit(event="ready", pid=os.getpid(), pages=pages)
    if read_command(block=True) != "go":
        return 2
    mm = mmap.mmap(-1, pages * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    gen = array.array("Q", [1]) * pages
    for p in range(pages):
        mm[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] = make_page(p, 1)
    for spec in plants:
        plant(mm, spec, pages)
    emit(event="filled", t_ns=time.monotonic_ns())
    rng = random.Random(seed)
    late_ns = int(LATE_TOUCH_MS * 1e6)
    touches = 0
    next_progress = time.monotonic() + PROGRESS_EVERY_S
    while True:
        if touches % POLL_EVERY_TOUCHES == 0:
            if read_command(block=False) == "stop":
                break
            if time.monotonic() >= next_progress:
                emit(event="progress", touches=touches, t_ns=time.monotonic_ns())
                next_progress += PROGRESS_EVERY_S
        p = rng.randrange(pages)
        off = p * PAGE_SIZE
        t0 = time.monotonic_ns()
        check = check_page(mm[off:off + PAGE_SIZE], p, gen[p])  # the page-in, if out
        if check is PageCheck.OK:
            gen[p] += 1
            mm[off:off + PAGE_SIZE] = make_page(p, gen[p])
        t1 = time.monotonic_ns()
        touches += 1
        if check is not PageCheck.OK or t1 - t0 >= late_ns:
            emit(**Touch(p, t0, t1, check).to_json())
    bad: dict[int, PageCheck] = {}
    for p in range(pages):
        c = check_page(mm[p * PAGE_SIZE:(p + 1) * PAGE_SIZE], p, gen[p])
        if c is not PageCheck.OK:
            bad[p] = c
    emit(**Sweep(pages, touches, bad).to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

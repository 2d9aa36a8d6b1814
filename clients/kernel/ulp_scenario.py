"""What every kernel-client (ULP) scenario shares: the transition's window and the
moment the device was back, the sysctl a scenario lowers for its duration, and the
bounded waits on the I/O driver.

    win = window_of(tres)           # Window(start: the device went, end: all steps done)
    back_ns(tres)                   # the device back: the end of the last back step
    set_sysctl(state, HUNG_TASK, 10); ...; restore_sysctl(state, HUNG_TASK)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from harness.core.errors import BoundExceeded
from harness.core.state import StateFile
from harness.workload.block_ledger import IoOutcome, IoRecord, LedgerSummary, Window, outcome
from harness.workload.coverage import Coverage, Span
from harness.workload.findings import Finding, Severity, of_severity
from power import kmsg
from power.plan import DEVICE_AWAY_STEPS, DEVICE_BACK_STEPS, StepKind
from power.result import StepRecord, Verdict, fault_window

PROGRESS_TIMEOUT_S = 60.0  # the workload reaches its transition point
HUNG_TASK_TIMEOUT_S = 10  # the guest's hung_task_timeout_secs during a scenario
HUNG_TASK = "kernel.hung_task_timeout_secs"
# after the client settled: an I/O submitted once the device was back answers within this
# (a soft NFS mount's major timeouts, 1 s then 2 s, slowed; a hard mount's stuck I/O waits
# for timeo 60 s and is reported stuck instead)
ANSWER_AFTER_BACK_TIMEOUT_S = 20.0
POLL_S = 0.05
# a delete that reached the device's uverbs nodes this late was held by a kernel client's
# removal (the `rdma` program's own start-up took at most 0.8 s, measured under load)
KERNEL_HOLD_MIN_S = 2.0
BROKEN, BAD, NOTE = Severity.BROKEN, Severity.BAD, Severity.NOTE


class Issuing(Protocol):
    @property
    def issued(self) -> int: ...


class Answering(Protocol):
    def answered_after(self, t_ns: int) -> bool: ...


def set_sysctl(state: StateFile, key: str, value: int) -> None:
    """Change a sysctl for the scenario, its old value recorded first."""
    path = Path("/proc/sys") / key.replace(".", "/")
    old = path.read_text().strip()
    state.record("sysctl", key=key, old=old)
    path.write_text(str(value))


def restore_sysctl(state: StateFile, key: str) -> None:
    for e in state.created:
        if e["kind"] == "sysctl" and e["key"] == key:
            (Path("/proc/sys") / key.replace(".", "/")).write_text(e["old"])
            state.forget(**e)


def wait_issued(drv: Issuing, n: int) -> None:
    end = time.monotonic() + PROGRESS_TIMEOUT_S
    while drv.issued < n:
        if time.monotonic() > end:
            raise BoundExceeded("I/O progress before the transition", "PROGRESS_TIMEOUT_S",
                                PROGRESS_TIMEOUT_S, f"{drv.issued} of {n} I/Os issued")
        time.sleep(POLL_S)


def wait_answered_after(drv: Answering, back: int | None) -> float | None:
    """After the client settled: wait until an I/O submitted once the device was back has
    completed (succeeded or failed), within ANSWER_AFTER_BACK_TIMEOUT_S; the seconds it
    took, None when the bound ran out (the row's ledger then shows what was stuck) or the
    device never came back. Beside a CPU hog (CI 18), a soft NFS mount's I/O in flight
    failed with EIO only after its major timeouts, later than the settle plus
    AFTER_SETTLE_S: no I/O after the device was back, the row `missed` though the mount
    was fine."""
    if back is None:
        return None
    t0 = time.monotonic()
    end = t0 + ANSWER_AFTER_BACK_TIMEOUT_S
    while not drv.answered_after(back):
        if time.monotonic() > end:
            return None
        time.sleep(POLL_S)  # polling interval of the bounded wait
    return round(time.monotonic() - t0, 3)


def run_on(seconds: float) -> None:
    """Let the workload run on for `seconds` (it is paced: this is its duration)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(POLL_S)


def window_of(tr: dict[str, Any]) -> Window | None:
    """From the first step that took the device away (power.plan.DEVICE_AWAY_STEPS: port
    down, delete, the kernel's suspend in the pm-test and mlx5-order models) to the end of
    the last step; None when no such step ran."""
    steps = [s for s in tr.get("steps", []) if s["outcome"] != "skipped"]
    away = {k.value for k in DEVICE_AWAY_STEPS}
    down = [s["begin_ns"] for s in steps if s["step"] in away]
    if not down:
        return None
    return Window(min(down), max(s["end_ns"] for s in steps))


def began_ns(tr: dict[str, Any], kind: StepKind) -> int | None:
    return next((s["begin_ns"] for s in tr.get("steps", []) if s["step"] == kind.value
                 and s["outcome"] != "skipped"), None)


def back_ns(tr: dict[str, Any]) -> int | None:
    """When the device was back: the end of the last step of power.plan.DEVICE_BACK_STEPS
    that succeeded (port-up in the userspace model, where it follows create-device; the
    device's return in mlx5-order; the kernel's resume in pm-test)."""
    back = {k.value for k in DEVICE_BACK_STEPS}
    ends = [s["end_ns"] for s in tr.get("steps", []) if s["outcome"] == "ok"
            and s["step"] in back and s["end_ns"]]
    return int(max(ends)) if ends else None


def recover_ms(records: list[IoRecord], win: Window, back: int | None) -> float | None:
    """The device was back -> the first I/O that completed after that and did not fail
    to the application (ms); None if none did, or the device never came back."""
    oks = [r.done_ns for r in records if r.done_ns and back is not None
           and r.done_ns >= back and outcome(r, win) is not IoOutcome.FAILED_TO_APP]
    return (min(oks) - back) / 1e6 if oks and back is not None else None


def io_coverage(records: list[IoRecord], tres: dict[str, Any]) -> Coverage | None:
    """How the block I/O met the transition (harness.workload.coverage): each I/O from its
    submission to its completion (None: stuck). None when no step ran."""
    win = fault_window([StepRecord.from_json(s) for s in tres.get("steps", [])])
    if win is None:
        return None
    return Coverage.of((Span(r.submit_ns, r.done_ns) for r in records), win)


def judge(ledger: LedgerSummary, conns: list[Any], bad_conns: list[Any], scan: kmsg.KmsgScan,
          tres: dict[str, Any], hang: Any = None,
          dev: str = "rxe0", coverage: Coverage | None = None) -> list[Finding]:
    """The row's findings from what was measured (its status: RowStatus.of). `hang`: an
    nvme_hang.HangReport when a controller held the device's delete. `coverage`: how the
    I/O met the transition; the I/O runs on past it by construction (until the client
    settled, and more), so none crossing it or none after it makes the row no measurement
    (`missed`)."""
    fs: list[Finding] = []
    # a held delete stops the I/O (nothing can run after a transition that never ended):
    # then only I/O crossing it is required
    missed = coverage.missed(require_after=hang is None) if coverage is not None else []
    if hang is not None:
        # a finding of the kernel's, not of the harness: the row stays readable (bad). Only
        # a hang the harness could not end (or a local side it could not restore) breaks it
        fs += of_severity(BAD if hang.recovered else BROKEN, hang.findings(dev))
    if not any(c.phase == "before" for c in conns):
        fs.append(Finding(BROKEN, "no connection of the client seen in `rdma res show cm_id` "
                                  "before the transition: which device it used cannot be "
                                  "shown"))
    if ledger.unaccounted:
        fs.append(Finding(BROKEN, f"{len(ledger.unaccounted)} I/O unaccounted: seqs "
                                  f"{ledger.unaccounted[:10]}"))
    for c in bad_conns:
        fs.append(Finding(BROKEN, f"connection {c.src}->{c.dst} on {c.dev} ({c.phase}) did "
                                  "not cross the wire (loopback on one kernel): the row "
                                  "cannot be trusted"))
    dd = next((s for s in tres.get("steps", []) if s["step"] == StepKind.DELETE_DEVICE.value
               and s["outcome"] == "ok"), None)
    if dd is not None and dd["detail"].get("veto"):
        # the delete blocked, then finished within the shim's bounds: a shorter hold
        fs.append(Finding(NOTE, f"the delete of {dev} blocked {dd['detail']['blocked_s']:.2f} "
                                "s (the veto report says whether a process held it; else the "
                                "kernel client did)"))
    if dd is not None and (dd["detail"].get("start_s") or 0) >= KERNEL_HOLD_MIN_S:
        # a kernel client's removal runs before ib_uverbs' and held the delete this long
        # before the device's uverbs nodes went (measured: an idle nvme controller,
        # nvme_core admin_timeout 5 s: 5.3-5.5 s), within the shim's bounds
        fs.append(Finding(NOTE, f"the delete of {dev} reached its uverbs nodes only "
                                f"{dd['detail']['start_s']:.2f} s after it began: a kernel "
                                "client's removal held it (and the sleep) that long"))
    if verdict_of(tres) is Verdict.FAILED and not scan.hits and hang is None:
        fs.append(Finding(BROKEN, "transition failed: " + "; ".join(tres.get("reasons", []))))
    if ledger.lost_seqs:
        fs.append(Finding(BAD, f"{len(ledger.lost_seqs)} acknowledged write(s) lost on the "
                               "target"))
    if ledger.corrupted_seqs:
        fs.append(Finding(BAD, f"{len(ledger.corrupted_seqs)} acknowledged write(s) "
                               "corrupted"))
    if ledger.reads_bad:
        fs.append(Finding(BAD, f"{ledger.reads_bad} read(s) returned other data than written"))
    if ledger.count(IoOutcome.STUCK):
        fs.append(Finding(BAD, f"{ledger.count(IoOutcome.STUCK)} I/O stuck"))
    fs += [Finding(BAD, f"kernel log: {h.pattern}: {h.record.message}") for h in scan.hits]
    return fs + of_severity(Severity.MISSED, missed)


def verdict_of(tres: dict[str, Any]) -> Verdict | None:
    """A transition result's verdict, typed (None: the record has none)."""
    v = tres.get("verdict")
    return Verdict(v) if v is not None else None

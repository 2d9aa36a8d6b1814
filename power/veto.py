"""Delete the local device with veto detection: say who blocks it, then wait or force.

On rxe `rdma link delete` blocks in the kernel (ib_uverbs_remove_one, state D)
while any process holds one of the device's uverbs files: rxe has no
disassociate_ucontext, so holders are never told to let go. Holding the device
is a veto. The delete is issued from a child process; if it has not finished
within VETO_DETECT_S the shim records the veto with the holders (pid, command
line, uverbs files) and applies the policy:

- wait: give the holders up to `veto_wait_s`; if they let go the sleep went
  ahead late, otherwise it is reported as vetoed. The blocked delete cannot be
  withdrawn (the kernel is already tearing the device down; it has vanished from
  `rdma link`), so it stays pending until the holders exit; the report says so.
- force: terminate the holders (SIGTERM, then SIGKILL after STOP_GRACE_S),
  as an OS that cannot wait would, and report each pid and how it ended.

With a module that disassociates (`--removal disassociate`) holding the device is no
veto: ib_uverbs_remove_one destroys the holders' objects itself. It still waits for
every uverbs command in progress on the device (uverbs_disassociate_api_pre:
synchronize_srcu; uverbs_destroy_ufile_hw: the file's hw_destroy_rwsem), and such a
command can sleep in the driver (measured: a client's DESTROY_QP, issued while it let go
of the device after PORT_ERR, waited 2.8 s in rxe's __rxe_cleanup for the QP's last
reference, and the delete with it). A process in the kernel takes a signal only when
its call returns, so terminating it gains nothing and ends a client that was letting go.
The shim then records what the delete waits for (the kernel's view: which process, in
which call, on which file, where the delete sleeps) and waits for it up to
DISASSOCIATE_DELETE_TIMEOUT_S: a slow delete, not a veto; past that bound, the veto
policy applies.

The device's uverbs files are read from sysfs *before* the delete starts: once
it starts they vanish from /sys/class/infiniband_verbs.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from harness.core.errors import BoundExceeded, TopologyError
from harness.core.proc import STOP_GRACE_S, ProcessRef, Stopped, stop_processes
from harness.system.holders import SYSFS_VERBS, Holder, find_holders, uverbs_files
from harness.system.kstacks import ThreadInKernel, blocked_tasks, process_in_kernel
from harness.topology.devices import start_rdma_link_delete
from power.plan import OnVeto

VETO_DETECT_S = 0.5  # a delete still blocked this long after it reached the kernel is a veto
DELETE_START_TIMEOUT_S = 10.0  # `rdma link delete` spawned -> the kernel deleting (its start)
DELETE_START_POLL_S = 0.005
VETO_WAIT_TIMEOUT_S = 5.0  # default bound for --on-veto wait
DELETE_AFTER_RELEASE_TIMEOUT_S = 10.0  # holders gone -> delete finished
# Under disassociate, the delete waits for the commands in progress on the device; the
# longest a command of rxe sleeps is its destroy waiting for the object's last reference,
# bounded by rxe itself at 50 s (__rxe_cleanup: wait_for_completion_timeout(50000 ms),
# then a WARNING and the object is freed anyway); 10 s more for the rest of the delete
DISASSOCIATE_DELETE_TIMEOUT_S = 60.0


@dataclass
class VetoReport:
    detected: bool = False
    policy: str = ""
    blocked_s: float = 0.0  # how long the delete blocked (until done or given up)
    # at detection: pid, cmdline, files
    holders: list[dict[str, Any]] = field(default_factory=list)
    # pid, cmdline, how (term/kill/gone)
    terminated: list[dict[str, Any]] = field(default_factory=list)
    vetoed: bool = False  # the sleep did not happen
    delete_pending_pid: int | None = None  # the blocked `rdma link delete` left behind
    reason: str = ""
    start_s: float = 0.0  # `rdma link delete` spawned -> the kernel deleting
    # the processes that had the device's uverbs files open when the delete was started:
    # a delete that completed with holders is one that disassociated them
    held_at_start: list[int] = field(default_factory=list)
    # at detection, the kernel's view (harness.system.kstacks): the delete's own threads,
    # each holder's threads (their call, its file, their stack), every task in state D
    kernel_view: dict[str, Any] = field(default_factory=dict)
    # the module disassociates and the delete was still running at VETO_DETECT_S: it
    # waited for the calls in `waited_for` (a holder's thread in a call on one of the
    # device's uverbs files: pid, cmdline, tid, syscall, file, stack), not a veto
    slow: bool = False
    waited_for: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VetoReport:
        return cls(**d)


def _finished(proc: subprocess.Popen[Any], timeout_s: float) -> bool:
    try:
        proc.wait(max(timeout_s, 0.0))
        return True
    except subprocess.TimeoutExpired:
        return False


def _wait_started(proc: subprocess.Popen[Any], files: set[str],
                  timeout_s: float = DELETE_START_TIMEOUT_S) -> float:
    """When (time.monotonic()) the delete reached the kernel: the device's uverbs sysfs
    nodes gone, or the program done; at most `timeout_s` from now (then: now)."""
    t0 = time.monotonic()
    nodes = [SYSFS_VERBS / os.path.basename(f) for f in files]
    while proc.poll() is None and any(n.exists() for n in nodes):
        if time.monotonic() - t0 > timeout_s:
            break
        time.sleep(DELETE_START_POLL_S)
    return time.monotonic()


def _check_rc(proc: subprocess.Popen[Any], dev: str) -> None:
    if proc.returncode != 0:
        err = proc.stderr.read().strip() if proc.stderr else ""
        raise TopologyError(f"rdma link delete {dev} failed (exit {proc.returncode}): {err}",
                            "is the device present and ours? see `rdma link show`")


def terminate_holders(holders: list[Holder],
                      timeout_s: float = STOP_GRACE_S) -> list[dict[str, Any]]:
    """SIGTERM every holder, SIGKILL what is left after the bound. Never ourselves, and
    only the process that was found holding (pid and start time from the scan)."""
    out: list[dict[str, Any]] = []
    refs: list[ProcessRef] = []
    for h in holders:
        rec = {"pid": h.pid, "cmdline": h.cmdline}
        if h.pid == os.getpid():
            out.append({**rec, "how": "not terminated: it is the shim's own process (an "
                        "in-process client kept the device open)"})
        elif h.start is None or not (ref := ProcessRef(h.pid, h.start)).present():
            # gone, or the pid now names another process: the one found holding is gone
            out.append({**rec, "how": Stopped.ALREADY_GONE.value})
        else:
            refs.append(ref)
    how = stop_processes(refs, grace_s=timeout_s, gone_timeout_s=timeout_s)
    cmd = {h.pid: h.cmdline for h in holders}
    return out + [{"pid": r.pid, "cmdline": cmd[r.pid], "how": how[r.pid].value} for r in refs]


def calls_in_progress(view: dict[str, Any], holders: list[Holder]) -> list[dict[str, Any]]:
    """The holders' threads that are in a call on one of their uverbs files of the device:
    the commands a disassociating delete waits for."""
    out = []
    for h in holders:
        for t in view.get("holders", {}).get(str(h.pid), []):
            if t.get("file", "").removesuffix(" (deleted)") in h.files:
                out.append({"pid": h.pid, "cmdline": h.cmdline, **t})
    return out


def describe_wait(report: VetoReport, dev: str) -> str:
    """Where the delete waited and for whom, from the kernel's view at detection."""
    delete = [ThreadInKernel.from_json(t) for t in report.kernel_view.get("delete", [])]
    where = " <- ".join(delete[0].stack[:5]) if delete and delete[0].stack else "?"
    calls = "; ".join(f"pid {c['pid']} ({c['cmdline'][:60]}) {c['syscall']} on {c['file']} "
                      f"in {' <- '.join(c['stack'][:4]) or c['wchan']}"
                      for c in report.waited_for)
    return (f"the delete of {dev} waited {report.blocked_s:.3f} s in the kernel ({where}) "
            + (f"for a command in progress: {calls}" if calls else
               "with no holder in a call on the device (see the kernel view)")
            + "; the module disassociates, so its holders are no veto: nothing terminated")


def kernel_view(delete_pid: int, holders: list[Holder]) -> dict[str, Any]:
    """What the blocked delete and each holder are doing in the kernel, at one moment."""
    return {"delete": [t.to_json() for t in process_in_kernel(delete_pid)],
            "holders": {str(h.pid): [t.to_json() for t in process_in_kernel(h.pid)]
                        for h in holders},
            "blocked": blocked_tasks()}


class Note(Protocol):
    """Where delete_device records its progress (the shim: on the timeline)."""

    def __call__(self, what: str, **detail: Any) -> None: ...


def _no_note(what: str, **detail: Any) -> None:
    """Records nothing (delete_device without a timeline)."""


def delete_device(dev: str, on_veto: OnVeto, veto_wait_s: float = VETO_WAIT_TIMEOUT_S,
                  note: Note = _no_note, disassociates: bool = False) -> VetoReport:
    """Delete `dev`, detecting and handling a veto; never blocks past its bounds.

    `note(what, **detail)` records progress (the shim puts it on the timeline).
    `disassociates`: the loaded module disassociates holders (see the module's text).
    Raises BoundExceeded only when even the forced path cannot finish the delete.
    """
    files = uverbs_files(dev)
    report = VetoReport(policy=on_veto.value)
    report.held_at_start = sorted(h.pid for h in find_holders(dev, files=files)
                                  if h.pid != os.getpid())
    spawned = time.monotonic()
    proc = start_rdma_link_delete(dev)
    note("delete started", pid=proc.pid, uverbs=sorted(files), held_by=report.held_at_start)
    # Holders get VETO_DETECT_S from when the kernel starts deleting (the device's uverbs
    # nodes vanish), not from the spawn: the `rdma` program's own start-up took 0.2-0.8 s
    # under a loaded emulator, which left clients that watch the nodes almost no time.
    t0 = _wait_started(proc, files)
    report.start_s = t0 - spawned
    note("delete reached the kernel", after_s=round(report.start_s, 4))
    if _finished(proc, VETO_DETECT_S):
        _check_rc(proc, dev)
        report.blocked_s = time.monotonic() - t0
        return report

    holders = find_holders(dev, files=files)
    report.holders = [h.to_json() for h in holders]
    report.kernel_view = kernel_view(proc.pid, holders)
    if disassociates:
        report.waited_for = calls_in_progress(report.kernel_view, holders)
        note(f"delete still running after {time.monotonic() - t0:.3f} s: waiting in the "
             "kernel", waits_for=[f"pid {c['pid']} {c['syscall']} on {c['file']}"
                                  for c in report.waited_for])
        if _finished(proc, DISASSOCIATE_DELETE_TIMEOUT_S - (time.monotonic() - t0)):
            _check_rc(proc, dev)
            report.blocked_s = time.monotonic() - t0
            report.slow = True
            report.reason = describe_wait(report, dev)
            note(report.reason)
            return report
        holders = find_holders(dev, files=files)  # past the bound: the veto policy applies
    report.detected = True
    report.blocked_s = time.monotonic() - t0
    note(f"delete blocked {report.blocked_s:.3f} s: device held", veto=True,
         holders=[h.describe() for h in holders] or ["no holder found in /proc"])

    if on_veto is OnVeto.WAIT:
        if _finished(proc, veto_wait_s - (time.monotonic() - t0)):
            _check_rc(proc, dev)
            report.blocked_s = time.monotonic() - t0
            report.reason = f"holders let go after {report.blocked_s:.3f} s; the sleep went late"
            return report
        report.blocked_s = time.monotonic() - t0
        report.vetoed = True
        report.delete_pending_pid = proc.pid
        still = find_holders(dev, files=files)
        report.reason = (f"vetoed: the delete of {dev} blocked {report.blocked_s:.3f} s "
                         f"(bound veto_wait_s={veto_wait_s:g}) held by "
                         + ("; ".join(h.describe() for h in still) or "nobody visible")
                         + f"; the delete stays pending in pid {proc.pid} until they exit")
        return report

    report.terminated = terminate_holders(holders)
    for t in report.terminated:
        note(f"holder pid {t['pid']} {t['how']}", pid=t["pid"], cmdline=t["cmdline"])
    if not _finished(proc, DELETE_AFTER_RELEASE_TIMEOUT_S):
        left = find_holders(dev, files=files)
        raise BoundExceeded(f"rdma link delete {dev} after terminating its holders",
                            "DELETE_AFTER_RELEASE_TIMEOUT_S", DELETE_AFTER_RELEASE_TIMEOUT_S,
                            "still held by: " + ("; ".join(h.describe() for h in left)
                                                 or "nobody visible in /proc"))
    _check_rc(proc, dev)
    report.blocked_s = time.monotonic() - t0
    report.reason = (f"forced: terminated {len(report.terminated)} holder(s); the delete "
                     f"finished after {report.blocked_s:.3f} s")
    return report

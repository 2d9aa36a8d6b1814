"""A kernel client that holds the local device: found, bounded, reported, recovered.

When the shim deletes rxe0, `ib_unregister_device` calls every ib_client's remove();
nvme-rdma's (`nvme_rdma_remove_one`) deletes the controllers on the device and waits for
the deletes to finish. A delete that cannot finish holds `rdma link delete rxe0` (and so
the sleep) behind it: the shim's delete-device step fails (no process to end: the holder
is the kernel) and its `rdma link delete` stays pending. This module finds that state
after the transition (our pending delete, a typed record in the state file), waits a
bounded time for the kernel to finish it, reports what held it (the controller's state
and for how long, the tasks in D state with their kernel stacks, the kernel log after
the scenario's marker: hung-task reports, nvme lines), and restores the local side for
what runs next.

    held = pending(cfg)                      # pids of our blocked `rdma link delete`
    rep = wait_out(cfg, host_find, samples, held, delete_began_ns, tail, marker)
    rep.recovered, rep.findings()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import RxePowerError
from harness.core.printer import NULL, Printer
from harness.system import kernelobjs as ko
from harness.system import kstacks
from harness.topology import devices, lifecycle
from harness.topology.config import TopologyConfig
from power import kmsg

# delete-device began -> the held delete finished. The kernel ends the hold itself when
# the controller's commands time out: an I/O queued on the dead port after nvme_core's
# io_timeout (30 s by default), the shutdown's Property Set after its admin_timeout
# (60 s); both are read and reported. 100 s covers the defaults with a margin.
HELD_DELETE_TIMEOUT_S = 100.0
HELD_POLL_S = 0.1
DELETE_CTRL_TIMEOUT_S = 5.0  # our own delete_controller write on the held controller
TRACE_RECORDS = 40  # kernel log records kept after each hung-task report
MAX_D_TASKS = 12
ADMIN_TIMEOUT = Path("/sys/module/nvme_core/parameters/admin_timeout")
IO_TIMEOUT = Path("/sys/module/nvme_core/parameters/io_timeout")


def pending(cfg: TopologyConfig) -> list[int]:
    """Pids of our `rdma link delete` of the local device still blocked in the kernel."""
    return devices.pending_deletes(cfg.local_dev)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def d_state_tasks(limit: int = MAX_D_TASKS) -> list[dict[str, Any]]:
    """Every task in D state now (kernel threads included): pid, tid, comm, wchan, stack
    (function names), the system call and file it is in (harness.system.kstacks)."""
    return kstacks.blocked_tasks(limit=limit)


@dataclass
class HangReport:
    """What held the local device's delete, how long, and how it ended."""

    held_pids: list[int]  # our `rdma link delete` blocked behind the kernel client
    ctrl: str | None
    ctrl_state: str  # our controller's state when the hang was found
    ctrl_state_since_ms: float | None  # how long it had been in that state by then
    admin_timeout_s: int | None  # nvme_core's bound on a fabrics/admin command
    io_timeout_s: int | None
    tasks: list[dict[str, Any]] = field(default_factory=list)  # D state when found
    delete_controller: str = ""  # what our own delete_controller write did
    held_ms: float | None = None  # delete-device began -> the delete finished
    ctrl_states_after: list[str] = field(default_factory=list)  # what it went through
    released: bool = False  # the delete finished within HELD_DELETE_TIMEOUT_S
    restored: list[str] = field(default_factory=list)  # problems restoring the local side
    kernel: list[str] = field(default_factory=list)  # hung-task reports and nvme lines
    hung_task_reports: int = 0

    @property
    def recovered(self) -> bool:
        return self.released and not self.restored

    def findings(self, dev: str) -> list[str]:
        since = ("" if self.ctrl_state_since_ms is None
                 else f" for {self.ctrl_state_since_ms / 1000:.1f} s")
        out = [f"the kernel client held {dev}: `rdma link delete {dev}` (pid "
               f"{', '.join(map(str, self.held_pids))}) stayed pending behind nvme controller "
               f"{self.ctrl} in state {self.ctrl_state!r}{since} "
               f"(nvme_core admin_timeout {self.admin_timeout_s} s)"]
        if self.released:
            out.append(f"the delete finished {(self.held_ms or 0) / 1000:.1f} s after it "
                       "began (the kernel let go: no action of the harness ends it)")
        else:
            out.append(f"the delete was still pending HELD_DELETE_TIMEOUT_S="
                       f"{HELD_DELETE_TIMEOUT_S:g}s after it began")
        if self.delete_controller:
            out.append(f"our own delete_controller on {self.ctrl}: {self.delete_controller}")
        if self.hung_task_reports:
            out.append(f"kernel log: {self.hung_task_reports} hung-task report(s)")
        out += [f"local side not restored: {p}" for p in self.restored]
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"recovered": self.recovered}


def _int_param(path: Path) -> int | None:
    raw = _read(path)
    return int(raw) if raw.isdigit() else None


def _state_since(samples: list[Any], ctrl: str | None, now_ns: int) -> tuple[str, float | None]:
    mine = [s for s in samples if s.ctrl == ctrl]
    if not mine:
        return "absent", None
    last = mine[-1]
    return last.state, (now_ns - last.t_ns) / 1e6


def kernel_lines(records: list[kmsg.KmsgRecord], marker: kmsg.Marker) -> tuple[list[str], int]:
    """The records after the marker worth reading: each hung-task report with the trace
    after it (TRACE_RECORDS), and every nvme / rdma line. Returns (lines, reports)."""
    after = sorted((r for r in records if r.seq > marker.after_seq), key=lambda r: r.seq)
    keep: set[int] = set()
    reports = 0
    for i, r in enumerate(after):
        if kmsg.match_record(r) == "hung task" and "blocked for more than" in r.message:
            reports += 1
            keep.update(x.seq for x in after[i:i + TRACE_RECORDS])
        elif r.message.startswith(("nvme", "rdma", "rxe", "infiniband")):
            keep.add(r.seq)
    return [f"[{r.ts_us / 1e6:12.6f}] {r.message}" for r in after if r.seq in keep], reports


def wait_out(cfg: TopologyConfig, find_ctrl: Callable[[], ko.NvmeCtrl | None],
             samples: list[Any], ctrl: str | None, held: list[int], delete_began_ns: int | None,
             tail: kmsg.Tail, marker: kmsg.Marker, out: Printer = NULL) -> HangReport:
    """Report what holds the delete, wait (bounded) for the kernel to finish it, restore
    the local side. Never waits on the blocked child itself (it is in D state)."""
    log = out  # (for lifecycle's call below, whose parameter another change renames)
    now = time.monotonic_ns()
    found = find_ctrl()
    state, since = _state_since(samples, ctrl, now)
    if found is not None:
        state = found.state
    rep = HangReport(held, found.name if found else ctrl, state, since,
                     _int_param(ADMIN_TIMEOUT), _int_param(IO_TIMEOUT), d_state_tasks())
    out(f"hang: delete of {cfg.local_dev} pending in {held}; controller {rep.ctrl} "
        f"{state!r}; waiting up to HELD_DELETE_TIMEOUT_S={HELD_DELETE_TIMEOUT_S:g}s")
    if rep.ctrl is not None:
        # what the issue suggested: delete the stuck controller ourselves. Measured (6.1):
        # on a controller the kernel is already deleting the write does nothing
        try:
            ko.delete_ctrl(rep.ctrl, timeout_s=DELETE_CTRL_TIMEOUT_S)
            rep.delete_controller = "deleted"
        except RxePowerError as exc:
            rep.delete_controller = exc.problem
    began = delete_began_ns if delete_began_ns is not None else now
    end_ns = began + int(HELD_DELETE_TIMEOUT_S * 1e9)
    last = state
    rep.ctrl_states_after.append(state)
    while True:
        left = pending(cfg)
        c = find_ctrl()
        cur = c.state if c else "absent"
        if cur != last:
            rep.ctrl_states_after.append(cur)
            last = cur
        if not left:
            rep.released = True
            rep.held_ms = round((time.monotonic_ns() - began) / 1e6, 1)
            break
        if time.monotonic_ns() > end_ns:
            break
        time.sleep(HELD_POLL_S)
    if rep.released:
        try:
            rep.restored = lifecycle.restore_local_side(cfg, log=log, pending_timeout_s=0.0)
        except RxePowerError as exc:
            rep.restored = [str(exc)]
    else:
        rep.restored = [f"{cfg.local_dev}'s delete still pending in {pending(cfg)}"]
    rep.kernel, rep.hung_task_reports = kernel_lines(list(tail.read()), marker)
    return rep

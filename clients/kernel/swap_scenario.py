"""Swap on the fabric: the only swap area of the local kernel on an nvme-rdma namespace
served by the peer, a process paging to it under its cgroup's memory limit, and one
transition through the shim while pages go out and come in (issue 26's first lane).

    res = run_swap(shim, cfg, SwapScenario("standby", Ordering.HCA_FIRST))
    res.pages.fates, res.fate.process, res.status, res.findings

The transition starts once the process is paging both ways (the kernel's pswpout and
pswpin moved since it filled its pages: measured, not waited for), and it keeps touching
pages through it; after the transition (the controller settled) it runs on AFTER_S, then
checks every page once more. A row is `missed` when no page moved and no touch happened
while the device was away. The process's fate and every page's (harness.workload.
page_ledger) make the row: a page lost or corrupted, or the process killed or stuck, is
`bad`; a swap area that cannot be taken off is `broken` (what was left is said).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clients.kernel import nvme_hang, route_guard
from clients.kernel.nvme_host import CtrlSampler, HostConfig, NvmeHost, parse_policy
from clients.kernel.nvme_scenario import ADMIN_TIMEOUT_PARAM, settle_ctrl
from clients.kernel.nvmet_target import NvmetTarget, TargetConfig, modprobe
from clients.kernel.paging_process import Fate, PagingProcess
from clients.kernel.ulp_scenario import (
    HUNG_TASK,
    HUNG_TASK_TIMEOUT_S,
    back_ns,
    began_ns,
    restore_sysctl,
    run_on,
    set_sysctl,
    window_of,
)
from harness.core.errors import BoundExceeded, RxePowerError
from harness.core.state import StateFile
from harness.system import kernelobjs as ko
from harness.system.paging_objs import PagingCgroup, Swap, flat_keyed
from harness.topology.config import TopologyConfig
from harness.workload.findings import Finding, RowStatus, Severity, of_severity, texts
from harness.workload.page_ledger import PageFate, PageLedger, ProcessFate
from power import kmsg
from power.plan import OnVeto, Ordering, StepKind
from power.result import TransitionRequest
from power.shim import Shim

VMSTAT = Path("/proc/vmstat")
PAGING_TIMEOUT_S = 60.0  # after the fill: pages going out and coming in
SETTLE_TIMEOUT_S = 30.0  # after the transition: our controller LIVE again, or gone
AFTER_S = 3.0  # the process pages on this long after the controller settled
MIN_PAGED = 64  # pages out and in (each) before the transition starts
POLL_S = 0.05
BAD, BROKEN, NOTE, MISSED = Severity.BAD, Severity.BROKEN, Severity.NOTE, Severity.MISSED


@dataclass(frozen=True)
class SwapScenario:
    transition: str
    ordering: Ordering = Ordering.HCA_FIRST
    policy: str = "nvme-rdma:fast-fail"  # the controller's options (clients.kernel.nvme_host)
    hold_ms: int | None = None
    pages: int = 8192  # the working set: 32 MiB
    # the pressure: memory.high, reclaimed to swap above it (throttled, not OOM-killed:
    # with memory.max at 12 MiB the process was SIGKILLed in its fill in one CI run, most
    # likely by the cgroup's OOM killer while reclaim waited on swap writes over the
    # fabric; its kernel log was not captured); memory.max is a backstop
    memory_high_mib: int = 12  # the working set is several times it
    memory_max_mib: int = 64
    size_mib: int = 96  # the namespace: the swap area
    seed: int = 1
    plants: tuple[str, ...] = ()  # the ledger's negative controls (paging_worker --plant)


@dataclass(kw_only=True)
class SwapResult:
    scenario: dict[str, Any]
    options: dict[str, Any]
    transition: dict[str, Any]
    pages: PageLedger
    fate: Fate
    paging: dict[str, Any]  # pswpin/pswpout before, during and after the transition
    cgroup_events: dict[str, int]  # memory.events of the process's group at the end
    settled: dict[str, Any]
    kernel: dict[str, Any]
    findings: list[str]
    status: RowStatus
    hang: dict[str, Any] | None = None
    teardown_left: list[str] = field(default_factory=list)

    def judged(self, fs: list[Finding]) -> None:
        self.findings, self.status = texts(fs), RowStatus.of(fs)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(pages=self.pages.to_json(), fate=self.fate.to_json(),
                 status=self.status.value)
        return d


def vmstat() -> dict[str, int]:
    return flat_keyed(VMSTAT.read_text())


def _paged(before: dict[str, int], now: dict[str, int]) -> tuple[int, int]:
    return (now.get("pswpout", 0) - before.get("pswpout", 0),
            now.get("pswpin", 0) - before.get("pswpin", 0))


def wait_paging(proc: PagingProcess, since: dict[str, int]) -> None:
    end = time.monotonic() + PAGING_TIMEOUT_S
    while True:
        out, in_ = _paged(since, vmstat())
        if out >= MIN_PAGED and in_ >= MIN_PAGED:
            return
        if not proc.alive():
            raise RxePowerError("the paging worker ended before it paged",
                                "read its cgroup's memory.events and the kernel log")
        if time.monotonic() > end:
            raise BoundExceeded("paging before the transition", "PAGING_TIMEOUT_S",
                                PAGING_TIMEOUT_S, f"pswpout +{out}, pswpin +{in_} (want "
                                f"{MIN_PAGED} each): is the limit below the working set?")
        time.sleep(POLL_S)


def judge(led: PageLedger, fate: Fate, during: tuple[int, int], touches_during: int,
          scan: kmsg.KmsgScan, hang: Any, dev: str) -> list[Finding]:
    fs: list[Finding] = []
    if fate.process is ProcessFate.STUCK:
        fs.append(Finding(BAD, f"the paging process is stuck in the kernel (state "
                               f"{fate.state}) past its bound: {' <- '.join(fate.stack[:6])}"))
    elif fate.process is not ProcessFate.ALIVE:
        fs.append(Finding(BAD, f"the paging process did not survive: {fate.process.value} "
                               f"(exit {fate.returncode})"))
    if led.fates[PageFate.LOST]:
        fs.append(Finding(BAD, f"{led.fates[PageFate.LOST]} of {led.pages} pages lost"))
    if led.fates[PageFate.CORRUPTED]:
        fs.append(Finding(BAD, f"{led.fates[PageFate.CORRUPTED]} of {led.pages} pages "
                               "corrupted"))
    if led.late_waits_ms:
        fs.append(Finding(NOTE, f"{len(led.late_waits_ms)} page fault(s) waited across the "
                                f"absence, the longest {led.late_waits_ms[0]:.0f} ms"))
    if hang is not None:
        fs += of_severity(BAD if hang.recovered else BROKEN, hang.findings(dev))
    fs += [Finding(BAD, f"kernel log: {h.pattern}: {h.record.message}") for h in scan.hits]
    if sum(during) == 0 and touches_during == 0 and not led.late_waits_ms:
        fs.append(Finding(MISSED, "no page went out or came in and no page was touched "
                                  "during the transition"))
    return fs


def run_swap(shim: Shim, cfg: TopologyConfig, sc: SwapScenario,
             state: StateFile | None = None) -> SwapResult:
    state = state or StateFile.load()
    opts = parse_policy(sc.policy)
    target = NvmetTarget(TargetConfig(addr=cfg.peer_addr, size_mib=sc.size_mib), state)
    host: NvmeHost | None = None
    swap: Swap | None = None
    grp: PagingCgroup | None = None
    proc: PagingProcess | None = None
    guard = None
    try:
        target.setup()
        guard = route_guard.install(cfg, state)
        set_sysctl(state, HUNG_TASK, HUNG_TASK_TIMEOUT_S)
        if opts.admin_timeout is not None:  # read when the controller is made: set first
            modprobe("nvme-rdma")  # (brings nvme_core, whose parameter it is)
            ko.set_module_param(state, ADMIN_TIMEOUT_PARAM, opts.admin_timeout)
        host = NvmeHost(HostConfig(target.cfg.nqn, cfg.peer_addr, target.cfg.trsvcid,
                                   cfg.local_addr, opts), state)
        host.connect()
        first_ctrl = host.ctrl
        assert host.block_device is not None
        swap = Swap(host.block_device, state)
        swap.on()
        grp = PagingCgroup(state, sc.memory_max_mib << 20,
                           memory_high=sc.memory_high_mib << 20).make()
        proc = PagingProcess(sc.pages, sc.seed, sc.plants)
        proc.start()
        grp.add(proc.pid)
        with kmsg.Tail() as tail, CtrlSampler() as ctrl_s:
            marker = kmsg.write_marker(f"swap nvme-rdma {sc.transition} {sc.ordering}",
                                       tail=tail)
            proc.go()
            try:
                proc.wait_filled()
            except RxePowerError as exc:  # what its group's counts say of its end
                raise RxePowerError(f"{exc.problem}; its cgroup's memory.events "
                                    f"{grp.events()}", exc.fix) from None
            wait_paging(proc, vmstat())
            v0, t0 = vmstat(), proc.touches
            req = TransitionRequest(sc.transition, sc.ordering, sc.hold_ms, OnVeto.FORCE)
            tres = shim.run(req).to_json()
            v1, t1 = vmstat(), proc.touches
            hang = None
            held = nvme_hang.pending(cfg)
            if held:  # the controller holds the device: nothing settles until it lets go
                hang = nvme_hang.wait_out(cfg, host.find, ctrl_s.samples, first_ctrl, held,
                                          began_ns(tres, StepKind.DELETE_DEVICE), tail,
                                          marker)
                settled = {"state": hang.ctrl_states_after[-1], "ctrl": hang.ctrl,
                           "waited_ms": hang.held_ms, "timed_out": not hang.released}
            else:
                settled = settle_ctrl(host, SETTLE_TIMEOUT_S)
                run_on(AFTER_S)
            v2 = vmstat()
            fate = proc.stop(grp.events().get("oom_kill", 0))
            scan = kmsg.scan_after(marker, tail=tail)
        win = window_of(tres)
        back = back_ns(tres)
        away = (win.start_ns, back) if win is not None and back is not None else \
            ((win.start_ns, 2**63) if win is not None else None)
        led = PageLedger.of(sc.pages, proc.events, away, fate.process)
        during = _paged(v0, v1)
        res = SwapResult(
            scenario=asdict(sc) | {"ordering": sc.ordering.value}, options=opts.to_json(),
            transition=tres, pages=led, fate=fate,
            paging={"during": {"out": during[0], "in": during[1]},
                    "after": dict(zip(("out", "in"), _paged(v1, v2), strict=True)),
                    "touches_during": t1 - t0, "problem": proc.problem},
            cgroup_events=grp.events(), settled=settled, kernel=scan.to_json(),
            findings=[], status=RowStatus.CLEAN, hang=hang.to_json() if hang else None)
        fs = judge(led, fate, during, t1 - t0, scan, hang, cfg.local_dev)
    finally:
        left = _teardown(state, target, host, swap, grp, proc, guard)
    if left:
        res.teardown_left = left
        fs += of_severity(BROKEN, [f"teardown: {p}" for p in left])
    res.judged(fs)
    return res


def _teardown(state: StateFile, target: NvmetTarget, host: NvmeHost | None,
              swap: Swap | None, grp: PagingCgroup | None, proc: PagingProcess | None,
              guard: dict[str, Any] | None) -> list[str]:
    """Newest first: the process and its group, the swap area, the controller, the
    target. What could not be removed stays in the state file (`rxe-power cleanup`)."""
    problems = []
    if proc is not None:
        proc.kill()
    if grp is not None:
        problems += grp.remove()
    swap_left = swap.off() if swap is not None else ""
    if swap_left:
        problems.append(swap_left)
    # a swap area still on the namespace: its controller stays (unless it is gone already)
    if host is not None and (not swap_left or host.find() is None):
        try:
            host.disconnect()
        except RxePowerError as exc:
            problems.append(str(exc))
    problems += target.teardown()
    if guard is not None:
        route_guard.remove(guard, state)
    restore_sysctl(state, HUNG_TASK)
    ko.restore_module_param(state, ADMIN_TIMEOUT_PARAM)
    return problems

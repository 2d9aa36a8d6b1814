"""The power shim: run one transition on the local HCA and report what happened.

    shim = Shim(TopologyConfig())
    shim.notifier.register(my_client)                 # in-process clients (optional)
    result = shim.run(TransitionRequest("standby", Ordering.CLIENTS_FIRST))

The run writes a marker into the kernel log, starts async event readers on both
HCAs (separate processes: see power.asyncevents), executes the transition's
steps in order stamping each on the timeline, polls both ports after every step,
and ends with: recovery of the local side if anything failed or was vetoed, a
kernel-log scan after the marker, and a verdict. It never hangs: every blocking
step has a bound, and a delete blocked by holders is a veto (see power.veto).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from harness.core.device import DeviceInfo
from harness.core.errors import RxePowerError, TopologyError
from harness.core.handlers import handler_for
from harness.core.printer import NULL, Printer
from harness.core.settings import PeerPlacement, RemovalMode
from harness.system import inventory, network, rxe_module
from harness.topology import devices, netdevs
from harness.topology.config import Endpoint, TopologyConfig
from harness.topology.sides import SameKernelSides, Sides, whole_problem
from power import kernel_suspend, kmsg, pmtest
from power.asyncevents import AsyncEventReader
from power.notify import Answer, AnswerKind, Notifier
from power.plan import KERNEL_SUSPEND_LEVEL, OnVeto, StepKind
from power.result import StepRecord, TransitionRequest, TransitionResult, Verdict
from power.timeline import EntryKind, Timeline
from power.transition_run import TransitionRun
from power.veto import delete_device

S = StepKind
PORT_EVENT_TIMEOUT_S = 2.0  # port DOWN -> its PORT_ERR event seen (the step goes on without)
# device-back: the shim's holder thawed -> its DEVICE_FATAL seen (TCG: thawing is slow)
FATAL_EVENT_TIMEOUT_S = 10.0


class Shim:
    def __init__(self, cfg: TopologyConfig, notifier: Notifier | None = None,
                 out: Printer = NULL, sides: Sides | None = None) -> None:
        """`sides`: where the HCAs live (harness.topology.sides): both in this kernel (the
        default), or the peer in its own guest, its port state read there and its async
        events out of reach."""
        self.cfg = cfg
        self.sides: Sides = sides or SameKernelSides()
        self.remote_peer = self.sides.placement is PeerPlacement.GUEST
        self.notifier = notifier or Notifier()
        self.out = out  # hears what recovering the local side did
        self._reader: AsyncEventReader | None = None
        self._current: TransitionRun | None = None
        self._disassociates: bool | None = None

    def start(self) -> None:
        """Start the async event reader process now, without waiting for it (the first
        run waits): a transition's notice then goes out without the reader's start-up
        (over a second under emulation) in front of it."""
        if self._reader is None:
            self._reader = AsyncEventReader(self._on_event, wait_ready=False)

    def close(self) -> None:
        """Stop the async event reader process (it holds no device between runs)."""
        if self._reader is not None:
            self._reader.stop()
            self._reader = None

    @property
    def disassociates(self) -> bool:
        """The loaded rdma_rxe disassociates holders when a device goes (our build), read
        once per shim from the module's own fields (harness.system.rxe_module)."""
        if self._disassociates is None:
            try:
                self._disassociates = rxe_module.current_removal() is RemovalMode.DISASSOCIATE
            except RxePowerError:
                self._disassociates = False
        return self._disassociates

    @property
    def reader_pid(self) -> int | None:
        """The async event reader's process (it holds the devices it reads), if running."""
        return self._reader.pid if self._reader is not None else None

    def __enter__(self) -> Shim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the run --------------------------------------------------------------------------

    def run(self, request: TransitionRequest) -> TransitionResult:
        req = request.resolved()
        tl = Timeline()
        run = TransitionRun(req, tl)
        why_not = self._unsupported(req)
        if why_not is not None:
            tl.add(EntryKind.NOTE, "shim", f"{req.name} unsupported: {why_not}")
            return TransitionResult(req, Verdict.UNSUPPORTED, [why_not],
                                    [StepRecord(s, "skipped") for s in req.steps], tl)
        before = self._precondition()
        with kmsg.Tail() as tail:  # the marker and the scan read only what comes after
            marker = kmsg.write_marker(f"{req.name} {req.ordering} hold={req.hold_ms}ms",
                                       tail=tail)
            tl.add(EntryKind.KMSG, "kernel", "marker", token=marker.token,
                   after_seq=marker.after_seq, written=marker.written)
            self._current = run
            try:
                if not self.remote_peer:  # the peer's async events: only in this kernel
                    self._open_events(run, self.cfg.peer_dev)
                self._open_events(run, self.cfg.local_dev)
                self._run_steps(run)
            finally:
                self._close_all_events(run)
                self._current = None
            not_restored = self._recover_if_needed(run)
            scan = kmsg.scan_after(marker, tail=tail)
        tl.add(EntryKind.KMSG, "kernel", "scan", ok=scan.ok, hits=len(scan.hits),
               records_after=scan.records_after)
        return run.verdict(scan, before.to_json(), not_restored, self.cfg.peer_dev)

    def _unsupported(self, req: TransitionRequest) -> str | None:
        """Why this kernel cannot run the request's sleep steps (None: it can)."""
        if S.PM_SUSPEND in req.steps and not (sup := pmtest.support(req.pm_level)).ok:
            return sup.reason
        if S.KERNEL_SUSPEND in req.steps and (
                why := kernel_suspend.unsupported_reason(self.disassociates)):
            return why
        return self.sides.unsupported(s.value for s in req.steps)

    def _precondition(self) -> Endpoint:
        """The local HCA before the transition (both ports ACTIVE, no delete pending)."""
        pend = devices.pending_deletes(self.cfg.local_dev)
        if pend:
            raise TopologyError(
                f"a delete of {self.cfg.local_dev} is still pending (pid "
                f"{', '.join(map(str, pend))}) from an earlier vetoed transition",
                "end the processes holding the old device, then run `rxe-power recover`")
        try:
            local, peer_state = self.sides.local(self.cfg), self.sides.peer_state(self.cfg)
        except TopologyError as exc:
            raise TopologyError(f"the topology is not whole before the transition: "
                                f"{exc.problem}", "run `rxe-power recover` (or setup)") from None
        if local.state != "ACTIVE" or peer_state != "ACTIVE":
            raise TopologyError(f"ports not ACTIVE before the transition: {local.dev}="
                                f"{local.state}, {self.cfg.peer_dev}={peer_state}",
                                "run `rxe-power recover`")
        return local

    def _on_event(self, dev: str, name: str, t_ns: int, rec: dict[str, Any]) -> None:
        run = self._current
        if run is not None:
            run.tl.add(EntryKind.ASYNC_EVENT, dev, name, t_ns=t_ns, code=rec.get("code"))
            with run.events:
                run.seen.append((dev, name, t_ns))
                run.events.notify_all()

    def _open_events(self, run: TransitionRun, dev: str) -> None:
        if self._reader is None:
            self._reader = AsyncEventReader(self._on_event)
        if dev in self._reader.open_devices:
            return
        self._reader.open(dev)
        run.tl.add(EntryKind.NOTE, "shim", f"async event reader opened {dev}",
                   pid=self._reader.pid)

    def _close_events(self, run: TransitionRun, dev: str) -> None:
        if self._reader is not None and dev in self._reader.open_devices:
            self._reader.close(dev)
            run.tl.add(EntryKind.NOTE, "shim",
                       f"async event reader closed {dev} (its Context holds the device)")

    def _close_all_events(self, run: TransitionRun) -> None:
        if self._reader is None:
            return
        try:
            for dev in sorted(self._reader.open_devices):
                self._close_events(run, dev)
        except RxePowerError as exc:  # a reader that cannot close is stopped outright
            run.tl.add(EntryKind.NOTE, "shim", f"async event reader stopped: {exc.problem}")
            self.close()

    def _run_steps(self, run: TransitionRun) -> None:
        steps = list(run.req.steps)
        resumed = False
        for i, step in enumerate(steps):
            if run.vetoed or run.failed:
                run.steps += [StepRecord(s, "skipped") for s in steps[i:]
                              if s is not S.NOTIFY_RESUME]
                break
            self._run_step(run, step)
            resumed |= step is S.NOTIFY_RESUME
        if not resumed and (run.vetoed or run.failed):
            # clients were (or may have been) told of a sleep: tell them how it ended,
            # once the local side is back
            problems = self.sides.restore(self.cfg, out=self.out, pending_timeout_s=0.0)
            run.tl.add(EntryKind.RECOVERY, "shim", "restore before resume notice",
                       problems=problems)
            if not problems:
                with contextlib.suppress(RxePowerError):
                    self._open_events(run, self.cfg.local_dev)
                self._run_step(run, S.NOTIFY_RESUME)
            else:
                run.steps.append(StepRecord(S.NOTIFY_RESUME, "skipped",
                                            error="the device could not be restored"))

    def _run_step(self, run: TransitionRun, step: StepKind) -> None:
        rec = StepRecord(step, "ok", begin_ns=time.monotonic_ns())
        run.tl.add(EntryKind.STEP_BEGIN, "shim", step.value, t_ns=rec.begin_ns)
        try:
            rec.detail = self._execute_step(run, step)
        except RxePowerError as exc:
            rec.outcome, rec.error = "failed", str(exc)
            run.failed = True
            run.reasons.append(f"step {step.value} failed: {exc.problem}")
        rec.end_ns = time.monotonic_ns()
        run.steps.append(rec)
        kind = EntryKind.STEP_END if rec.outcome == "ok" else EntryKind.STEP_FAILED
        run.tl.add(kind, "shim", step.value, t_ns=rec.end_ns, ms=round(rec.ms, 3),
                   **({"error": rec.error} if rec.error else {}))
        self._poll_ports(run)

    def _poll_ports(self, run: TransitionRun) -> None:
        try:
            states = {lk.ifname: lk.state for lk in inventory.rdma_links()}
        except RxePowerError as exc:
            run.tl.add(EntryKind.NOTE, "shim", f"cannot poll ports: {exc.problem}")
            return
        if self.remote_peer:
            states[self.cfg.peer_dev] = self.sides.peer_state(self.cfg)
        for dev in (self.cfg.local_dev, self.cfg.peer_dev):
            run.tl.add(EntryKind.PORT_STATE, dev, states.get(dev, "absent"))
        run.peer_states.append(states.get(self.cfg.peer_dev, "absent"))

    # --- the steps: step_<kind>, one per power.plan.StepKind (harness.core.handlers) ------

    def _execute_step(self, run: TransitionRun, step: StepKind) -> dict[str, Any]:
        """Do `step` with its step_<kind> method (one per power.plan.StepKind); the detail
        it returns goes on the step's record."""
        handler = handler_for(self, "step_", step.value, "give the shim a method for the step")
        detail: dict[str, Any] = handler(run)
        return detail

    def step_port_down(self, run: TransitionRun) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.monotonic_ns()
        self.sides.link_down(cfg)
        down = devices.wait_port_state(cfg.local_dev, "DOWN")
        # the step ends when the device's clients were told (PORT_ERR): the port state
        # changes first, the event follows from a kernel work queue; the reader must not
        # be closed (delete-device) before it came
        err = run.wait_event(cfg.local_dev, "PORT_ERR", t0, PORT_EVENT_TIMEOUT_S)
        return {"down_after_s": round(down, 4),
                "port_err_after_s": None if err is None else round(err, 4)}

    def step_delete_device(self, run: TransitionRun) -> dict[str, Any]:
        cfg, req, tl = self.cfg, run.req, run.tl
        self._close_events(run, cfg.local_dev)

        def note(what: str, **detail: Any) -> None:
            tl.add(EntryKind.VETO if detail.pop("veto", False) else EntryKind.NOTE,
                   cfg.local_dev, what, **detail)
            if what.startswith("holder pid"):
                tl.add(EntryKind.HOLDER, cfg.local_dev, what, **detail)

        run.veto = delete_device(cfg.local_dev, req.on_veto, req.veto_wait_s, note,
                                 self.disassociates)
        if run.veto.vetoed:
            run.vetoed = True
            run.reasons.append(run.veto.reason)
        elif run.veto.terminated:
            run.forced = True
            run.reasons.append(run.veto.reason)
        # start_s: until the delete reached the device's uverbs nodes. A kernel
        # client's removal runs before ib_uverbs' (LIFO), so a kernel client that
        # holds the device shows here, not as a veto (no process holds it)
        return {"blocked_s": round(run.veto.blocked_s, 4), "veto": run.veto.detected,
                "start_s": round(run.veto.start_s, 4)}

    def step_destroy_netdev(self, run: TransitionRun) -> dict[str, Any]:
        old = netdevs.netdev_ifindex(self.cfg.local_netdev)
        netdevs.destroy_side_netdev(self.cfg, "local")
        return {"old_ifindex": old}

    def step_hold(self, run: TransitionRun) -> dict[str, Any]:
        time.sleep(run.hold_ms / 1000)  # the sleep itself: the device stays down this long
        return {"hold_ms": run.hold_ms}

    def step_create_netdev(self, run: TransitionRun) -> dict[str, Any]:
        netdevs.create_side_netdev(self.cfg, "local", up=False)
        return {"new_ifindex": netdevs.netdev_ifindex(self.cfg.local_netdev)}

    def step_create_device(self, run: TransitionRun) -> dict[str, Any]:
        cfg = self.cfg
        devices.add_rdma_link(cfg.local_dev, cfg.local_netdev)
        net = network.sysfs_netdev(cfg.local_netdev)
        up = bool(net and net[1])
        took = devices.wait_port_state(cfg.local_dev, "ACTIVE" if up else "DOWN")
        # the port shows in sysfs before the device's uverbs node exists: opening it
        # (the reader, the clients) must wait for that node
        took = max(took, devices.wait_uverbs(cfg.local_dev))
        self._open_events(run, cfg.local_dev)
        return {"present_after_s": round(took, 4)}

    def step_port_up(self, run: TransitionRun) -> dict[str, Any]:
        cfg = self.cfg
        self.sides.link_up(cfg)
        local = self.sides.wait_active(cfg)
        run.device_after = local.to_json()
        # the carrier drop flushed the neighbour tables: resolve the far addresses now,
        # or each side's first RC connect waits 1 s in the kernel (see resolve_neighbour)
        neigh = self.sides.resolve_neighbours(cfg)
        return {"gid": local.gid, "gid_index": local.gid_index,
                "ifindex": local.ifindex, "arp_ms": neigh}

    def step_notify_resume(self, run: TransitionRun) -> dict[str, Any]:
        local = self.sides.local(self.cfg)
        run.device_after = local.to_json()
        info = DeviceInfo.from_endpoint(local)
        run.tl.add(EntryKind.NOTIFY, "shim", "resume_complete", device=info.to_json())
        answers = self.notifier.resume_complete(run.req.name, info)
        self._record_answers(run, answers)
        return {"clients": len(answers)}

    def step_pm_suspend(self, run: TransitionRun) -> dict[str, Any]:
        req = run.req
        took = pmtest.run(req.pm_level, max(1, round(run.hold_ms / 1000)))
        return {"level": req.pm_level, "took_s": round(took, 3), "real_suspend": True}

    def step_kernel_suspend(self, run: TransitionRun) -> dict[str, Any]:
        done = kernel_suspend.suspend_unregistering(self.cfg.local_dev,
                                                    max(1, round(run.hold_ms / 1000)))
        run.tl.add(EntryKind.KMSG, "kernel", kernel_suspend.SLEEP_PHASES_ENTRY, **done.to_json())
        return {"level": KERNEL_SUSPEND_LEVEL, "took_s": round(done.took_s, 3),
                "sleep": done.to_json()}

    def step_device_back(self, run: TransitionRun) -> dict[str, Any]:
        cfg = self.cfg
        begin = next((s.begin_ns for s in run.steps if s.step is S.KERNEL_SUSPEND), 0)
        took = devices.wait_port_state(cfg.local_dev, "ACTIVE")
        took = max(took, devices.wait_uverbs(cfg.local_dev))
        # the shim's own holder (the event reader) had the old device: it wakes to
        # DEVICE_FATAL, then holds nothing but a disassociated context
        fatal = run.wait_event(cfg.local_dev, "DEVICE_FATAL", begin, FATAL_EVENT_TIMEOUT_S)
        self._close_events(run, cfg.local_dev)
        self._open_events(run, cfg.local_dev)
        return {"present_after_s": round(took, 4),
                "holder_fatal_after_s": None if fatal is None else round(fatal, 4)}

    def step_notify_suspend(self, run: TransitionRun) -> dict[str, Any]:
        req = run.req
        deadline_s = req.quiesce_timeout_s
        run.tl.add(EntryKind.NOTIFY, "shim", "suspend_prepare", deadline_s=deadline_s)
        answers = self.notifier.suspend_prepare(req.name, deadline_s)
        self._record_answers(run, answers)
        vetoes = [a for a in answers if a.kind is AnswerKind.VETO]
        if vetoes:
            why = "; ".join(f"{a.client}: {a.reason}" for a in vetoes)
            if req.on_veto is OnVeto.WAIT:
                run.vetoed = True
                run.reasons.append(f"vetoed by client(s): {why}")
                run.tl.add(EntryKind.VETO, "shim", "sleep vetoed by client", reasons=why)
            else:
                run.forced = True
                run.reasons.append(f"client veto overridden (--on-veto force): {why}")
                run.tl.add(EntryKind.VETO, "shim", "client veto overridden", reasons=why)
        return {"clients": len(answers),
                "answers": {a.client: a.kind.value for a in answers}}

    def _record_answers(self, run: TransitionRun, answers: list[Answer]) -> None:
        for a in answers:
            run.answers.append(a.to_json())
            run.tl.add(EntryKind.ANSWER, f"client {a.client}", a.kind.value,
                       t_ns=a.answered_ns or time.monotonic_ns(),
                       **({"reason": a.reason} if a.reason else {}))

    # --- the end --------------------------------------------------------------------------

    def _recover_if_needed(self, run: TransitionRun) -> list[str]:
        whole = self._topology_problem()
        if whole is None:
            return []
        run.tl.add(EntryKind.RECOVERY, "shim", f"restoring: {whole}")
        problems = self.sides.restore(
            self.cfg, out=self.out, pending_timeout_s=0.0 if run.vetoed else
            devices.RDMA_LINK_DELETE_TIMEOUT_S)
        run.tl.add(EntryKind.RECOVERY, "shim", "restored" if not problems else "not restored",
                   problems=problems)
        return problems

    def _topology_problem(self) -> str | None:
        """None when the topology is whole, else what is wrong."""
        return whole_problem(self.sides, self.cfg)

"""The power shim against real rxe: every transition, vetoes, clients, kernel log, CLI."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.core.device import DeviceInfo
from harness.core.printer import NULL
from harness.core.proc import python_child
from harness.rdma.verbs import Device
from harness.system.holders import find_holders
from harness.system.tcp_ports import tcp_listening
from harness.topology import devices, lifecycle, pingpong
from harness.topology.config import Topology, TopologyConfig
from power import kmsg, pmtest
from power.notify import SuspendReply
from power.plan import TRANSITIONS, OnVeto, Ordering, StepKind
from power.result import TransitionResult, Verdict
from power.timeline import EntryKind

S = StepKind
HOLD_MS = 200
CLIENT_MODULE = "tests.helpers.device_client"  # started as our children are (python_child)
CLIENT_LINE_TIMEOUT_S = 30.0
CASES = [(name, o) for name in ("link-flap", "standby", "hibernate", "surprise-removal")
         for o in TRANSITIONS[name].steps]


def check_timeline(res: TransitionResult) -> None:
    """Every step that ran appears in plan order, begin <= end <= next begin."""
    ran = [s for s in res.steps if s.outcome != "skipped"]
    begins = [e.what for e in res.timeline.of_kind(EntryKind.STEP_BEGIN)]
    assert begins == [s.step.value for s in ran]
    stamps = [t for s in ran for t in (s.begin_ns, s.end_ns)]
    assert stamps == sorted(stamps) and stamps[0] >= res.timeline.t0_ns
    peer = [e.what for e in res.timeline.of_kind(EntryKind.PORT_STATE) if e.source == "rxe1"]
    assert peer == ["ACTIVE"] * len(ran), f"rxe1 was not ACTIVE after every step: {peer}"
    assert res.peer_active_throughout


def local_events(res: TransitionResult) -> list[str]:
    return [e.what for e in res.timeline.of_kind(EntryKind.ASYNC_EVENT) if e.source == "rxe0"]


@pytest.mark.parametrize("name, ordering", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_transition_without_clients(power_shim, rxe_topology: Topology, name: str,
                                    ordering: Ordering) -> None:
    """No clients: every step runs in order, rxe1 stays ACTIVE, the kernel log stays clean,
    and RoCE traffic (rdma-core's ibv_rc_pingpong) flows over the resumed device."""
    res = power_shim.run(name, ordering=ordering, hold_ms=HOLD_MS)
    assert res.verdict is Verdict.COMPLETED, res.reasons
    assert [s.step for s in res.steps] == list(res.request.steps)
    assert all(s.outcome == "ok" for s in res.steps)
    check_timeline(res)
    assert res.kernel is not None and res.kernel.ok and not res.kernel.gap
    events = local_events(res)
    if S.PORT_DOWN in res.request.steps:
        assert "PORT_ERR" in events  # the carrier drop reaches the device's clients
    if S.PORT_DOWN in res.request.steps and S.CREATE_DEVICE in res.request.steps:
        # the new device is created on a down netdev; the reader sees it come up
        assert "PORT_ACTIVE" in events
    assert res.veto is None or not res.veto.detected
    after = devices.discover(TopologyConfig())
    assert res.device_after is not None and res.device_after["gid"] == after.local.gid
    if name == "hibernate":
        assert after.local.ifindex != rxe_topology.local.ifindex or \
            res.device_after["ifindex"] != res.device_before["ifindex"]
        assert res.step(S.CREATE_NETDEV).detail["new_ifindex"] != \
            res.step(S.DESTROY_NETDEV).detail["old_ifindex"]
    assert pingpong.pingpong_check(after, iters=20).iters == 20


# --- clients --------------------------------------------------------------------------------


class ClientProc:
    """tests/helpers/device_client.py: a process holding rxe0 with a power policy."""

    def __init__(self, dev: str, policy: str, clients_dir: Path) -> None:
        self.proc = subprocess.Popen(
            python_child(CLIENT_MODULE, "--device", dev, "--policy", policy,
                         "--clients-dir", str(clients_dir)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.lines: list[dict] = []
        self.inbox: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_for("ready")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.inbox.put(json.loads(line))
        self.inbox.put(None)  # EOF

    def wait_for(self, event: str, timeout_s: float = CLIENT_LINE_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        for rec in self.lines:
            if rec["event"] == event:
                return rec
        while (left := deadline - time.monotonic()) > 0:
            try:
                rec = self.inbox.get(timeout=left)
            except queue.Empty:
                break
            if rec is None:
                break
            self.lines.append(rec)
            if rec["event"] == event:
                return rec
        raise AssertionError(f"client pid {self.pid} never said {event!r} within "
                             f"{timeout_s} s (exit {self.proc.poll()}); said {self.lines}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def client(power_shim, rxe_topology: Topology) -> Iterator[Callable[[str], ClientProc]]:
    started: list[ClientProc] = []

    def start(policy: str) -> ClientProc:
        c = ClientProc(rxe_topology.local.dev, policy, power_shim.clients_dir)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def test_holder_ignoring_notice_is_forced_out(power_shim, client) -> None:
    """A client that ignores the notice keeps rxe0 open: the delete blocks, the veto names
    it by pid, and --on-veto force terminates it so the delete completes."""
    holder = client("ignore")
    res = power_shim.run("standby", ordering=Ordering.CLIENTS_FIRST, hold_ms=HOLD_MS,
                         on_veto=OnVeto.FORCE, quiesce_timeout_s=2.0)
    assert res.verdict is Verdict.FORCED, res.reasons
    assert res.veto is not None and res.veto.detected
    assert holder.pid in [h["pid"] for h in res.veto.holders]
    held = next(h for h in res.veto.holders if h["pid"] == holder.pid)
    assert CLIENT_MODULE in held["cmdline"] and held["files"]
    assert {t["pid"]: t["how"] for t in res.veto.terminated}[holder.pid] == "SIGTERM"
    assert res.step(S.DELETE_DEVICE).outcome == "ok"
    assert next(a["kind"] for a in res.answers if "test-ignore" in a["client"]) == "no-answer"
    assert any(e.kind is EntryKind.VETO for e in res.timeline.entries)
    check_timeline(res)
    assert res.kernel is not None and res.kernel.ok


def test_holder_under_wait_policy_is_reported_vetoed(power_shim, client, rxe_config) -> None:
    """--on-veto wait: the delete stays blocked by the holder, and the shim reports the sleep
    as vetoed within its bound, naming the holder; the pending delete is reported as not
    restored. Once the holder exits, the delete finishes and recovery rebuilds rxe0."""
    holder = client("ignore")
    veto_wait_s = 1.5
    t0 = time.monotonic()
    res = power_shim.run("standby", ordering=Ordering.HCA_FIRST, hold_ms=HOLD_MS,
                         on_veto=OnVeto.WAIT, veto_wait_s=veto_wait_s)
    took = time.monotonic() - t0
    assert res.verdict is Verdict.VETOED, res.reasons
    assert res.veto is not None and res.veto.vetoed and res.veto.detected
    assert veto_wait_s <= res.veto.blocked_s < veto_wait_s + 1.0
    assert holder.pid in [h["pid"] for h in res.veto.holders]
    assert res.veto.delete_pending_pid in devices.pending_deletes(rxe_config.local_dev)
    assert res.not_restored and "pending" in res.not_restored[0]
    assert [s.outcome for s in res.steps if s.step is S.HOLD] == ["skipped"]
    assert took < 60, f"the vetoed transition took {took:.1f} s"
    holder.stop()  # the holder lets go: the pending delete completes
    assert lifecycle.restore_local_side(rxe_config, out=NULL) == []
    assert devices.pending_deletes(rxe_config.local_dev) == []


def test_cooperative_client_releases_and_reopens(power_shim, client) -> None:
    """clients-first with a cooperative out-of-process client: it releases the device before
    the delete (so no veto: the delete does not block), and reopens the device it is
    told about on resume."""
    coop = client("cooperative")
    res = power_shim.run("standby", ordering=Ordering.CLIENTS_FIRST, hold_ms=HOLD_MS)
    assert res.verdict is Verdict.COMPLETED, res.reasons
    assert [a["kind"] for a in res.answers if "test-cooperative" in a["client"]] == \
        ["released", "resumed"]
    assert res.veto is not None and not res.veto.detected
    assert res.veto.blocked_s < 0.5  # VETO_DETECT_S: the delete did not block
    coop.wait_for("released")
    resume = coop.wait_for("resume")
    assert resume["device"]["gid"] == res.device_after["gid"]
    assert coop.wait_for("reopened")["gid"] == res.device_after["gid"]
    check_timeline(res)


def test_client_veto_answer(power_shim, client) -> None:
    """A client that answers veto stops a clients-first sleep under the wait policy (the
    device is never touched and the client hears resume); under force the sleep goes on
    and the client, still holding the device, is terminated."""
    vetoer = client("veto")
    res = power_shim.run("standby", ordering=Ordering.CLIENTS_FIRST, hold_ms=HOLD_MS)
    assert res.verdict is Verdict.VETOED
    assert any("refuses to sleep" in r for r in res.reasons)
    assert [s.step for s in res.steps if s.outcome == "ok"] == [S.NOTIFY_SUSPEND,
                                                                 S.NOTIFY_RESUME]
    assert res.not_restored == []
    vetoer.wait_for("resume")
    res = power_shim.run("standby", ordering=Ordering.CLIENTS_FIRST, hold_ms=HOLD_MS,
                         on_veto=OnVeto.FORCE)
    assert res.verdict is Verdict.FORCED, res.reasons
    assert vetoer.pid in [t["pid"] for t in res.veto.terminated]


class InProcessClient:
    """A Python client in the test process itself: holds a Device, releases on notice."""

    name = "in-process"

    def __init__(self, dev: str) -> None:
        self.device: Device | None = Device(dev)
        self.resumed_with: DeviceInfo | None = None

    def suspend_prepare(self, transition: str, deadline_s: float) -> SuspendReply:
        if self.device is not None:
            self.device.close()
            self.device = None
        return SuspendReply.release()

    def resume_complete(self, transition: str, device: DeviceInfo) -> None:
        self.resumed_with = device


def test_in_process_client_callbacks(power_shim, rxe_topology) -> None:
    """In-process callbacks: the client closes its Context on suspend_prepare, so the delete
    (which would otherwise block on the test process itself) completes promptly."""
    me = InProcessClient(rxe_topology.local.dev)
    power_shim.shim.notifier.register(me)
    res = power_shim.run("hibernate", ordering=Ordering.CLIENTS_FIRST, hold_ms=HOLD_MS)
    assert res.verdict is Verdict.COMPLETED, res.reasons
    assert res.veto is not None and not res.veto.detected
    assert me.resumed_with is not None and me.resumed_with.ifindex == res.device_after["ifindex"]
    with Device(me.resumed_with.dev, me.resumed_with.port, me.resumed_with.gid_index) as d:
        assert d.gid == me.resumed_with.gid


# --- kernel log -----------------------------------------------------------------------------


def test_kernel_log_scan_flags_a_warning() -> None:
    """The scan can fail: a WARNING line written after the marker is a hit; a fresh marker
    with nothing after it is clean."""
    marker = kmsg.write_marker("scan self-test")
    with open("/dev/kmsg", "w") as fh:
        fh.write("<4>rxe-power-test: WARNING: CPU: 0 PID: 0 at fake.c:1 (written by the test "
                 "to prove the scan can fail)\n")
    scan = kmsg.scan_after(marker)
    assert not scan.ok and [h.pattern for h in scan.hits] == ["WARNING"]
    assert "written by the test" in scan.hits[0].record.message
    assert kmsg.scan_after(kmsg.write_marker("clean self-test")).ok


class WarningWriter(InProcessClient):
    """A client whose suspend handler makes the kernel log a (fake) warning."""

    name = "warning-writer"

    def suspend_prepare(self, transition: str, deadline_s: float) -> SuspendReply:
        with open("/dev/kmsg", "w") as fh:
            fh.write("<4>rxe-power-test: WARNING: fake warning during a transition\n")
        return super().suspend_prepare(transition, deadline_s)


def test_kernel_log_hit_fails_the_transition(power_shim, rxe_topology) -> None:
    power_shim.shim.notifier.register(WarningWriter(rxe_topology.local.dev))
    res = power_shim.run("link-flap", ordering=Ordering.CLIENTS_FIRST, hold_ms=HOLD_MS)
    assert res.verdict is Verdict.FAILED
    assert res.kernel is not None and [h.pattern for h in res.kernel.hits] == ["WARNING"]
    assert any("fake warning during a transition" in r for r in res.reasons)


# --- pm_test --------------------------------------------------------------------------------


def test_pm_test_real_suspend(power_shim) -> None:
    """Where the kernel offers pm_test with freeze (the CI guest does), a real suspend
    sequence to the freezer level runs and rxe1 stays ACTIVE; elsewhere: unsupported with
    the reason."""
    sup = pmtest.support("freezer")
    res = power_shim.run("pm-test", ordering=Ordering.CLIENTS_FIRST, hold_ms=1000)
    if not sup.ok:
        assert res.verdict is Verdict.UNSUPPORTED and res.reasons == [sup.reason]
        return
    assert res.verdict is Verdict.COMPLETED, res.reasons
    step = res.step(S.PM_SUSPEND)
    assert step.detail["real_suspend"] and step.detail["level"] == "freezer"
    assert step.detail["took_s"] >= 1.0  # held pm_test_delay=1 s in the frozen state
    check_timeline(res)


# --- the command line with programs that are not ours -----------------------------------------


def test_cli_transition_under_ibv_rc_pingpong(rxe_topology, results_dir: Path) -> None:
    """`rxe-power transition surprise-removal --on-veto force` while rdma-core's
    ibv_rc_pingpong drives traffic over rxe0: the holder is named by pid and command line,
    and the forced path completes with the topology whole. (Not standby: its carrier drop
    comes first, ibv_rc_pingpong gets a completion error and exits by itself, and the
    delete then finds no holder.)"""
    port = 18515 + os.getpid() % 1000
    common = ["-n", "100000000", "-p", str(port), "-s", "4096"]
    srv = subprocess.Popen(["ibv_rc_pingpong", "-d", rxe_topology.peer.dev, "-g",
                            str(rxe_topology.peer.gid_index), *common],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli_proc = None
    try:
        deadline = time.monotonic() + 30
        while not tcp_listening(port):
            assert time.monotonic() < deadline, "ibv_rc_pingpong server did not listen"
            time.sleep(0.05)
        cli_proc = subprocess.Popen(["ibv_rc_pingpong", "-d", rxe_topology.local.dev, "-g",
                                     str(rxe_topology.local.gid_index), *common,
                                     rxe_topology.peer.addr],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not [h for h in find_holders(rxe_topology.local.dev)
                   if h.pid == cli_proc.pid]:
            assert time.monotonic() < deadline, "ibv_rc_pingpong never opened rxe0"
            time.sleep(0.05)
        out = results_dir / "transitions" / "cli-surprise-removal-pingpong.json"
        rc = cli_main.main(["transition", "surprise-removal", "--on-veto",
                       "force", "--hold-ms", str(HOLD_MS), "--json", str(out), "--mode",
                       "native"])
        res = TransitionResult.read(out)
        assert rc == 0 and res.verdict is Verdict.FORCED, res.reasons
        held = {h["pid"]: h["cmdline"] for h in res.veto.holders}
        assert cli_proc.pid in held and held[cli_proc.pid].startswith("ibv_rc_pingpong")
        assert cli_proc.wait(10) is not None
    finally:
        for p in (cli_proc, srv):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    devices.discover(TopologyConfig())

"""The mlx5 order (transition standby-devices, fault model mlx5-order) in the guest.

The local kernel really suspends (pm_test at `devices`: user space and freezable kernel
threads frozen, every device suspended, held, resumed, thawed) and our rdma_rxe (`pm`
build, --removal disassociate) unregisters rxe0 in the device-suspend phase and adds it
again at resume. The shim decides its verdict from the kernel log; this test checks
against evidence it reads itself: the kernel's records (our lines between the PM core's
phase lines, by timestamp), the ib_device's index in `rdma -j dev show` (a new device
has a new one), and the client's own events (DEVICE_FATAL) and ledger. The negative
control suspends the same way with nothing armed: rxe0 stays (same index) and the
detector names the missing unregister.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.run.scenario import render, run_scenario
from harness.topology.config import Topology
from harness.workload.spec import Arrivals, WorkloadEnd, WorkloadSpec, resumed_cap
from power import kmsg, pmtest
from power.kmsg.clock import ClockAnchors
from power.plan import KERNEL_SUSPEND_LEVEL, Ordering, StepKind
from power.result import TransitionRequest, Verdict
from power.sleep_phases import Boundary, RxePmStep, SleepRecord, read_sleep

pytestmark = pytest.mark.removal("disassociate")

RDMA_TIMEOUT_S = 10.0
# requests keep arriving until a second after the transition (WorkloadEnd.RESUMED)
SPEC = WorkloadSpec(count=resumed_cap(60.0, 180), rate_per_s=60.0, queue_depth=4,
                    arrivals=Arrivals.OPEN, end=WorkloadEnd.RESUMED)


def device_index(dev: str) -> int:
    """The ib_device's index (`rdma -j dev show DEV`): each registration gets a new one."""
    res = subprocess.run(["rdma", "-j", "dev", "show", dev], capture_output=True, text=True,
                         timeout=RDMA_TIMEOUT_S, check=True, stdin=subprocess.DEVNULL)
    (entry,) = json.loads(res.stdout)
    return int(entry["ifindex"])


def at(sleep: SleepRecord, step: RxePmStep, dev: str) -> int:
    (line,) = [x for x in sleep.rxe if x.step is step and x.device == dev]
    return line.ts_us


def test_naive_through_the_mlx5_order(power_shim, peer_agent, rxe_topology: Topology,
                                      results_dir: Path) -> None:
    """naive keeps its context through the sleep. It is frozen before rxe0 goes; rxe0 is
    unregistered inside the device-suspend phase (our kernel lines fall between "tasks
    frozen" and "suspend of devices complete") and registered at resume (between the test
    wait and "resume of devices complete"); naive wakes to DEVICE_FATAL on a device that
    is no more (the new one has another index), and every request is accounted for."""
    local = rxe_topology.local.dev
    before = device_index(local)
    req = TransitionRequest("standby-devices", Ordering.HCA_FIRST, hold_ms=1000)
    with kmsg.Tail() as tail:
        res = run_scenario(power_shim.shim, peer_agent, rxe_topology.local, req, ["naive"],
                           SPEC, power_shim.clients_dir, results_dir / "clients")
        sleep = read_sleep(tail.read())
    print("\n".join(render(res)))
    print("phases (ms):", sleep.phases_ms(), "PM core: suspend", sleep.suspend_ms,
          "resume", sleep.resume_ms)
    assert res.transition.verdict is Verdict.COMPLETED, res.transition.reasons
    b = sleep.boundaries
    gone, back = at(sleep, RxePmStep.UNREGISTERED, local), at(sleep, RxePmStep.REGISTERED, local)
    assert b[Boundary.USER_FROZEN] < b[Boundary.TASKS_FROZEN] < gone \
        < b[Boundary.DEVICES_SUSPENDED] < b[Boundary.TEST_WAIT] < back \
        < b[Boundary.DEVICES_RESUMED] < b[Boundary.EXIT], (b, gone, back)
    assert device_index(local) != before  # a new ib_device, not the old one kept
    step = res.transition.step(StepKind.KERNEL_SUSPEND)
    assert step is not None and step.detail["sleep"]["rxe"], step
    # the kernel log's clock anchored to the timeline's (CLOCK_MONOTONIC) on both sides of
    # the sleep: through it, the unregister falls inside the shim's own kernel-suspend step
    clock = ClockAnchors.from_json(step.detail["sleep"]["clock"])
    assert clock.before is not None and clock.after is not None, step.detail["sleep"]["clock"]
    print("clock: kernel log - CLOCK_MONOTONIC", clock.before.offset_ns, "ns ±",
          clock.before.uncertainty_ns, "; drift over the sleep", clock.drift_ns, "ns")
    gone_mono = clock.to_monotonic_ns(gone)
    assert gone_mono is not None and step.begin_ns < gone_mono < (step.end_ns or 0), (
        gone_mono, step.begin_ns, step.end_ns)
    naive = res.client("naive")
    assert {"event": "async", "name": "DEVICE_FATAL"} in [
        {k: e.get(k) for k in ("event", "name")} for e in naive.events], naive.events
    assert naive.invariant_ok and sum(naive.counts.values()) == len(naive.ledger) > 0
    print("naive:", naive.counts, "coverage", naive.coverage)
    assert naive.coverage is not None and naive.coverage.crossed > 0, naive.missed


def test_unarmed_suspend_leaves_the_device_and_the_detector_fires(
        rxe_topology: Topology) -> None:
    """Negative control: the same kernel suspend with our callbacks not armed. The
    devices really were suspended and resumed (the PM core's lines are there), rxe0 is
    the same ib_device (same index), and the order check names what is missing."""
    local = rxe_topology.local.dev
    before = device_index(local)
    with kmsg.Tail() as tail:
        pmtest.run(KERNEL_SUSPEND_LEVEL, 1)
        sleep = read_sleep(tail.read())
    print("phases (ms):", sleep.phases_ms())
    assert Boundary.DEVICES_SUSPENDED in sleep.boundaries and not sleep.aborted, sleep
    assert Boundary.DEVICES_RESUMED in sleep.boundaries, sleep
    assert device_index(local) == before
    assert sleep.rxe == ()
    assert sleep.order_problems([local]) == [
        f"no kernel line says {local} was unregistered",
        f"no kernel line says {local} was registered"]

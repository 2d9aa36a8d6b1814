"""The mlx5 order of a sleep (fault model `mlx5-order`, step kernel-suspend).

The local kernel really suspends (power.pmtest at the `devices` level: user space and
freezable kernel threads frozen, every device suspended, held, resumed, thawed) with our
rdma_rxe armed for the local device (harness.system.sleep_support): its suspend callback
unregisters the device as `rdma link delete` does and its resume callback adds it again.
The kernel's own log (power.sleep_phases) then says where each happened; a device that
did not go inside the device-suspend phase, or come back inside the resume phase, is a
failure naming the phase it was seen in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.errors import RxePowerError
from harness.system import sleep_support
from power import kmsg, pmtest, sleep_phases
from power.kmsg.clock import ClockAnchors, take_anchor
from power.plan import KERNEL_SUSPEND_LEVEL

# the what of the timeline entry that carries a KernelSuspend (power.shim writes it,
# harness.report.timeline_pm reads it)
SLEEP_PHASES_ENTRY = "sleep phases"


@dataclass(frozen=True)
class KernelSuspend:
    took_s: float  # the write to /sys/power/state, from our side
    sleep: sleep_phases.SleepRecord
    clock: ClockAnchors  # the kernel log's clock against CLOCK_MONOTONIC, around the sleep

    def to_json(self) -> dict[str, Any]:
        return {**self.sleep.to_json(), "clock": self.clock.to_json()}


def unsupported_reason(disassociates: bool) -> str | None:
    """Why this kernel cannot sleep in the mlx5 order (None: it can)."""
    sup = pmtest.support(KERNEL_SUSPEND_LEVEL)
    if not sup.ok:
        return sup.reason
    if not disassociates or not sleep_support.can_arm():
        return ("the loaded rdma_rxe is not our `pm` build with disassociate (run with "
                "--removal disassociate; a frozen holder of the stock module would hold the "
                "suspend forever)")
    return None


def suspend_unregistering(dev: str, hold_s: int) -> KernelSuspend:
    """Suspend the kernel with `dev` unregistered inside it; raises RxePowerError when
    the order was not kept (the kernel log's phases name where it went wrong)."""
    with kmsg.Tail() as tail:
        before = take_anchor(tail)
        with sleep_support.armed([dev]):
            took = pmtest.run(KERNEL_SUSPEND_LEVEL, hold_s)
        after = take_anchor(tail)
        sleep = sleep_phases.read_sleep(tail.read())
    problems = sleep.order_problems([dev])
    if sleep.aborted or sleep.failed_devices:
        problems.append(f"the device suspend was aborted or a device failed: "
                        f"{list(sleep.failed_devices)}")
    if problems:
        raise RxePowerError(f"{dev} did not go and come back in the kernel's order: "
                            f"{'; '.join(problems)}", "see the kernel log (dmesg)")
    return KernelSuspend(took, sleep, ClockAnchors(before, after))

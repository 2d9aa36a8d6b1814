"""A real kernel suspend sequence through /sys/power/pm_test (the `pm-test` transition).

With CONFIG_PM_DEBUG the kernel runs `echo freeze > /sys/power/state` only up to
the level written to /sys/power/pm_test, waits pm_test_delay seconds there, then
resumes. Measured in the virtme-ng guest (Debian 6.1, TCG, root and writable folders
over 9p): level `freezer` works. Level `devices` suspends and resumes every device and
returns 0 (suspend of devices 57 ms, resume 61 ms), but the guest's 9p transports have
no freeze/restore: restored, each is reset with no virtqueue, and the first later 9p
request never returns (the guest "never answers again"; the kernel itself resumed, its
console says so). Past the freezer, `run` therefore keeps those transports out of the
sleep (harness.system.sleep_support.fs_kept); with that, `devices` works and the
shared folders answer after it (measured, results/h25 console logs in the report).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import NotSupported, RxePowerError
from harness.core.proc import run_bounded
from harness.system import sleep_support

SYS_POWER = Path("/sys/power")
PM_TEST_DELAY = Path("/sys/module/suspend/parameters/pm_test_delay")
PM_DEBUG_MESSAGES = "pm_debug_messages"  # on for the sleep: the phase lines (power.sleep_phases)
PM_LEVELS = ("freezer", "devices", "platform", "processors", "core")
DEFAULT_PM_LEVEL = "freezer"
PM_SUSPEND_SLACK_S = 30.0  # on top of the hold: freezing and thawing under emulation


@dataclass(frozen=True)
class PmSupport:
    ok: bool
    reason: str


def support(level: str, sys_power: Path = SYS_POWER) -> PmSupport:
    """Can this kernel run a pm_test suspend to `level` with the freeze state?"""
    if level not in PM_LEVELS:
        return PmSupport(False, f"unknown pm_test level {level!r} (use one of "
                                f"{', '.join(PM_LEVELS)})")
    test = sys_power / "pm_test"
    if not test.exists():
        return PmSupport(False, f"{test} does not exist: the kernel was built without "
                                "CONFIG_PM_DEBUG (or /sys is not mounted)")
    try:
        states = (sys_power / "state").read_text().split()
        levels = test.read_text().replace("[", "").replace("]", "").split()
    except OSError as exc:
        return PmSupport(False, f"cannot read {sys_power}: {os.strerror(exc.errno or 0)}")
    if "freeze" not in states:
        return PmSupport(False, f"{sys_power / 'state'} offers {states}, not freeze")
    if level not in levels:
        return PmSupport(False, f"{test} offers {levels}, not {level}")
    if os.geteuid() != 0:
        return PmSupport(False, "writing /sys/power needs root")
    return PmSupport(True, f"pm_test offers {level} and the state file offers freeze")


def run(level: str, hold_s: int, sys_power: Path = SYS_POWER) -> float:
    """Run the suspend sequence to `level`, held `hold_s` s there; returns seconds taken."""
    sup = support(level, sys_power)
    if not sup.ok:
        raise NotSupported(f"pm-test to {level}: {sup.reason}", errno.EOPNOTSUPP,
                           "run it in the VM (rxe-power transition pm-test --mode vm) or on a "
                           "kernel with CONFIG_PM_DEBUG")
    old_delay = PM_TEST_DELAY.read_text().strip() if PM_TEST_DELAY.exists() else None
    debug = sys_power / PM_DEBUG_MESSAGES
    old_debug = debug.read_text().strip() if debug.exists() else None
    timeout_s = hold_s + PM_SUSPEND_SLACK_S
    # past the freezer the devices sleep: the guest's shared file systems must not
    # (harness.system.sleep_support says why; outside such a guest this does nothing)
    keep = (sleep_support.fs_kept() if level != DEFAULT_PM_LEVEL
            else contextlib.nullcontext(()))
    try:
        if old_delay is not None:
            PM_TEST_DELAY.write_text(str(hold_s))
        if old_debug is not None:
            debug.write_text("1")
        (sys_power / "pm_test").write_text(level)
        with keep:
            t0 = time.monotonic()
            # the write blocks for the whole sequence: do it from a child, bounded
            proc = run_bounded(["sh", "-c", f"echo freeze > {sys_power / 'state'}"],
                               timeout_s, step=f"pm_test suspend to {level}",
                               bound_name="PM_SUSPEND_SLACK_S",
                               outstanding="the kernel has not resumed from the test suspend")
            took = time.monotonic() - t0
    finally:
        (sys_power / "pm_test").write_text("none")
        if old_delay is not None:
            PM_TEST_DELAY.write_text(old_delay)
        if old_debug is not None:
            debug.write_text(old_debug)
    if proc.returncode != 0:
        raise RxePowerError(f"echo freeze > /sys/power/state failed: {proc.stderr.strip()}",
                            "see the kernel log (dmesg) for the device that refused to "
                            "suspend")
    return took

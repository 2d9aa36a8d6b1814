"""The kernel log of one suspend read into phases, and the mlx5 order checked from it
(power.sleep_phases); the records are shaped as Linux 6.1 logs them with
pm_debug_messages on."""

from __future__ import annotations

from power.kmsg import KmsgRecord
from power.sleep_phases import Boundary, Phase, RxePmStep, SleepRecord, read_sleep

SUSPEND = [
    (1_000_000, "PM: suspend entry (s2idle)"),
    (1_010_000, "Filesystems sync: 0.010 seconds"),
    (1_020_000, "Freezing user space processes"),
    (1_050_000, "Freezing user space processes completed (elapsed 0.030 seconds)"),
    (1_051_000, "OOM killer disabled."),
    (1_052_000, "Freezing remaining freezable tasks"),
    (1_060_000, "Freezing remaining freezable tasks completed (elapsed 0.008 seconds)"),
    (1_061_000, "PM: suspend-to-idle"),
]
UNREGISTER = [
    (1_100_000, "rxe_power_pm rxe_power_pm: suspend: unregistering rxe0 (netdev rxpw0)"),
    (1_300_000, "rxe_power_pm rxe_power_pm: suspend: unregistered rxe0 in 200000 us"),
]
DEVICES = [
    (1_400_000, "PM: suspend of devices complete after 339.000 msecs"),
    (1_401_000, "PM: suspend debug: Waiting for 1 second(s)."),
]
REGISTER = [
    (2_500_000, "rxe_power_pm rxe_power_pm: resume: registered rxe0 on rxpw0 in 90000 us"),
]
RESUME = [
    (2_700_000, "PM: resume of devices complete after 200.000 msecs"),
    (2_710_000, "OOM killer enabled."),
    (2_711_000, "Restarting tasks ... "),
    (2_800_000, "PM: suspend exit"),
]


def records(*parts: list[tuple[int, str]]) -> list[KmsgRecord]:
    lines = [line for part in parts for line in part]
    return [KmsgRecord(seq=100 + i, ts_us=ts, level=6, facility=0, message=msg)
            for i, (ts, msg) in enumerate(lines)]


def test_phases_and_the_kept_order() -> None:
    sleep = read_sleep(records(SUSPEND, UNREGISTER, DEVICES, REGISTER, RESUME))
    assert sleep.boundaries[Boundary.ENTRY] == 1_000_000
    assert sleep.suspend_ms == 339.0 and sleep.resume_ms == 200.0
    assert not sleep.aborted and sleep.failed_devices == ()
    phases = sleep.phases_ms()
    assert phases["freeze"] == 40.0 and phases["device_suspend"] == 340.0
    # the wait line comes before the wait: held = its span less the PM core's resume
    assert phases["held"] == 1099.0 and phases["device_resume"] == 200.0
    assert phases["total"] == 1800.0
    assert [(x.step, x.phase) for x in sleep.rxe] == [
        (RxePmStep.UNREGISTERING, "tasks-frozen"), (RxePmStep.UNREGISTERED, "tasks-frozen"),
        (RxePmStep.REGISTERED, "test-wait")]
    assert sleep.order_problems(["rxe0"]) == []
    assert sleep.to_json()["rxe"][1]["device"] == "rxe0"


def test_a_device_unregistered_before_the_freeze_is_named() -> None:
    """Negative control: the same lines with the unregister before user space was frozen
    (today's userspace removal) break the order, and a device never unregistered too."""
    sleep = read_sleep(records(UNREGISTER, SUSPEND, DEVICES, REGISTER, RESUME))
    problems = sleep.order_problems(["rxe0", "rxe1"])
    assert problems[0] == ("rxe0 unregistered after 'before-entry', not inside the phase "
                           "after 'tasks-frozen'")
    assert "no kernel line says rxe1 was unregistered" in problems
    assert "no kernel line says rxe1 was registered" in problems


def test_an_aborted_suspend_names_the_device() -> None:
    """What the guest logged without rxe_power_fs_keep: virtio-fs refuses (-95)."""
    failed = [(1_200_000, "virtio-pci 0000:00:03.0: PM: failed to suspend: error -95"),
              (1_210_000, "PM: suspend of devices aborted after 150.000 msecs"),
              (1_220_000, "PM: Some devices failed to suspend, or early wake event detected")]
    sleep = read_sleep(records(SUSPEND, failed, RESUME))
    assert sleep.aborted
    assert sleep.failed_devices == ("virtio-pci 0000:00:03.0: suspend error -95",)
    assert Boundary.DEVICES_SUSPENDED not in sleep.boundaries
    assert sleep.phases_ms()["device_suspend"] is None


def test_only_the_first_suspend_is_read() -> None:
    sleep = read_sleep(records(SUSPEND, DEVICES, RESUME, [(9_000_000, "PM: suspend entry "
                                                                      "(s2idle)")]))
    assert sleep.boundaries[Boundary.ENTRY] == 1_000_000


def test_spans_and_the_record_back_from_its_json() -> None:
    sleep = read_sleep(records(SUSPEND, UNREGISTER, DEVICES, REGISTER, RESUME))
    assert SleepRecord.from_json(sleep.to_json()) == sleep
    assert sleep.spans_us() == [
        (Phase.FREEZE, 1_020_000, 1_060_000),
        (Phase.DEVICE_SUSPEND, 1_060_000, 1_400_000),
        (Phase.HELD, 1_401_000, 2_500_000),  # to the resume line less the PM core's 200 ms
        (Phase.DEVICE_RESUME, 2_500_000, 2_700_000),
        (Phase.THAW, 2_700_000, 2_800_000)]
    cut = read_sleep(records(SUSPEND, UNREGISTER))  # a sleep logged only up to the freeze
    assert [p for p, _, _ in cut.spans_us()] == [Phase.FREEZE]

"""The kernel clients' view of the transition (clients.kernel.ulp_scenario: window_of,
back_ns) comes from power.plan's one set of device-away and device-back steps, so the
kernel-suspend models (pm-test, standby-devices) have a window and a moment of return as
the userspace model has."""

from __future__ import annotations

from typing import Any

import pytest

from clients.kernel.ulp_scenario import back_ns, window_of
from harness.workload.block_ledger import Window
from power.plan import TRANSITIONS, Ordering


def steps_of(name: str, ordering: Ordering, skipped: frozenset[str] = frozenset()
             ) -> dict[str, Any]:
    """A transition's steps as its result stores them: each 1 s long, one after another,
    step i from i s to i+1 s."""
    return {"steps": [{"step": k.value, "outcome": "skipped" if k.value in skipped else "ok",
                       "begin_ns": i * 10**9, "end_ns": (i + 1) * 10**9, "detail": {}}
                      for i, k in enumerate(TRANSITIONS[name].steps[ordering])]}


@pytest.mark.parametrize(("name", "ordering", "window", "back"), [
    # link-flap hca-first: port-down (0) ... port-up (3), notify-resume (4)
    ("link-flap", Ordering.HCA_FIRST, Window(0, 5 * 10**9), 4 * 10**9),
    # standby clients-first: notify (0), port-down (1) ... create (4), port-up (5), notify (6)
    ("standby", Ordering.CLIENTS_FIRST, Window(10**9, 7 * 10**9), 6 * 10**9),
    # pm-test hca-first: the kernel's suspend (0) is both away and back
    ("pm-test", Ordering.HCA_FIRST, Window(0, 3 * 10**9), 10**9),
    # standby-devices hca-first: kernel-suspend (0), notify (1), device-back (2), notify (3)
    ("standby-devices", Ordering.HCA_FIRST, Window(0, 4 * 10**9), 3 * 10**9),
])
def test_every_model_has_a_window_and_a_return(name: str, ordering: Ordering, window: Window,
                                               back: int) -> None:
    tres = steps_of(name, ordering)
    assert window_of(tres) == window
    assert back_ns(tres) == back


def test_no_away_step_is_no_window_and_a_failed_return_is_no_return() -> None:
    # a transition whose device never went: only the notices ran
    tres = steps_of("standby", Ordering.CLIENTS_FIRST,
                    skipped=frozenset({"port-down", "delete-device", "hold", "create-device",
                                       "port-up"}))
    assert window_of(tres) is None and back_ns(tres) is None
    tres = steps_of("standby-devices", Ordering.HCA_FIRST)
    tres["steps"][2]["outcome"] = "failed"  # the device did not come back
    assert back_ns(tres) is None  # the kernel resumed, but the device is what came back


class _Driver:
    """An I/O driver whose I/O submitted after `answers_from` ns answers."""

    def __init__(self, answers_from: int | None) -> None:
        self.answers_from, self.asked = answers_from, []

    def answered_after(self, t_ns: int) -> bool:
        self.asked.append(t_ns)
        return self.answers_from is not None and len(self.asked) >= 3


def test_the_io_runs_on_until_an_io_after_the_return_answered(monkeypatch) -> None:
    """After the settle, the I/O goes on until one submitted after the device was back has
    answered (asked with that moment), within its bound; no return: no wait."""
    from clients.kernel import ulp_scenario

    drv = _Driver(answers_from=5)
    took = ulp_scenario.wait_answered_after(drv, 5)
    assert took is not None and drv.asked == [5, 5, 5]
    assert ulp_scenario.wait_answered_after(_Driver(answers_from=5), None) is None
    monkeypatch.setattr(ulp_scenario, "ANSWER_AFTER_BACK_TIMEOUT_S", 0.2)
    never = _Driver(answers_from=None)
    assert ulp_scenario.wait_answered_after(never, 7) is None and len(never.asked) >= 2

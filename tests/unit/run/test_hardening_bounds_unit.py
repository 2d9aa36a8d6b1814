"""Issue 17 #6: values that used to pass validation and then crash mid-transition (a hold
too large for time.sleep, waits of inf seconds, a rate of nan) are refused by the
validators, before any VM boots, naming the bound and its unit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.core.errors import SettingError
from harness.core.settings import parse_positive_float
from harness.run.bench.spec import BenchSpec
from harness.run.matrix import MatrixSpec
from harness.run.stress import StressSpec
from harness.workload.spec import WorkloadSpec
from power.result import TransitionRequest

HUGE = 99999999999999999999


@pytest.mark.parametrize("kw, bound", [
    ({"hold_ms": HUGE}, "MAX_HOLD_MS"),
    ({"veto_wait_s": math.inf}, "--veto-wait-s"),
    ({"veto_wait_s": math.nan}, "--veto-wait-s"),
    ({"quiesce_timeout_s": math.inf}, "--quiesce-timeout-s"),
    ({"quiesce_timeout_s": 1e9}, "MAX_WAIT_S"),
])
def test_transition_request_refuses_unbounded_values(kw: dict[str, float], bound: str) -> None:
    with pytest.raises(SettingError, match=bound):
        TransitionRequest("standby", **kw).resolved()  # type: ignore[arg-type]


def test_transition_request_keeps_its_sane_values() -> None:
    req = TransitionRequest("standby", hold_ms=3_600_000, veto_wait_s=3600.0).resolved()
    assert req.hold_ms == 3_600_000


@pytest.mark.parametrize("rate", [math.nan, math.inf, 1e12])
def test_matrix_and_stress_refuse_a_rate_that_is_not_a_finite_bound(rate: float) -> None:
    with pytest.raises(SettingError, match="rate"):
        MatrixSpec(rate_per_s=rate).validate()
    with pytest.raises(SettingError, match="rate"):
        StressSpec(rate_per_s=rate).validate()
    with pytest.raises(SettingError, match="rate"):
        WorkloadSpec(rate_per_s=rate).validate()


def test_matrix_stress_bench_refuse_a_huge_hold() -> None:
    for spec in (MatrixSpec(hold_ms=HUGE), StressSpec(hold_ms=HUGE), BenchSpec(hold_ms=HUGE)):
        with pytest.raises(SettingError, match="MAX_HOLD_MS=3600000 ms"):
            spec.validate()  # type: ignore[attr-defined]


def test_stress_and_bench_refuse_huge_cycle_counts() -> None:
    with pytest.raises(SettingError, match="MAX_CYCLES"):
        StressSpec(cycles=HUGE).validate()
    with pytest.raises(SettingError, match="MAX_CYCLES"):
        StressSpec(maxfail=HUGE).validate()
    with pytest.raises(SettingError, match="MAX_CYCLES"):
        BenchSpec(cycles=HUGE).validate()
    with pytest.raises(SettingError, match="MAX_ITERATIONS"):
        BenchSpec(lat_iters=HUGE).validate()


@pytest.mark.parametrize("raw", ["inf", "nan", "1e400", "1e12"])
def test_parse_positive_float_refuses_unbounded(raw: str) -> None:
    with pytest.raises(ValueError, match=r"finite|MAX_TIMEOUT_S"):
        parse_positive_float(raw)


def test_vm_request_refuses_an_infinite_timeout(tmp_path: Path) -> None:
    from harness.vm.runner import VmRequest, run_in_vm
    with pytest.raises(SettingError, match="--timeout-s"):
        run_in_vm(VmRequest(command=["true"], rw_dirs=[], log_path=tmp_path / "c.log",
                            timeout_s=math.inf))


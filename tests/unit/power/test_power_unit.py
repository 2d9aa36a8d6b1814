"""Pure logic of the power shim: plans, requests, results, timeline, veto policy, pm_test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from harness.core.errors import SettingError
from harness.core.state import process_start
from harness.system.holders import Holder
from power import pmtest
from power.kmsg import KmsgScan, Marker
from power.plan import STEP_DOCS, TRANSITIONS, OnVeto, Ordering, StepKind, get_transition
from power.result import StepRecord, TransitionRequest, TransitionResult, Verdict
from power.timeline import EntryKind, Timeline
from power.veto import VetoReport, terminate_holders

S = StepKind


def test_every_step_is_documented() -> None:
    assert set(STEP_DOCS) == set(StepKind)
    for doc in STEP_DOCS.values():
        assert doc.kernel_ops and doc.versus_real


@pytest.mark.parametrize("name", sorted(TRANSITIONS))
def test_plans_sleep_then_resume(name: str) -> None:
    for ordering, steps in TRANSITIONS[name].steps.items():
        assert steps[-1] is S.NOTIFY_RESUME, (name, ordering)
        if S.DELETE_DEVICE in steps:
            assert steps.index(S.DELETE_DEVICE) < steps.index(S.CREATE_DEVICE)
        if S.DESTROY_NETDEV in steps:
            assert steps.index(S.DESTROY_NETDEV) < steps.index(S.CREATE_NETDEV)
        if ordering is Ordering.CLIENTS_FIRST:
            assert steps[0] is S.NOTIFY_SUSPEND
        elif S.NOTIFY_SUSPEND in steps:  # hca-first: clients hear of it only afterwards
            first_device_step = min(i for i, s in enumerate(steps) if s is not S.NOTIFY_SUSPEND)
            assert steps.index(S.NOTIFY_SUSPEND) > first_device_step


def test_orderings_where_they_make_sense() -> None:
    for name in ("link-flap", "standby", "hibernate", "pm-test"):
        assert set(TRANSITIONS[name].steps) == set(Ordering)
    sr = get_transition("surprise-removal")
    assert set(sr.steps) == {Ordering.HCA_FIRST}
    assert S.NOTIFY_SUSPEND not in sr.plan(Ordering.HCA_FIRST)  # no notice at all
    with pytest.raises(SettingError, match="no clients-first ordering") as exc:
        sr.plan(Ordering.CLIENTS_FIRST)
    assert "hca-first" in exc.value.fix


def test_hibernate_destroys_the_netdev_and_standby_does_not() -> None:
    assert S.DESTROY_NETDEV in get_transition("hibernate").plan(Ordering.CLIENTS_FIRST)
    assert S.DESTROY_NETDEV not in get_transition("standby").plan(Ordering.CLIENTS_FIRST)
    assert get_transition("hibernate").default_hold_ms > get_transition("standby").default_hold_ms


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "nap"}, "unknown transition 'nap'"),
    ({"name": "standby", "hold_ms": -1}, "negative"),
    ({"name": "standby", "veto_wait_s": 0}, "--veto-wait-s"),
    ({"name": "standby", "quiesce_timeout_s": -2.0}, "--quiesce-timeout-s"),
    ({"name": "pm-test", "pm_level": "mem"}, "unknown --pm-level"),
    ({"name": "surprise-removal", "ordering": Ordering.CLIENTS_FIRST}, "no clients-first"),
])
def test_bad_requests_name_the_problem(kwargs: dict, match: str) -> None:
    with pytest.raises(SettingError, match=match):
        TransitionRequest(**kwargs).resolved()


def test_request_defaults_resolve() -> None:
    req = TransitionRequest("surprise-removal").resolved()
    assert req.ordering is Ordering.HCA_FIRST and req.hold_ms == 500
    assert TransitionRequest("hibernate").resolved().hold_ms == 2000
    assert TransitionRequest.from_json(req.to_json()) == req


def test_timeline_sorts_entries_from_other_processes() -> None:
    tl = Timeline(t0_ns=1_000)
    tl.add(EntryKind.STEP_BEGIN, "shim", "port-down", t_ns=2_000)
    tl.add(EntryKind.STEP_END, "shim", "port-down", t_ns=5_000)
    tl.add(EntryKind.ASYNC_EVENT, "rxe0", "PORT_ERR", t_ns=3_000, code=10)  # arrived late
    assert [e.what for e in tl.entries] == ["port-down", "PORT_ERR", "port-down"]
    back = Timeline.from_json(tl.to_json())
    assert back.entries == tl.entries and back.t0_ns == 1_000
    assert tl.to_json()["entries"][1]["t_ms"] == 0.002
    lines = tl.render()
    assert "PORT_ERR" in lines[1] and "code=10" in lines[1]


def test_result_json_round_trip(tmp_path: Path) -> None:
    req = TransitionRequest("standby", Ordering.HCA_FIRST, on_veto=OnVeto.FORCE).resolved()
    tl = Timeline(t0_ns=0)
    tl.add(EntryKind.VETO, "rxe0", "delete blocked", t_ns=10, holders=["pid 1 (x)"])
    steps = [StepRecord(S.PORT_DOWN, "ok", 0, 2_000_000), StepRecord(S.HOLD, "skipped")]
    scan = KmsgScan(Marker("abc", "rxe-power: marker abc", 10, True), 3, [], 11, False)
    veto = VetoReport(True, "force", 0.6, [{"pid": 42, "cmdline": "ib_send_bw",
                                             "files": ["/dev/infiniband/uverbs0"]}],
                      [{"pid": 42, "cmdline": "ib_send_bw", "how": "SIGTERM"}])
    res = TransitionResult(req, Verdict.FORCED, ["forced"], steps, tl, veto=veto, kernel=scan)
    path = tmp_path / "r.json"
    res.write(path)
    back = TransitionResult.read(path)
    assert back.verdict is Verdict.FORCED and back.veto == veto
    assert back.steps == steps and back.request == req
    assert back.kernel is not None and back.kernel.marker.token == "abc"
    assert back.total_ms == 2.0


def test_corrupt_result_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"schema": 1, "request": {')
    with pytest.raises(Exception, match=r"r\.json is unreadable or corrupt"):
        TransitionResult.read(path)


def _child(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_force_terminates_holders_and_escalates_to_kill() -> None:
    polite = _child("import time; print('ready', flush=True); time.sleep(60)")
    stubborn = _child("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "print('ready', flush=True); time.sleep(60)")
    holders = [Holder(polite.pid, "polite", ("/dev/infiniband/uverbs0",),
                      process_start(polite.pid)),
               Holder(stubborn.pid, "stubborn", ("/dev/infiniband/uverbs0",),
                      process_start(stubborn.pid))]
    out = {t["pid"]: t["how"] for t in terminate_holders(holders, timeout_s=1.0)}
    assert out == {polite.pid: "SIGTERM", stubborn.pid: "SIGKILL"}
    # both are gone (Popen reaps their zombies)
    assert polite.wait(5) is not None and stubborn.wait(5) is not None
    assert not psutil.pid_exists(polite.pid) and not psutil.pid_exists(stubborn.pid)


def test_force_spares_a_process_that_took_a_holders_pid() -> None:
    """Issue 17, defect 14: the identity is the one read when the holder was found. A
    holder that exited and whose pid now names another process is not signalled."""
    other = _child("import time; print('ready', flush=True); time.sleep(60)")
    try:
        found = Holder(other.pid, "the holder", ("/dev/infiniband/uverbs0",),
                       (process_start(other.pid) or 0.0) - 1.0)  # an earlier process
        out = terminate_holders([found], timeout_s=1.0)
        assert out[0]["how"] == "already gone"
        assert other.poll() is None  # the process that has the pid now lives on
    finally:
        other.kill()
        other.wait(5)


def test_force_never_terminates_the_shim_itself() -> None:
    import os

    out = terminate_holders([Holder(os.getpid(), "me", ("/dev/infiniband/uverbs0",))])
    assert "shim's own process" in out[0]["how"]


def test_pm_test_support_reasons(tmp_path: Path) -> None:
    assert "CONFIG_PM_DEBUG" in pmtest.support("freezer", tmp_path).reason
    (tmp_path / "pm_test").write_text("[none] core processors platform devices freezer\n")
    (tmp_path / "state").write_text("mem disk\n")
    sup = pmtest.support("freezer", tmp_path)
    assert not sup.ok and "not freeze" in sup.reason
    (tmp_path / "state").write_text("freeze mem disk\n")
    assert "unknown pm_test level" in pmtest.support("deep", tmp_path).reason

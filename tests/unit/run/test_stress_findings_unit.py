"""The stress run's detectors (harness/run/stress_findings.py, stress_holders.py), each
with its negative control: on the per-cycle figures recorded in a guest run where one
event (cycle 132: a client terminated at the delete, its peer QP left behind) was
reported as 69 failed cycles (tests/data/stress-disassociate-repro.json), and on made-up
series where each detector must fire and where it must not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.run.stress_findings import (
    RSS_FIT_MIN_CYCLES,
    RSS_GROWTH_BOUND_KB_PER_CYCLE,
    RSS_WARMUP_CYCLES,
    StepTracker,
    rss_growth,
)
from harness.run.stress_holders import PEER_AGENT, RunParts, by_part, explain
from harness.system.rdma_res import ResHolder

DEVS = ("rxe0", "rxe1")


@pytest.fixture
def repro(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "stress-disassociate-repro.json").read_text())


def failures_of(cycles: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Each cycle's rdma res failures from the step tracker (nothing explained)."""
    st, out = StepTracker(), {}
    for c in cycles:
        for dev in DEVS:
            v = st.observe(c["cycle"], f"{dev} rdma res", c["rdma_res"][dev])
            if v.failure:
                out.setdefault(c["cycle"], []).append(v.failure)
    return out


def test_the_recorded_run_is_one_event_not_69_failures(repro: dict[str, Any]) -> None:
    """The run reported 69 failed cycles (132-200) for one event; the tracker reports it
    once, at cycle 132, both devices, and its span in the run's findings."""
    assert sum(c["failed"] for c in repro["cycles"]) == 69  # what the old check said
    fails = failures_of(repro["cycles"])
    assert list(fails) == [132]
    assert fails[132] == ["rxe0 rdma res differs from cycle 1: qp 4 -> 3, cq 4 -> 3, "
                          "mr 3 -> 2, pd 4 -> 3",
                          "rxe1 rdma res differs from cycle 1: qp 1 -> 2, cq 1 -> 2, mr 0 -> 1"]
    st = StepTracker()
    for c in repro["cycles"]:
        for dev in DEVS:
            st.observe(c["cycle"], f"{dev} rdma res", c["rdma_res"][dev])
    spans = [s.describe() for s in st.steps]
    assert spans == ["rxe0 rdma res: qp 4 -> 3, cq 4 -> 3, mr 3 -> 2, pd 4 -> 3 cycles 132-132",
                     "rxe1 rdma res: qp 1 -> 2, cq 1 -> 2, mr 0 -> 1 from cycle 132 to the "
                     "last (200)"]


def test_steps_fire_on_each_new_change_and_not_on_flat_series() -> None:
    base = {"qp": 4, "cq": 4}
    up = {"qp": 5, "cq": 4}
    upper = {"qp": 6, "cq": 4}
    st = StepTracker()
    seq = [base, base, up, up, up, upper, base, base, up]
    got = [st.observe(n, "rxe0 rdma res", v) for n, v in enumerate(seq, 1)]
    assert [n for n, v in enumerate(got, 1) if v.failure] == [3, 6, 9]  # each new level
    assert got[3].note == "rxe0 rdma res: qp 4 -> 5 since cycle 3"
    assert got[6].note.startswith("rxe0 rdma res: back to cycle 1's values (the change of "
                                  "cycle 6 lasted 1 cycle(s))")
    flat = StepTracker()
    assert not any(flat.observe(n, "x", base).failure or flat.observe(n, "x", base).note
                   for n in range(1, 50))


def test_an_explained_step_fails_once_when_it_is_no_longer_explained() -> None:
    """The peer agent's QP of a client that went, inside its keep-alive: a note; still
    there the next cycle, past the keep-alive: one failure then; notes after."""
    st = StepTracker()
    b, more = {"qp": 1}, {"qp": 2}
    assert not st.observe(1, "rxe1 rdma res", b).failure
    v2 = st.observe(2, "rxe1 rdma res", more, explained=True, why="within keep-alive")
    assert not v2.failure and "within keep-alive" in v2.note
    v3 = st.observe(3, "rxe1 rdma res", more, explained=False, why="past keep-alive")
    assert v3.failure == ("rxe1 rdma res: qp 1 -> 2 since cycle 2, not explained any "
                          "more: past keep-alive")
    v4 = st.observe(4, "rxe1 rdma res", more, explained=False, why="past keep-alive")
    assert not v4.failure and v4.note
    assert [s.failed for s in st.steps] == [True]
    # and a step that goes away while still explained never fails
    st2 = StepTracker()
    st2.observe(1, "d", b)
    st2.observe(2, "d", more, explained=True, why="keep-alive")
    st2.observe(3, "d", b)
    assert [s.failed for s in st2.steps] == [False] and st2.steps[0].ended


def rss_series(repro: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Per process (a respawned worker is a new one: the run's notes say when)."""
    out: dict[str, list[tuple[int, float]]] = {}
    gen: dict[str, int] = {}
    for c in repro["cycles"]:
        for note in c["notes"]:
            if " respawned " in note:
                name = note.split(" respawned ")[0]
                gen[name] = gen.get(name, 0) + 1
        for name, kb in c["rss_kb"].items():
            out.setdefault(f"{name}#{gen.get(name, 0)}", []).append((c["cycle"], kb))
    return out


def test_rss_growth_fires_on_the_recorded_controller_and_not_on_the_flat_workers(
        repro: dict[str, Any]) -> None:
    """Recorded: the controller went 35.6 -> 45.0 MB, +12.5 MB in cycle 132 alone (the
    cycle its client was terminated and read back from its journal); fail-fast's
    31.0 -> 31.2 MB over 200 cycles is no finding."""
    judged, not_judged = rss_growth(rss_series(repro))
    by = {g.process: g for g in judged}
    ctl = by["controller#0"]
    assert ctl.over_bound and ctl.slope_kb_per_cycle > 4 * RSS_GROWTH_BOUND_KB_PER_CYCLE
    assert ctl.largest_step_cycle == 132 and ctl.largest_step_kb > 12 * 1024
    assert "+12.5 MiB in one step at cycle 132" in ctl.describe()
    assert not by["fail-fast-0#0"].over_bound and not by["queue-replay-1#0"].over_bound
    assert by["fail-fast-0#0"].slope_kb_per_cycle < 1
    # the respawned graceful-2 (68 cycles after 132) is judged on its own series
    assert "graceful-2#1" in by and by["graceful-2#0"].last_cycle == 131
    assert not not_judged


def test_rss_growth_bound_and_what_is_not_judged() -> None:
    n = RSS_WARMUP_CYCLES + RSS_FIT_MIN_CYCLES
    leak = [(c, 30_000 + 32 * c) for c in range(1, n + 1)]  # 32 KiB per cycle
    clean = [(c, 30_000 + 1.6 * c + (4 if c % 7 == 0 else 0)) for c in range(1, n + 1)]
    settling = [(c, 30_000 + (4000 if c > 3 else 0)) for c in range(1, n + 1)]
    short = leak[:n - 1]
    judged, not_judged = rss_growth({"leak": leak, "clean": clean, "settling": settling,
                                     "short": short})
    assert {g.process: g.over_bound for g in judged} == {"leak": True, "clean": False,
                                                         "settling": False}
    assert not_judged == [f"short: {n - 1} cycles, fewer than the {RSS_WARMUP_CYCLES} of "
                          f"warm-up + {RSS_FIT_MIN_CYCLES} fitted"]
    just_over = [(c, 30_000 + (RSS_GROWTH_BOUND_KB_PER_CYCLE + 0.5) * c) for c in range(1, n + 1)]
    just_under = [(c, 30_000 + (RSS_GROWTH_BOUND_KB_PER_CYCLE - 0.5) * c)
                  for c in range(1, n + 1)]
    judged, _ = rss_growth({"over": just_over, "under": just_under})
    assert {g.process: g.over_bound for g in judged} == {"over": True, "under": False}


# --- who holds what -------------------------------------------------------------------------

Q = {"qp": 1, "cq": 1, "mr": 1, "pd": 1}
AGENT_PID, GRACEFUL_PID, NEW_PID, CTL = 210, 338, 1970, 200


def rxe1(agent_qps: int) -> dict[ResHolder, dict[str, int]]:
    return {ResHolder(AGENT_PID, "python3"): {"qp": agent_qps, "cq": agent_qps,
                                               "mr": agent_qps, "pd": 1},
            ResHolder(None, "ib_core"): {"qp": 1, "cq": 0, "mr": 0, "pd": 1}}


def parts(gone_s: float | None, gone: dict[str, str] | None = None) -> RunParts:
    qps = [] if gone_s is None else [{"qp_id": 7, "owner_pid": GRACEFUL_PID,
                                       "controller": False, "partner_gone_s": gone_s}]
    return RunParts({AGENT_PID: PEER_AGENT, GRACEFUL_PID: "graceful-2", NEW_PID: "graceful-2",
                     CTL: "controller"}, gone or {}, AGENT_PID,
                    {"keepalive_s": 5.0, "qps": qps, "reaped": []})


def test_the_peer_agent_keeps_a_gone_clients_qp_within_its_keepalive_only() -> None:
    base = by_part(rxe1(0), parts(None))
    ok, why = explain("rxe1", base, by_part(rxe1(1), parts(2.3)), parts(2.3))
    assert ok, why
    assert why == ("rxe1: +1 qp, +1 cq, +1 mr held by the peer agent (pid 210) for client "
                   "graceful-2: graceful-2 went 2.3 s ago; the agent's keep-alive destroys "
                   "them at 5 s")
    late, why = explain("rxe1", base, by_part(rxe1(1), parts(7.9)), parts(7.9))
    assert not late and "past the agent's keep-alive of 5 s" in why
    # the agent holding one more QP of its own (not made for a client): a leak, named
    unowned, why = explain("rxe1", base, by_part(rxe1(1), parts(None)), parts(None))
    assert not unowned and why == ("rxe1: +1 qp, +1 cq, +1 mr held by peer agent (qp 1, "
                                   "cq 1, mr 1, pd 1 now)")


def test_a_terminated_clients_missing_objects_are_explained_others_are_not() -> None:
    dev0 = {ResHolder(GRACEFUL_PID, "python"): Q, ResHolder(211, "python"): Q}
    names = parts(None).names | {211: "fail-fast-0"}
    p = RunParts(names, {"graceful-2": "terminated-by-shim in cycle 132 (pid 338); "
                                        "respawned at the next cycle"}, AGENT_PID, None)
    base = by_part(dev0, p)
    now = by_part({ResHolder(211, "python"): Q}, p)
    ok, why = explain("rxe0", base, now, p)
    assert ok and why.startswith("rxe0: -1 qp, -1 cq, -1 mr, -1 pd of graceful-2: "
                                 "terminated-by-shim in cycle 132")
    # the same loss by a client that is running (not gone): not explained
    alive = RunParts(names, {}, AGENT_PID, None)
    ok, why = explain("rxe0", base, by_part({ResHolder(211, "python"): Q}, alive), alive)
    assert not ok and why == ("rxe0: -1 qp, -1 cq, -1 mr, -1 pd of graceful-2 (qp 0, cq 0, "
                              "mr 0, pd 0 now)")
    # a process that is not the run's holding objects is named by pid and comm
    ok, why = explain("rxe0", base, by_part({**dev0, ResHolder(4242, "ib_send_bw"): Q}, alive),
                      alive)
    assert not ok and "held by pid 4242 (ib_send_bw), not the run's" in why


def test_the_warmup_keeps_a_short_clean_runs_settling_from_reading_as_growth(
        data_dir: Path) -> None:
    """Recorded (40 held standby cycles after the MR fix): the workers settle in steps
    up to their 15th cycle. Fitted from cycle 21 (RSS_WARMUP_CYCLES) nothing is over the
    bound; fitted from cycle 11, three workers read 9-18 KiB per cycle: the reason for
    the warm-up's length, and the negative control of the finding on clean data."""
    rss = json.loads((data_dir / "stress-rss-series.json").read_text())["after_mr_fix"]
    series = {p: list(enumerate(v, 1)) for p, v in rss.items()}
    judged, not_judged = rss_growth(series)
    assert not not_judged and len(judged) == 6
    assert not [g.describe() for g in judged if g.over_bound]
    early, _ = rss_growth(series, warmup=10)
    assert sorted(g.process.split(" ")[0] for g in early if g.over_bound) == [
        "fail-fast-0", "graceful-2", "tests_helpers_bad_clients_HoldsTheDevice-3"]


def test_the_peer_agents_mr_leak_is_what_the_finding_caught(data_dir: Path) -> None:
    """Recorded (30 cycles, before each MR had its own mapping): the peer agent grew by
    one 292 KiB MR buffer in most cycles. Fitted from cycle 11 it is the one finding, at
    over 50 times the bound; the workers of the same run are not. A 30-cycle run is too
    short for the default warm-up: it says so instead of judging."""
    rss = json.loads((data_dir / "stress-rss-series.json").read_text())["before_mr_fix"]
    series = {p: list(enumerate(v, 1)) for p, v in rss.items()}
    early, _ = rss_growth(series, warmup=10)
    (agent,) = [g for g in early if g.over_bound]
    assert agent.process.startswith("peer-agent")
    assert agent.slope_kb_per_cycle > 50 * RSS_GROWTH_BOUND_KB_PER_CYCLE
    _, not_judged = rss_growth(series)
    assert len(not_judged) == len(series)

"""Shards (harness.core.shards, harness.run.shard_plans): the split of a run into N runs,
pure logic. The N shards together run every item of the whole run exactly once, for any
items, durations and N; the split balances the recorded time; bad --shard values are
refused with the problem and the fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.errors import RxePowerError, SettingError
from harness.core.shards import (
    MAX_SHARDS,
    PlanUnit,
    Shard,
    ShardPlan,
    cycle_plan,
    cycle_share,
    estimates,
    parse_shard,
    plan_shard,
    read_durations,
    split,
    write_durations,
)
from harness.run.matrix import MatrixSpec
from harness.run.shard_plans import matrix_plan, stress_plan
from harness.run.stress import StressSpec

NAMES = st.lists(st.text(alphabet="abcdefgh/:[]-", min_size=1, max_size=6), max_size=40)
SECONDS = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)


# --- --shard I/N ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, shard", [("1/1", Shard(1, 1)), ("2/3", Shard(2, 3)),
                                         (" 3/3 ", Shard(3, 3)),
                                         (f"7/{MAX_SHARDS}", Shard(7, MAX_SHARDS))])
def test_a_shard_is_read(text: str, shard: Shard) -> None:
    assert parse_shard(text) == shard and str(shard) == text.strip()


@pytest.mark.parametrize("text, problem", [
    ("0/2", "shard 0 of 2 does not exist"), ("3/2", "shard 3 of 2 does not exist"),
    ("1/0", "0 shards"), (f"1/{MAX_SHARDS + 1}", f"{MAX_SHARDS + 1} shards"),
    ("1", "is not of the form I/N"), ("a/b", "is not of the form I/N"),
    ("-1/2", "is not of the form I/N"), ("1/2/3", "is not of the form I/N"),
    ("", "is not of the form I/N"), ("1 / 2", "is not of the form I/N")])
def test_a_bad_shard_names_the_problem_and_the_fix(text: str, problem: str) -> None:
    with pytest.raises(SettingError) as err:
        parse_shard(text)
    assert problem in err.value.problem and f"--shard {text!r}" in err.value.problem
    assert "--shard I/N" in err.value.fix and "--shard 1/2 and --shard 2/2" in err.value.fix


# --- the split -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(names=NAMES, data=st.data(), total=st.integers(1, 12))
def test_the_shards_together_are_the_whole_run_once(names: list[str], data: st.DataObject,
                                                   total: int) -> None:
    """Every place of the run is in exactly one shard, whatever the names (repeated too),
    the durations (recorded for some items only) and the number of shards."""
    durations = data.draw(st.dictionaries(st.sampled_from(names), SECONDS) if names
                          else st.just({}))
    parts = split(names, durations, total)
    assert len(parts) == total
    flat = [p for part in parts for p in part]
    assert sorted(flat) == list(range(len(names)))  # none lost, none twice
    assert all(part == sorted(part) for part in parts)  # each in the whole run's order
    # the same on every machine: the same input gives the same split (and the order of
    # the durations mapping does not matter)
    assert split(names, dict(reversed(durations.items())), total) == parts
    # greedy list scheduling: no shard expects more than the mean plus the largest item
    est = estimates(names, durations)
    loads = [sum(est[i] for i in part) for part in parts]
    if names:
        assert max(loads) <= sum(est) / total + max(est) + 1e-6
    if len(names) >= total:
        assert all(parts)  # no shard idle while another has two items


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.text(alphabet="abcxyz", min_size=1, max_size=5), unique=True,
                      min_size=1, max_size=30), data=st.data(), total=st.integers(1, 8))
def test_each_shard_plan_is_its_part_and_the_plans_cover_the_run(
        names: list[str], data: st.DataObject, total: int) -> None:
    durations = data.draw(st.dictionaries(st.sampled_from(names), SECONDS))
    if len(names) < total:
        with pytest.raises(SettingError, match="nothing to run") as err:
            plan_shard(names, durations, Shard(total, total))
        assert f"at most {len(names)} shards" in err.value.fix
        return
    plans = [plan_shard(names, durations, Shard(i, total)) for i in range(1, total + 1)]
    seen = [pos for p in plans for pos in p.positions]
    assert sorted(seen) == list(range(1, len(names) + 1))
    for p in plans:
        assert p.items == tuple(names[pos - 1] for pos in p.positions)
        assert p.places_in(names) == [pos - 1 for pos in p.positions]
        assert ShardPlan.from_json(json.loads(json.dumps(p.to_json()))).positions == \
            p.positions
        assert math.isclose(sum(p.loads), sum(estimates(names, durations)), abs_tol=1e-6)


def test_largest_first_onto_the_least_loaded_ties_by_name() -> None:
    names = ["d", "a", "c", "b", "e"]
    durations = {"a": 10.0, "b": 10.0, "c": 4.0, "d": 3.0, "e": 3.0}
    # a(10)->1, b(10)->2, c(4)->1 (tie: lowest), d(3)->2, e(3)->2 (13 vs 14 -> 2: 13)
    assert split(names, durations, 2) == [[1, 2], [0, 3, 4]]
    assert split(names, durations, 1) == [[0, 1, 2, 3, 4]]


def test_an_item_without_a_recorded_duration_counts_the_median() -> None:
    names = ["slow", "mid", "fast", "new"]
    est = estimates(names, {"slow": 30.0, "mid": 6.0, "fast": 2.0})
    assert est == [30.0, 6.0, 2.0, 6.0]
    assert estimates(["x", "y"], {}) == [1.0, 1.0]  # none recorded: split by count
    # time, not count: the slow item alone, the three others together
    assert split(names, {"slow": 30.0, "mid": 6.0, "fast": 2.0}, 2) == [[0], [1, 2, 3]]
    plan = plan_shard(names, {"slow": 30.0, "mid": 6.0, "fast": 2.0}, Shard(2, 2))
    assert plan.timed == 3 and plan.expected_s == 14.0 and plan.loads == (30.0, 14.0)
    # nothing timed: split by count, and no expectation claimed
    assert plan_shard(names, {}, Shard(1, 2)).expected_s is None


def test_a_plan_refuses_another_run() -> None:
    plan = plan_shard(["a", "b", "c"], {}, Shard(1, 2))
    with pytest.raises(RxePowerError, match="planned for a run of 3 items"):
        plan.places_in(["a", "b"])
    with pytest.raises(RxePowerError, match="is not at place"):
        plan.places_in(["c", "b", "a"])


@pytest.mark.parametrize("bad", [None, [], {"index": 3, "total": 2, "whole": 1},
                                 {"index": 1, "total": 1, "whole": 1, "items": ["a"],
                                  "positions": [1, 2], "loads": [1.0], "unit": "s",
                                  "timed": 0},
                                 {"index": 1, "total": 2, "whole": 1, "items": ["a"],
                                  "positions": [1], "loads": [1.0], "unit": "s",
                                  "timed": 0},
                                 {"index": True, "total": 1, "whole": 1, "items": [],
                                  "positions": [], "loads": [0], "unit": "s",
                                  "timed": 0},
                                 {"index": 1, "total": 1, "whole": 1, "items": ["a"],
                                  "positions": [1], "loads": [1.0], "unit": "minutes",
                                  "timed": 0},
                                 {"index": 1, "total": 1, "whole": 1, "items": ["a"],
                                  "positions": [1], "loads": [1.0], "unit": "s",
                                  "timed": 2}])
def test_a_stored_plan_of_the_wrong_shape_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="shard record"):
        ShardPlan.from_json(bad)


# --- stress cycles -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(cycles=st.integers(1, 500), total=st.integers(1, 40))
def test_stress_shards_share_the_cycles_contiguously(cycles: int, total: int) -> None:
    if cycles < total:
        with pytest.raises(SettingError, match="cannot be split"):
            cycle_share(cycles, Shard(1, total))
        return
    shares = [cycle_share(cycles, Shard(i, total)) for i in range(1, total + 1)]
    assert [n for r in shares for n in r] == list(range(1, cycles + 1))  # in order, once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    plan = cycle_plan(cycles, Shard(total, total))
    assert plan.positions == tuple(shares[-1]) and sum(plan.loads) == cycles


def test_a_stress_shard_plans_its_cycles() -> None:
    spec = StressSpec(cycles=10)
    assert stress_plan(spec, None) is None
    plan = stress_plan(spec, Shard(2, 3))
    assert plan is not None and plan.positions == (5, 6, 7)
    assert plan.unit is PlanUnit.CYCLES and plan.loads == (4, 3, 3) and plan.expected_s is None
    with pytest.raises(SettingError, match="10 cycles cannot be split into 11 shards"):
        stress_plan(spec, Shard(1, 11))


# --- the matrix's shards -------------------------------------------------------------------


def run_spec() -> MatrixSpec:
    """`rxe-power run`'s default matrix (harness.cli.results_commands.matrix_spec)."""
    from harness.cli.main import build_parser
    from harness.cli.results_commands import matrix_spec

    args = build_parser().parse_args(["run"])
    return matrix_spec(args)


def test_the_default_run_in_any_number_of_shards_runs_every_scenario_once() -> None:
    spec = run_spec()
    ids = [sc.id for sc in spec.scenarios()]
    assert len(ids) == len(set(ids)) == 11
    for total in range(1, len(ids) + 1):
        plans = [matrix_plan(spec, Shard(i, total)) for i in range(1, total + 1)]
        got = sorted(pos for p in plans if p is not None for pos in p.positions)
        assert got == list(range(1, len(ids) + 1)), total
    with pytest.raises(SettingError, match="11 scenarios, fewer than 12 shards"):
        matrix_plan(spec, Shard(12, 12))


# --- the durations file --------------------------------------------------------------------


def test_durations_are_merged_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    assert read_durations(path) == {}  # none recorded yet: every item counts the same
    write_durations(path, {"a": 1.23456, "b": 2.0}, "about", "run 1")
    write_durations(path, {"b": 3.0, "c": 0.0}, "about", "run 2")
    assert read_durations(path) == {"a": 1.235, "b": 3.0, "c": 0.0}
    doc = json.loads(path.read_text())
    assert doc["sources"] == ["run 1", "run 2"] and list(doc["seconds"]) == ["a", "b", "c"]


@pytest.mark.parametrize("text, problem", [
    ("{", "is not JSON"), ("[]", "no \"seconds\" object"), ('{"seconds": 3}', "no \"seconds\""),
    ('{"seconds": {"a": -1}}', "not a finite number"),
    ('{"seconds": {"a": "1"}}', "not a finite number"),
    ('{"seconds": {"a": true}}', "not a finite number"),
    ('{"seconds": {"a": NaN}}', "not a finite number")])
def test_a_bad_durations_file_is_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(RxePowerError, match=problem) as err:
        read_durations(path)
    assert str(path) in err.value.problem and "seconds" in err.value.fix

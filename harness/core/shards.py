"""Shards: one run split into N runs whose union is exactly the whole run (pure logic).

    shard = parse_shard("2/3")                         # Shard(2, 3); SettingError if bad
    plan = plan_shard(names, durations, shard)         # ShardPlan: which items shard 2 runs
    plan.positions, plan.items, plan.loads             # 1-based places in the whole run, ...
    cycles = cycle_share(200, shard)                   # range(68, 135): stress cycles

The split balances time, not count: every item gets its recorded duration in seconds
(`durations`, a committed file of real runs: read_durations), an item without one the
median of those that have one (1 s when none has), and the items, largest first (ties by
name, then by place), go one by one onto the shard with the least time so far (ties: the
one with fewer items, then the lowest). The same names and durations give the same split
on every machine, so N independent runs, each told its own I/N, together run every item
exactly once; each shard runs its items in the whole run's order.

Stress cycles are alike in cost: a shard runs a contiguous share of them (cycle_share),
numbered as in the whole run (the greedy split would give the same counts, dealt round
robin).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.core.errors import OsCallError, RxePowerError, SettingError
from harness.core.files import atomic_write

MAX_SHARDS = 1000  # --shard I/N: N at most this
UNKNOWN_DURATION_S = 1.0  # every item's estimate when no item has a recorded duration
_SHARD_RE = re.compile(r"([0-9]{1,7})/([0-9]{1,7})")
SHARD_FIX = (f"give --shard I/N: N shards (1 to MAX_SHARDS={MAX_SHARDS}) and this run's "
             "shard I, from 1 to N (e.g. --shard 1/2 and --shard 2/2)")


@dataclass(frozen=True, order=True)
class Shard:
    """Shard `index` of `total` (1-based)."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(text: str, option: str = "--shard") -> Shard:
    """`I/N` -> Shard(I, N); a SettingError naming the problem and the fix otherwise."""
    m = _SHARD_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise SettingError(f"{option} {text!r} is not of the form I/N", SHARD_FIX)
    index, total = int(m.group(1)), int(m.group(2))
    if not 1 <= total <= MAX_SHARDS:
        raise SettingError(f"{option} {text!r}: {total} shards; at most "
                           f"MAX_SHARDS={MAX_SHARDS}, at least 1", SHARD_FIX)
    if not 1 <= index <= total:
        raise SettingError(f"{option} {text!r}: shard {index} of {total} does not exist "
                           f"(shards are numbered 1 to {total})", SHARD_FIX)
    return Shard(index, total)


def estimates(names: Sequence[str], durations: Mapping[str, float]) -> list[float]:
    """Each item's expected seconds: its recorded duration, else the median of the
    recorded durations of these items (UNKNOWN_DURATION_S when none has one)."""
    known = [float(durations[n]) for n in names if n in durations]
    fill = statistics.median(known) if known else UNKNOWN_DURATION_S
    return [float(durations[n]) if n in durations else fill for n in names]


def split(names: Sequence[str], durations: Mapping[str, float], total: int) -> list[list[int]]:
    """The 0-based places of `names` in each of `total` shards, each list ascending.
    Greedy: largest estimate first (ties by name, then place) onto the least loaded shard
    (ties: the one with fewer items, then the lowest: items of 0 s are dealt out too, and
    no shard is left empty while another has two). Names may repeat (each place is its
    own item)."""
    if not 1 <= total <= MAX_SHARDS:
        raise SettingError(f"{total} shards", SHARD_FIX)
    est = estimates(names, durations)
    loads = [0.0] * total
    out: list[list[int]] = [[] for _ in range(total)]
    for place in sorted(range(len(names)), key=lambda i: (-est[i], names[i], i)):
        target = min(range(total), key=lambda s: (loads[s], len(out[s]), s))
        loads[target] += est[place]
        out[target].append(place)
    return [sorted(places) for places in out]


class PlanUnit(StrEnum):
    """What a plan's loads count."""

    SECONDS = "s"  # recorded seconds (the median for an item without one)
    CYCLES = "cycles"  # stress cycles, alike in cost


@dataclass(frozen=True)
class ShardPlan:
    """What one shard of a run runs: its items (in the whole run's order), their 1-based
    places in the whole run, how many items the whole run has, and every shard's load (the
    balance of the split: expected seconds, or cycles), from the durations in
    `durations_from`, which held a recorded time for `timed` of the whole run's items."""

    shard: Shard
    items: tuple[str, ...]
    positions: tuple[int, ...]
    whole: int
    loads: tuple[float, ...]
    unit: PlanUnit = PlanUnit.SECONDS
    timed: int = 0
    durations_from: str = ""

    @property
    def expected_s(self) -> float | None:
        """This shard's expected seconds (None: a cycle plan, or nothing was timed)."""
        if self.unit is not PlanUnit.SECONDS or not self.timed:
            return None
        return self.loads[self.shard.index - 1]

    def places_in(self, names: Sequence[str]) -> list[int]:
        """This shard's 0-based places in the whole run `names`, checked to be the run the
        plan was made for (an error names the first difference)."""
        if len(names) != self.whole:
            raise RxePowerError(f"shard {self.shard} was planned for a run of {self.whole} "
                                f"items, this run has {len(names)}",
                                "plan the shard from this run's own items")
        for pos, item in zip(self.positions, self.items, strict=True):
            if not 1 <= pos <= len(names) or names[pos - 1] != item:
                raise RxePowerError(f"shard {self.shard}: item {item!r} is not at place "
                                    f"{pos} of this run", "plan the shard from this run's "
                                    "own items")
        return [pos - 1 for pos in self.positions]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.shard.index, "total": self.shard.total,
                "items": list(self.items), "positions": list(self.positions),
                "whole": self.whole, "loads": [round(x, 3) for x in self.loads],
                "unit": self.unit.value, "timed": self.timed,
                "durations_from": self.durations_from}

    @classmethod
    def from_json(cls, d: object) -> ShardPlan:
        """A stored plan; ValueError naming what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"a shard record is not an object: {str(d)[:60]!r}")
        index, total, whole = d.get("index"), d.get("total"), d.get("whole")
        items, positions, loads = d.get("items"), d.get("positions"), d.get("loads")
        unit, timed = d.get("unit"), d.get("timed")
        if not (isinstance(index, int) and isinstance(total, int) and isinstance(whole, int)
                and _is_int(index) and _is_int(total) and _is_int(whole)
                and 1 <= index <= total <= MAX_SHARDS):
            raise ValueError(f"shard record: bad index/total/whole {index!r}/{total!r}/"
                             f"{whole!r}")
        if not (isinstance(items, list) and all(isinstance(x, str) for x in items)
                and isinstance(positions, list) and all(_is_int(x) for x in positions)
                and len(items) == len(positions)):
            raise ValueError("shard record: items and positions are not two lists of "
                             "names and places of one length")
        if not (isinstance(loads, list) and len(loads) == total
                and all(_is_number(x) for x in loads)):
            raise ValueError("shard record: loads is not one number per shard")
        if unit not in tuple(PlanUnit) or not (isinstance(timed, int) and _is_int(timed)
                                               and 0 <= timed <= whole):
            raise ValueError(f"shard record: bad unit/timed {unit!r}/{timed!r}")
        return cls(Shard(index, total), tuple(items), tuple(positions), whole,
                   tuple(float(x) for x in loads), PlanUnit(unit), timed,
                   str(d.get("durations_from") or ""))


def plan_shard(names: Sequence[str], durations: Mapping[str, float], shard: Shard,
               what: str = "items", durations_from: str = "") -> ShardPlan:
    """Shard `shard` of the run of `names` (split above). A shard with nothing to run is
    refused: there are fewer items than shards."""
    parts = split(names, durations, shard.total)
    places = parts[shard.index - 1]
    if not places:
        raise SettingError(f"--shard {shard}: the run has {len(names)} {what}, fewer than "
                           f"{shard.total} shards, so shard {shard.index} has nothing to run",
                           f"use at most {len(names)} shards (--shard I/{len(names)})")
    est = estimates(names, durations)
    loads = tuple(sum(est[i] for i in part) for part in parts)
    return ShardPlan(shard, tuple(names[i] for i in places), tuple(i + 1 for i in places),
                     len(names), loads, PlanUnit.SECONDS,
                     sum(1 for n in names if n in durations), durations_from)


def cycle_share(cycles: int, shard: Shard) -> range:
    """The cycles (numbered 1..cycles, as in the whole run) shard `shard` runs: a
    contiguous share, the first cycles % N shards one cycle more."""
    if cycles < shard.total:
        raise SettingError(f"--shard {shard}: {cycles} cycles cannot be split into "
                           f"{shard.total} shards", f"use at most {cycles} shards, or more "
                           "--cycles")
    size, extra = divmod(cycles, shard.total)
    start = (shard.index - 1) * size + min(shard.index - 1, extra)
    return range(start + 1, start + size + (shard.index <= extra) + 1)


def cycle_plan(cycles: int, shard: Shard) -> ShardPlan:
    """cycle_share as a plan (items are the cycle numbers; every cycle counts 1)."""
    mine = cycle_share(cycles, shard)
    loads = tuple(float(len(cycle_share(cycles, Shard(i, shard.total))))
                  for i in range(1, shard.total + 1))
    return ShardPlan(shard, tuple(str(n) for n in mine), tuple(mine), cycles, loads,
                     PlanUnit.CYCLES)


# --- the durations file -----------------------------------------------------------------------

# the suite's durations: the committed file `test --shard` splits by (under the rootdir), and
# the file every `rxe-power test` run leaves in its results folder (to commit as that one)
TEST_DURATIONS_FILE = "tests/durations.json"
TEST_DURATIONS_NAME = "test-durations.json"
TEST_DURATIONS_ABOUT = ("seconds per test (pytest node id: setup + call + teardown) from real "
                        "runs, recorded by pytest --record-durations (every `rxe-power test` "
                        "run records into its results folder's test-durations.json); "
                        "`rxe-power test --shard I/N` balances its shards by them "
                        "(harness.core.shards)")

DURATIONS_FIX = ("give a JSON file {\"seconds\": {NAME: SECONDS, ...}} as written by "
                 "write_durations (or remove it: every item then counts the same)")


def read_durations(path: Path) -> dict[str, float]:
    """The recorded seconds of a durations file; {} when there is none (every item then
    gets the same estimate). A file of the wrong shape is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise OsCallError(f"cannot read the durations file {path}", exc.errno or 0,
                          DURATIONS_FIX) from None
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RxePowerError(f"the durations file {path} is not JSON: {exc}",
                            DURATIONS_FIX) from None
    seconds = raw.get("seconds") if isinstance(raw, dict) else None
    if not isinstance(seconds, dict):
        raise RxePowerError(f"the durations file {path} has no \"seconds\" object",
                            DURATIONS_FIX)
    bad = [k for k, v in seconds.items() if not _is_number(v) or v < 0]
    if bad:
        raise RxePowerError(f"the durations file {path}: {bad[0]!r} has "
                            f"{seconds[bad[0]]!r}, not a finite number of seconds >= 0",
                            DURATIONS_FIX)
    return {str(k): float(v) for k, v in seconds.items()}


def write_durations(path: Path, recorded: Mapping[str, float], about: str,
                    source: str) -> Path:
    """Merge `recorded` into the durations file at `path` (an item recorded again takes the
    new value; others are kept), with `about` (what the file is) and `source` (what run
    recorded these: command, date, commit) added to its sources."""
    old_seconds = read_durations(path)
    sources: list[str] = []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        sources = [str(s) for s in old.get("sources", []) if isinstance(s, str)]
    except (OSError, ValueError, AttributeError):
        pass
    merged = {**old_seconds, **{k: round(float(v), 3) for k, v in recorded.items()}}
    doc = {"about": about, "sources": [*sources, source][-20:],
           "seconds": {k: merged[k] for k in sorted(merged)}}
    return atomic_write(path, json.dumps(doc, indent=1) + "\n")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(float(v)))

"""Recorded results cut into shards as `--shard I/N` runs write them (the merge's tests and
`--jobs`' tests read them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.core.shards import Shard, plan_shard


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, recs: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def shard_files(whole: Path, total: int, out: Path) -> list[Path]:
    """`whole` cut into `total` shard files, as `--shard I/N` runs write them: the split by
    the scenarios' recorded seconds, each shard's header with its plan, its scenarios with
    their places in the whole run."""
    recs = records(whole)
    head, scen = recs[0], [r for r in recs if r["kind"] == "scenario"]
    summary = [r for r in recs if r["kind"] == "summary"]
    ids = [r["scenario"]["id"] for r in scen]
    seconds = {r["scenario"]["id"]: r["seconds"] for r in scen}
    files = []
    for i in range(1, total + 1):
        plan = plan_shard(ids, seconds, Shard(i, total), "scenarios", "recorded")
        body = [scen[p - 1] for p in plan.positions]
        assert [r["index"] for r in body] == list(plan.positions)
        files.append(write(out / f"shard-{i}" / "results.jsonl",
                           [{**head, "shard": plan.to_json()}, *body, *summary]))
    return files

"""Results on disk: one JSON record per line (JSONL), schema-versioned, synced per record.

    with ResultsWriter(path, command="matrix", spec={...}, provenance=prov) as out:
        out.write("scenario", {...})          # flushed and fsynced before it returns
    results = read_results(path)              # header, records, and the first bad line
    results.scenarios(), results.cycles()     # the records, typed (harness.run.records)

Every line is {"schema": RESULTS_SCHEMA, "kind": KIND, ...}. The first record is the
`header` (what ran, where, when, and the run's `provenance`: the kernel, rdma_rxe, removal
mode, VM or not, versions and commit that made it, harness.system.provenance; absent in
files written before it was recorded; for one shard of a run, `shard`: which one and what
it runs, harness.core.shards.ShardPlan); then `scenario` (rxe-power matrix), `cycle`
(rxe-power stress) and a final `summary` (with the time it was written, `finished`). A
crash loses at most the record being written: the reader takes every good line up to the
first bad one and names it.

Schema 2 records how each client ended as a field (`ended`: harness.run.scenario_result.
ClientEnd); schema 1 (before it) is still read, its records migrated where they are made
typed (harness.run.records).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from harness.core import settings
from harness.core.errors import OsCallError, RxePowerError
from harness.core.files import open_new
from harness.core.shards import ShardPlan
from harness.run.records import CycleRecord, ScenarioRecord
from harness.system.provenance import Provenance
from harness.system.provenance_text import HeaderProvenance, header_provenance

RESULTS_SCHEMA = 2
MAX_LINE_BYTES = 64 << 20  # one record (a scenario with its ledgers is well under 1 MiB)
READABLE_SCHEMAS = (1, 2)


class RecordKind(StrEnum):
    HEADER = "header"
    SCENARIO = "scenario"
    CYCLE = "cycle"
    SUMMARY = "summary"


class ResultsWriter:
    """Appends records; each is on disk (flushed and fsynced) before write() returns."""

    def __init__(self, path: Path, command: str, spec: dict[str, Any], *,
                 provenance: Provenance | None, shard: ShardPlan | None = None) -> None:
        """`provenance`: what made the run (None only for files made by hand, as tests do:
        a run always has one, harness.run.session); `shard`: the run is this shard of a
        larger one (--shard I/N)."""
        self.path = path
        self._fh = open_new(path)
        self.write(RecordKind.HEADER, {
            "command": command, "spec": spec,
            "started": _now(),
            "host": {"node": platform.node(), "kernel": platform.release(),
                     "in_vm": settings.in_vm()},
            **({"provenance": provenance.to_json()} if provenance is not None else {}),
            **({"shard": shard.to_json()} if shard is not None else {})})

    def write(self, kind: RecordKind, body: dict[str, Any]) -> None:
        """One record; the summary gets the time it was written (`finished`)."""
        if kind is RecordKind.SUMMARY:
            body = {**body, "finished": _now()}
        line = json.dumps({"schema": RESULTS_SCHEMA, "kind": kind.value, **body},
                          separators=(",", ":"), default=str)
        self._fh.write(line + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Results:
    path: Path
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""  # the first bad line, named; reading stopped there

    def of_kind(self, kind: RecordKind) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind.value]

    def scenarios(self) -> list[ScenarioRecord]:
        return [ScenarioRecord.from_json(r) for r in self.of_kind(RecordKind.SCENARIO)]

    def cycles(self) -> list[CycleRecord]:
        return [CycleRecord.from_json(r) for r in self.of_kind(RecordKind.CYCLE)]

    @property
    def summary(self) -> dict[str, Any] | None:
        """The last summary record (None: the run is still going or stopped early)."""
        s = self.of_kind(RecordKind.SUMMARY)
        return s[-1] if s else None

    @property
    def command(self) -> str:
        return str((self.header or {}).get("command", "?"))

    @property
    def shard(self) -> ShardPlan | None:
        """The shard of a larger run this file is (--shard I/N), None for a whole run;
        ValueError naming the field for a header whose shard is of the wrong shape."""
        raw = (self.header or {}).get("shard")
        return None if raw is None else ShardPlan.from_json(raw)

    @property
    def provenance(self) -> HeaderProvenance:
        """The header's provenance: recorded, not recorded (an older file) or unreadable."""
        return header_provenance(self.header)


def read_results(path: Path) -> Results:
    """Every good record up to the first bad line; a missing file or a foreign schema is an
    error, a truncated or corrupt line is reported in `problem` and ends the reading."""
    fix = "give the path of a .jsonl written by rxe-power matrix or stress"
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise OsCallError(f"cannot read results file {path}", exc.errno or 0, fix) from None
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise RxePowerError(f"{path} is not a regular file (a device, pipe or socket)", fix)
        return _read_records(path, fh)


def _read_records(path: Path, fh: BinaryIO) -> Results:
    """Line by line, each line at most MAX_LINE_BYTES: memory stays bounded whatever the
    file holds (a file of zeros ends at its first MAX_LINE_BYTES)."""
    out = Results(path)
    lineno = 0
    while line := fh.readline(MAX_LINE_BYTES + 1):
        lineno += 1
        if len(line) > MAX_LINE_BYTES:
            out.problem = (f"{path} line {lineno} is over MAX_LINE_BYTES={MAX_LINE_BYTES} "
                           f"bytes (not a results file?); read the {len(out.records)} records "
                           "before it")
            break
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            rec = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            last = not line.endswith(b"\n") or _only_blank_left(fh)
            how = "cut short (the run was interrupted?)" if last else "corrupt"
            out.problem = (f"{where} is {how}: {exc}; read the {len(out.records)} records "
                           "before it")
            break
        if not isinstance(rec, dict) or "kind" not in rec:
            out.problem = f"{where} is not a results record (no 'kind'); stopped there"
            break
        if rec.get("schema") not in READABLE_SCHEMAS:
            raise RxePowerError(f"{where} has results schema {rec.get('schema')!r}; this "
                                "rxe-power reads schemas "
                                f"{', '.join(map(str, READABLE_SCHEMAS))}",
                                "read it with the rxe-power version that wrote it")
        if rec["kind"] == RecordKind.HEADER:
            if out.header is None:
                out.header = rec
            continue
        if rec["kind"] not in tuple(RecordKind):
            out.problem = f"{where} has unknown record kind {rec['kind']!r}; stopped there"
            break
        out.records.append(rec)
    if out.header is None and not out.records:
        raise RxePowerError(f"{path} holds no results records" + (f" ({out.problem})"
                                                                 if out.problem else ""),
                            "give a .jsonl written by rxe-power matrix or stress")
    return out


def _only_blank_left(fh: BinaryIO) -> bool:
    """Is the rest of the file blank (read in bounded pieces)?"""
    while chunk := fh.read(1 << 16):
        if chunk.strip():
            return False
    return True

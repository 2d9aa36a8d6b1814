"""The bench's record: DIR/bench.json written after every figure, the machine load
next to the figures, the issue's targets against them, and the summary lines."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import procfs, settings
from harness.core.errors import OsCallError, ProcError, RxePowerError
from harness.core.files import atomic_write
from harness.core.printer import Printer
from harness.run.bench.spec import BenchSpec

BENCH_FILE = "bench.json"
HOST_LOAD_ENV = settings.BENCH_HOST_ENV  # the host's load, measured before the guest booted
TARGETS = {"send_64k_bw_ratio": 0.80, "send_64_rate_ratio": 0.30, "cycle_vm_ms": 3000.0,
           "cycle_native_ms": 1000.0}


@dataclass
class BenchRecord:
    """The figures so far (`results`, bench.json's content) and where they go."""

    spec: BenchSpec
    out_dir: Path
    out: Printer  # what the bench says (the CLI's Printer)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.out_dir / BENCH_FILE

    def section(self, name: str) -> bool:
        return name in self.spec.sections

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        self.write()

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self.results, indent=1, default=str))


def read_bench(path: Path) -> dict[str, Any]:
    """A bench.json's figures: a JSON object holding the bench's `spec` (its `provenance`
    is read with harness.system.provenance.header_provenance). Errors name the file."""
    fix = "give the bench.json that rxe-power bench wrote"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise OsCallError(f"cannot read {path}", exc.errno or 0, fix) from None
    except ValueError as exc:
        raise RxePowerError(f"{path} is not JSON: {exc}", fix) from None
    if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
        raise RxePowerError(f"{path} is not a bench record (no `spec` object)", fix)
    return data


def machine_load() -> dict[str, Any]:
    """Where the figures were taken: load average and CPUs here; for a VM run, the host's
    (measured before the guest booted, handed over in the bench job: RXE_POWER_BENCH_HOST
    in the process that runs it)."""
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "nproc": os.cpu_count(),
            "in_vm": settings.in_vm(), "host": settings.bench_host()}


def host_load() -> dict[str, Any]:
    """This machine's load and the QEMUs running on it (another VM slows ours)."""
    qemus = []
    for pid in procfs.pids():
        with contextlib.suppress(ProcError):
            cmd = procfs.read_cmdline(pid)
            if cmd and "qemu-system" in os.path.basename(cmd[0]):
                qemus.append(pid)
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "nproc": os.cpu_count(),
            "qemu_pids": sorted(qemus)}


def load_text(load: dict[str, Any]) -> str:
    text = (f"load average {' '.join(str(x) for x in load['loadavg'])} on {load['nproc']} "
            f"CPUs{' (guest)' if load.get('in_vm') else ''}")
    host = load.get("host")
    if host:
        others = host.get("other_qemu_pids", [])
        text += (f"; host: load {' '.join(str(x) for x in host['loadavg'])} on "
                 f"{host['nproc']} CPUs, other QEMUs running: "
                 f"{len(others) if others else 'none'}")
    return text


def header_line(results: dict[str, Any]) -> str:
    t = results["topology"]
    return (f"rxe-power bench: {t['local']['dev']} <-> {t['peer']['dev']} (gid index "
            f"{t['local']['gid_index']}, {t['peer']['addr']}), kernel {results['kernel']}; "
            f"{load_text(results['load_start'])}")


def _ratio_target(text: str, row: dict[str, Any], key: str, goal: float) -> dict[str, Any]:
    """A target read from a throughput row; a failed row measured nothing: not met."""
    if row.get("failed"):
        return {"target": text, "value": None, "goal": goal, "met": False,
                "failed": row["failed"]}
    return {"target": text, "value": row[key], "goal": goal,
            "met": (row[key] or 0) >= goal}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run's figures (absent figures: not measured; a
    failed run: not met, with its cause)."""
    out: list[dict[str, Any]] = []
    qd = results.get("spec", {}).get("queue_depth")
    rows = {(r["size"], r["op"]): r for r in results.get("throughput", [])
            if r.get("signal_every") in (None, qd)}
    big = max((s for s, op in rows if op == "SEND"), default=None)
    small = min((s for s, op in rows if op == "SEND"), default=None)
    if big is not None:
        out.append(_ratio_target(f"harness SEND throughput >= 80% of ib_send_bw at {big} B",
                                 rows[(big, "SEND")], "ratio_mib",
                                 TARGETS["send_64k_bw_ratio"]))
    if small is not None:
        out.append(_ratio_target(f"harness SEND message rate >= 30% of ib_send_bw at {small} B",
                                 rows[(small, "SEND")], "ratio_msg",
                                 TARGETS["send_64_rate_ratio"]))
    whole = results.get("cycle", {}).get("summary", {}).get("whole")
    if whole:
        in_vm = results.get("load_start", {}).get("in_vm")
        goal = TARGETS["cycle_vm_ms" if in_vm else "cycle_native_ms"]
        out.append({"target": f"standby cycle (whole, median) under {goal / 1000:g} s "
                    f"({'emulated VM' if in_vm else 'native'})", "value": whole["median"],
                    "goal": goal, "met": whole["median"] < goal})
    return out


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = ["targets:"] if rows else []
    for r in rows:
        if r.get("failed"):
            out.append(f"  NOT MET {r['target']}: not measured, its run FAILED "
                       f"(goal {r['goal']})")
            continue
        out.append(f"  {'MET    ' if r['met'] else 'NOT MET'} {r['target']}: {r['value']} "
                   f"(goal {r['goal']})")
    return out

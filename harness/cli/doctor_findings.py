"""`rxe-power doctor`'s vocabulary: a Finding (ok / warn / FAIL, detail, fix) per check,
and the bounded way a check runs a command (run_cmd, a `Runner` tests replace).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

from harness.core.errors import BoundExceeded, OsCallError
from harness.core.proc import run_bounded


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {**asdict(self), "status": str(self.status)}


def ok(name: str, detail: str) -> Finding:
    return Finding(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str) -> Finding:
    return Finding(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Finding:
    return Finding(name, Status.FAIL, detail, fix)


@dataclass(frozen=True)
class Ran:
    returncode: int | None  # None: killed at its timeout
    stdout: str
    stderr: str


Which = Callable[[str], str | None]
Runner = Callable[[Sequence[str], float], Ran]


def run_cmd(argv: Sequence[str], timeout_s: float) -> Ran:
    """Run with a bound; OSError (e.g. ENOENT) propagates for the caller to report."""
    try:
        p = run_bounded(argv, timeout_s, step=" ".join(argv), bound_name="timeout_s",
                        outstanding=f"{argv[0]} had not exited")
    except BoundExceeded:
        return Ran(None, "", "")
    return Ran(p.returncode, p.stdout, p.stderr)


def os_detail(what: str, exc: OSError) -> str:
    return OsCallError(what, exc.errno or 0).problem  # "what: [ENOENT 2] No such file ..."


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"

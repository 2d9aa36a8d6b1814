"""Which processes hold an RDMA device open (its /dev/infiniband/uverbsN file).

On rxe, `rdma link delete` blocks until every holder lets go, so naming them is
how a blocked power-down is explained. Standard library only (/proc and /sys),
because ci/rxe-setup.sh runs this with the system python before any venv exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.core import procfs
from harness.core.errors import ProcError

SYSFS_VERBS = Path("/sys/class/infiniband_verbs")


@dataclass(frozen=True)
class Holder:
    pid: int
    cmdline: str
    files: tuple[str, ...]  # the uverbs device files it holds, e.g. ("/dev/infiniband/uverbs0",)
    # its start time (clock ticks since boot) read when it was found holding the device:
    # whoever signals it later checks it still is that process (a pid the kernel reused
    # by then is never signalled); None when it had already gone
    start: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"pid {self.pid} ({self.cmdline or '?'}) holding {', '.join(self.files)}"


def uverbs_files(device: str, sysfs: Path = SYSFS_VERBS) -> set[str]:
    """The /dev/infiniband/uverbsN files that belong to an RDMA device."""
    out: set[str] = set()
    if not sysfs.is_dir():
        return out
    for entry in sysfs.iterdir():
        try:
            if (entry / "ibdev").read_text().strip() == device:
                out.add(f"/dev/infiniband/{entry.name}")
        except OSError:
            continue
    return out


def find_holders(device: str, files: set[str] | None = None,
                 proc: Path = procfs.PROC) -> list[Holder]:
    """Every process with one of the device's uverbs files open, ourselves included.

    Pass `files` taken before a delete starts: the sysfs entries vanish once it does.
    """
    wanted = uverbs_files(device) if files is None else files
    if not wanted:
        return []
    holders = []
    for pid in procfs.pids(proc):
        try:
            fds = procfs.fd_targets(pid, proc)
        except ProcError:  # not ours to read
            continue
        # a device node removed while held reads "... (deleted)"
        held = {t.removesuffix(" (deleted)") for t in (fds or {}).values()} & wanted
        if held:
            start, cmdline = _identity(pid, proc)
            holders.append(Holder(pid, cmdline, tuple(sorted(held)), start))
    return sorted(holders, key=lambda h: h.pid)


def _identity(pid: int, proc: Path) -> tuple[float | None, str]:
    """Its start time and command line, read while it stayed one process; (None, "")
    when it went (or its pid was taken by another) meanwhile."""
    try:
        seen = procfs.read_stable(pid, lambda: procfs.read_cmdline(pid, proc), proc)
    except ProcError:
        seen = None
    if seen is None:
        return None, ""
    return float(seen[0]), " ".join(seen[1] or ())

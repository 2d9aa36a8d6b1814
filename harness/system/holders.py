"""Which processes hold an RDMA device open (its /dev/infiniband/uverbsN file).

On rxe, `rdma link delete` blocks until every holder lets go, so naming them is
how a blocked power-down is explained. Standard library only (/proc and /sys),
because ci/rxe-setup.sh runs this with the system python before any venv exists.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SYSFS_VERBS = Path("/sys/class/infiniband_verbs")


@dataclass(frozen=True)
class Holder:
    pid: int
    cmdline: str
    files: tuple[str, ...]  # the uverbs device files it holds, e.g. ("/dev/infiniband/uverbs0",)

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
                 proc: Path = Path("/proc")) -> list[Holder]:
    """Every process with one of the device's uverbs files open, ourselves included.

    Pass `files` taken before a delete starts: the sysfs entries vanish once it does.
    """
    wanted = uverbs_files(device) if files is None else files
    if not wanted:
        return []
    holders = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        held = set()
        try:
            for fd in (pid_dir / "fd").iterdir():
                try:
                    # a device node removed while held reads "... (deleted)"
                    target = os.readlink(fd).removesuffix(" (deleted)")
                except OSError:
                    continue
                if target in wanted:
                    held.add(target)
        except OSError:  # the process exited or is not ours to read
            continue
        if held:
            holders.append(Holder(int(pid_dir.name), _cmdline(pid_dir), tuple(sorted(held))))
    return sorted(holders, key=lambda h: h.pid)


def _cmdline(pid_dir: Path) -> str:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(p.decode(errors="replace") for p in raw.split(b"\0") if p)

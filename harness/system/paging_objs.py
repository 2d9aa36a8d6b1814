"""Kernel objects of the paging lane: a swap area on a fabric disk, the cgroup v2 group
whose memory limit makes its process page, and the memory controller enabled for it.

Every object is written to the state file before it is made; teardown and `rxe-power
cleanup` call `undo(entry)` newest first (harness.system.kernelobjs.undo dispatches here).
Every field is checked before it becomes part of a path or a command.

    kind              fields   removal
    paging_swap       path     swapoff (bounded: SWAPOFF_TIMEOUT_S; a swapoff that cannot
                               finish is left in the kernel and reported)
    paging_cgroup     name     cgroup.kill, wait for it to empty (CGROUP_EMPTY_TIMEOUT_S),
                               rmdir; a process stuck in the kernel keeps it: reported
    paging_subtree    -        `-memory` in the root's cgroup.subtree_control (we enabled it)

    swaps()                                # /proc/swaps as data
    Swap(Path("/dev/nvme0n1"), state).on() # mkswap + swapon, bounded; .off()
    grp = PagingCgroup(state, 64 << 20).make(); grp.add(pid); grp.events()
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import BoundExceeded, NotOurs, OsCallError, SettingError
from harness.core.printer import NULL, Printer
from harness.core.proc import RUN_DIR, run_bounded
from harness.core.state import StateFile

PROC_SWAPS = Path("/proc/swaps")
CGROUP_ROOT = Path("/sys/fs/cgroup")
OUR_CGROUP_PREFIX = "rxe-power-paging-"
SWAPON_TIMEOUT_S = 30.0  # mkswap, then swapon (reads the header over the fabric)
SWAPOFF_TIMEOUT_S = 60.0  # swapoff pages everything back in: over the fabric, bounded
CGROUP_EMPTY_TIMEOUT_S = 20.0  # cgroup.kill: every process of the group gone
POLL_S = 0.1
PAGING_KINDS = ("paging_swap", "paging_cgroup", "paging_subtree")
_CGROUP_RE = re.compile(re.escape(OUR_CGROUP_PREFIX) + r"[0-9]{1,10}")
_DEV_RE = re.compile(r"/dev/nvme[0-9]{1,4}n[0-9]{1,4}")
_SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
_DELETED = " (deleted)"  # d_path's mark on a swap area whose device node went


@dataclass(frozen=True)
class SwapArea:
    """One line of /proc/swaps."""

    path: str
    kind: str  # partition or file
    size_kib: int
    used_kib: int
    priority: int
    deleted: bool = False  # its device node is gone (the namespace was removed under it)


def swaps(text: str | None = None) -> list[SwapArea]:
    """The active swap areas (the kernel's table: a header line, then one area a line,
    spaces in a path escaped as \\040)."""
    text = PROC_SWAPS.read_text() if text is None else text
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) != 5:
            raise OsCallError(f"{PROC_SWAPS}: unexpected line {line[:80]!r}", 0,
                              "a kernel with another /proc/swaps format: report it")
        path = f[0].replace("\\040", " ")
        deleted = path.endswith(_DELETED)
        out.append(SwapArea(path.removesuffix(_DELETED), f[1], int(f[2]), int(f[3]),
                            int(f[4]), deleted))
    return out


def _our_device(path: str) -> str:
    if not _DEV_RE.fullmatch(path):
        raise NotOurs(f"swap device {path!r} is not an nvme namespace rxe-power connects",
                      "remove that entry from the state file by hand")
    return path


def _tool(name: str, args: list[str], timeout_s: float, bound: str, what: str) -> None:
    res = run_bounded([name, *args], timeout_s, step=f"{name} {' '.join(args)}",
                      bound_name=bound, outstanding=what, env={"PATH": _SBIN})
    if res.returncode != 0:
        raise OsCallError(f"{name} {' '.join(args)}: {res.stderr.strip()[:300]}", 0,
                          "read the message: is the device there and not in use?")


class Swap:
    """A swap area on a block device of ours, the only swap of this kernel."""

    def __init__(self, device: Path, state: StateFile) -> None:
        self.device = _our_device(str(device))
        self.state = state
        self.rdev = (0, 0)  # its device number, once on

    def on(self) -> None:
        others = [a.path for a in swaps() if a.path != self.device]
        if others:
            raise SettingError(f"swap is already active on {', '.join(others)}: the fabric "
                               "disk would not be the only swap device",
                               "run in the VM (`--mode vm`), or swapoff those first")
        st = os.stat(self.device)
        if not stat.S_ISBLK(st.st_mode):
            raise NotOurs(f"{self.device} is not a block device", "report this as a bug")
        # its number: once the namespace is removed under it, the area is taken off
        # through a node of our own with that number (the path is gone)
        self.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        self.state.record("paging_swap", path=self.device, major=self.rdev[0],
                          minor=self.rdev[1])
        _tool("mkswap", [self.device], SWAPON_TIMEOUT_S, "SWAPON_TIMEOUT_S",
              "mkswap had not written the swap header")
        _tool("swapon", [self.device], SWAPON_TIMEOUT_S, "SWAPON_TIMEOUT_S",
              "swapon had not returned")

    def active(self) -> SwapArea | None:
        return next((a for a in swaps() if a.path == self.device), None)

    def off(self, out: Printer = NULL) -> str:
        """swapoff, bounded; '' or what was left."""
        left = _swapoff(self.device, self.rdev, out)
        if not left:
            self.state.forget("paging_swap", path=self.device, major=self.rdev[0],
                              minor=self.rdev[1])
        return left


def _swapoff(device: str, rdev: tuple[int, int], out: Printer) -> str:
    area = next((a for a in swaps() if a.path == device), None)
    if area is None:
        return ""
    node = device
    tmp = None
    if area.deleted:  # the namespace went: a node of ours with its number reaches it
        RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="rxe-power-swapoff-", dir=RUN_DIR)
        node = os.path.join(tmp, "swap")
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(*rdev))
    try:
        _tool("swapoff", [node], SWAPOFF_TIMEOUT_S, "SWAPOFF_TIMEOUT_S",
              "swapoff had not paged everything back in")
    except BoundExceeded as exc:
        return f"swapoff {device} left in the kernel: {exc.outstanding}"
    except OsCallError as exc:
        return f"swapoff {device}{' (deleted)' if area.deleted else ''} failed: {exc.problem}"
    finally:
        if tmp is not None:
            os.unlink(node)
            os.rmdir(tmp)
    out(f"swapoff {device}" + (" (its namespace was gone: through our own node)"
                               if area.deleted else ""))
    return ""


class PagingCgroup:
    """A cgroup v2 group of ours under the root, with a memory limit."""

    def __init__(self, state: StateFile, memory_max: int, root: Path = CGROUP_ROOT,
                 memory_high: int | None = None) -> None:
        self.state, self.memory_max, self.root = state, memory_max, root
        self.memory_high = memory_high  # reclaim (and throttle) above this, never OOM
        self.name = f"{OUR_CGROUP_PREFIX}{os.getpid()}"
        self.path = root / self.name

    def make(self) -> PagingCgroup:
        controllers = _read(self.root / "cgroup.controllers", "a cgroup v2 root").split()
        if "memory" not in controllers:
            raise SettingError(f"{self.root} has no memory controller ({controllers})",
                               "boot with cgroup v2 and the memory controller (the VM has it)")
        if "memory" not in _read(self.root / "cgroup.subtree_control", "").split():
            self.state.record("paging_subtree")
            _write(self.root / "cgroup.subtree_control", "+memory")
        self.state.record("paging_cgroup", name=self.name)
        try:
            self.path.mkdir()
        except OSError as exc:
            raise OsCallError(f"mkdir {self.path}: {exc.strerror}", exc.errno or 0,
                              "a cgroup of a dead run? `rxe-power cleanup`") from None
        _write(self.path / "memory.max", str(self.memory_max))
        if self.memory_high is not None:
            _write(self.path / "memory.high", str(self.memory_high))
        _write(self.path / "memory.swap.max", "max")
        return self

    def add(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", str(pid))

    def remove(self, out: Printer = NULL) -> list[str]:
        """The group (its processes killed first) and the controller we enabled for it;
        what was left (each still in the state file)."""
        left = _remove_cgroup(self.path, out)
        if left:
            return [left]
        self.state.forget("paging_cgroup", name=self.name)
        for e in self.state.created:
            if e["kind"] == "paging_subtree":
                more = undo(e, out, self.root)
                if more:
                    return [more]
                self.state.forget(**e)
        return []

    def events(self) -> dict[str, int]:
        """memory.events: oom, oom_kill, max, high, ... (the kernel's counts)."""
        return flat_keyed(_read(self.path / "memory.events", "memory.events"))

    def stat(self) -> dict[str, int]:
        return flat_keyed(_read(self.path / "memory.stat", "memory.stat"))


def flat_keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, val = line.partition(" ")
        if val.strip().lstrip("-").isdigit():
            out[key] = int(val)
    return out


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise OsCallError(f"read {path}: {exc.strerror}", exc.errno or 0,
                          f"is this {what or 'cgroup file'} there (cgroup v2 mounted)?") \
            from None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise OsCallError(f"write {value!r} to {path}: {exc.strerror}", exc.errno or 0,
                          "is cgroup v2 mounted read-write, and are we root?") from None


def _remove_cgroup(path: Path, out: Printer) -> str:
    if not path.is_dir():
        return ""
    kill = path / "cgroup.kill"
    if kill.exists():
        _write(kill, "1")
    end = time.monotonic() + CGROUP_EMPTY_TIMEOUT_S
    while _read(path / "cgroup.procs", "").split():
        if time.monotonic() > end:
            pids = _read(path / "cgroup.procs", "").split()
            return (f"cgroup {path.name} kept processes {pids} past CGROUP_EMPTY_TIMEOUT_S="
                    f"{CGROUP_EMPTY_TIMEOUT_S:g}s (stuck in the kernel): left")
        time.sleep(POLL_S)
    try:
        path.rmdir()
    except OSError as exc:
        return f"rmdir {path}: [{errno_mod.errorcode.get(exc.errno or 0, '?')}] {exc.strerror}"
    out(f"removed cgroup {path.name}")
    return ""


def undo(entry: dict[str, Any], out: Printer = NULL, root: Path = CGROUP_ROOT) -> str:
    """Remove the object one state-file entry names (if it is still there); '' or what
    was left."""
    kind = entry["kind"]
    if kind == "paging_swap":
        major, minor = entry.get("major"), entry.get("minor")
        if not (isinstance(major, int) and isinstance(minor, int)
                and 0 <= major < 1 << 12 and 0 <= minor < 1 << 20):
            raise NotOurs(f"swap entry {entry} has no device number",
                          "remove that entry from the state file by hand")
        return _swapoff(_our_device(str(entry.get("path"))), (major, minor), out)
    if kind == "paging_cgroup":
        name = str(entry.get("name"))
        if not _CGROUP_RE.fullmatch(name):
            raise NotOurs(f"cgroup {name!r} is not one rxe-power makes",
                          "remove that entry from the state file by hand")
        return _remove_cgroup(root / name, out)
    if kind == "paging_subtree":
        try:
            _write(root / "cgroup.subtree_control", "-memory")
        except OsCallError as exc:  # EBUSY: a group of someone else's uses it now: keep it
            return f"left memory enabled in {root}/cgroup.subtree_control: {exc.problem}"
        out("memory controller off again in the root's subtree")
        return ""
    raise NotOurs(f"kind {kind!r} is not a paging object", "report this as a bug")

"""The state file: everything rxe-power created, written down before it is created.

    state = StateFile.load()
    state.record("netdev", name="rxpw0", peer="rxpw0s")     # then create it
    track(proc, "peer-agent")  /  untrack(proc.pid)         # processes we started

Entries are kept in creation order; each carries its `owner` (pid and process start
time, so a reused pid is never mistaken for ours). A change is a locked
read-modify-write of the file (flock), written atomically and fsynced, so every
process of a run (and a second run) sees the same record, and a SIGKILL at any
point leaves a file that says exactly what exists. `rxe-power cleanup`
(harness/topology/cleanup.py) and the next run (harness/core/proc.py `reap_stale`,
then the topology's setup) read it to remove what a killed run left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import procfs
from harness.core.errors import ProcUnreadable, TopologyError
from harness.core.files import atomic_write
from harness.core.settings import state_path
from harness.core.state_entries import check_entry, check_trusted

STATE_PATH = state_path()  # RXE_POWER_STATE
STATE_SCHEMA = 1
OWNER_KEYS = ("owner", "keep")  # bookkeeping, not part of an entry's identity
RUN_KINDS = ("process", "dir", "delete")  # what a run makes for itself, besides the topology

Entry = dict[str, Any]  # one record of the state file, as JSON (kind, its attributes, owner)


def process_start(pid: int) -> float | None:
    """The process's start time (clock ticks since boot, from /proc), or None if gone or
    unreadable (a zombie is gone: it only waits for its parent to collect its exit
    status). A stat line not in the kernel's format is ProcFormatError."""
    try:
        stat = procfs.read_stat(pid)
    except ProcUnreadable:
        return None
    return None if stat is None or stat.gone else float(stat.start_ticks)


def me() -> Entry:
    return {"pid": os.getpid(), "start": process_start(os.getpid())}


def alive(owner: Entry | None) -> bool:
    """Is the process that `owner` names still the same process?"""
    if not owner:
        return False
    start = process_start(int(owner["pid"]))
    return start is not None and start == owner.get("start")


def _identity(entry: Entry) -> Entry:
    return {k: v for k, v in entry.items() if k not in OWNER_KEYS}


@dataclass
class StateFile:
    """What we created, in creation order."""

    path: Path = STATE_PATH
    config: dict[str, str] = field(default_factory=dict)
    created: list[Entry] = field(default_factory=list)  # well-formed entries only
    rejected: list[Any] = field(default_factory=list)  # malformed: kept in the file, unused
    problems: list[str] = field(default_factory=list)  # one per rejected entry

    @staticmethod
    def _sort(path: Path, entries: list[Any]) -> tuple[list[Entry], list[Any], list[str]]:
        good: list[Entry] = []
        bad: list[Any] = []
        problems = []
        for i, entry in enumerate(entries):
            why = check_entry(entry)
            if why is None:
                good.append(entry)
            else:
                bad.append(entry)
                problems.append(f"state file {path}: entry {i} skipped ({why}); nothing it "
                                "names was touched. Check it, then remove it from the file")
        return good, bad, problems

    @classmethod
    def load(cls, path: Path | None = None) -> StateFile:
        path = path or STATE_PATH
        check_trusted(path.parent, folder=True)
        check_trusted(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA \
                    or not isinstance(data.get("created"), list) \
                    or not isinstance(data.get("config", {}), dict):
                raise ValueError(f"schema {data.get('schema')!r}, expected {STATE_SCHEMA}"
                                 if isinstance(data, dict) else "not a JSON object")
        except (OSError, ValueError) as exc:
            raise TopologyError(
                f"state file {path} is unreadable or corrupt: {exc}",
                f"inspect it; if nothing of ours is left, remove it (rm {path})",
            ) from None
        return cls(path, data.get("config", {}), *cls._sort(path, data["created"]))

    @contextlib.contextmanager
    def _locked(self, reload: bool = True) -> Iterator[None]:
        """Under the lock: re-read (others may have recorded meanwhile), let the caller
        change, write back."""
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_trusted(self.path.parent, folder=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except OSError as exc:
            raise TopologyError(
                f"cannot open the state lock {lock_path}: [{exc.errno}] {exc.strerror}"
                + (" (a symbolic link: refusing to follow it)" if exc.errno == errno.ELOOP
                   else ""), f"remove {lock_path} if it is not a plain file, and check "
                f"who can write {self.path.parent}") from None
        with os.fdopen(fd, "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if reload:
                fresh = StateFile.load(self.path)
                self.created, self.rejected = fresh.created, fresh.rejected
                self.problems = fresh.problems
                self.config = self.config or fresh.config
            yield
            self._write()

    def _write(self) -> None:
        body = {"schema": STATE_SCHEMA, "config": self.config,
                "created": [*self.created, *self.rejected]}
        atomic_write(self.path, json.dumps(body, indent=1), mode=0o600)

    def save(self) -> None:
        """Write this object's view as it is."""
        with self._locked(reload=False):
            pass

    def record(self, kind: str, keep: bool | None = None, **attrs: object) -> None:
        """Write the entry down (before the object is created). `keep`: made by
        `rxe-power setup` to stay, rather than by a run that removes it at its end."""
        with self._locked():
            if not self.has(kind, **attrs):
                entry = {"kind": kind, **attrs, "owner": me()}
                if keep is not None:
                    entry["keep"] = keep
                self.created.append(entry)

    def has(self, kind: str, **attrs: object) -> bool:
        want = {"kind": kind, **attrs}
        return any(_identity(e) == want for e in self.created)

    def forget(self, kind: str, **attrs: object) -> None:
        want = {"kind": kind, **{k: v for k, v in attrs.items() if k not in OWNER_KEYS}}
        with self._locked():
            self.created = [e for e in self.created if _identity(e) != want]

    def adopt(self) -> None:
        """Make the current process the owner of every topology entry (a run taking over
        the topology that a killed run built, so that it is removed at this run's end)."""
        with self._locked():
            for e in self.created:
                if e["kind"] not in RUN_KINDS:
                    e["owner"] = me()

    def owns_netdev(self, name: str) -> bool:
        return any(e["kind"] == "netdev" and name in (e["name"], e.get("peer"))
                   for e in self.created)

    def owns_rdma_link(self, name: str) -> bool:
        return any(e["kind"] == "rdma_link" and e["name"] == name for e in self.created)

    def processes(self) -> list[Entry]:
        return [e for e in self.created if e["kind"] == "process"]

    def topology_entries(self) -> list[Entry]:
        return [e for e in self.created if e["kind"] not in RUN_KINDS]


def track(proc: subprocess.Popen[Any], role: str, group: bool = False) -> None:
    """Record a process we started (with its start time): if we are killed, cleanup ends
    it. `group`: it leads its own process group, which is ended with it."""
    start = process_start(proc.pid)
    if start is None:
        return  # already gone
    entry: Entry = {"pid": proc.pid, "start": start, "role": role}
    if group:
        entry["group"] = True
    with contextlib.suppress(PermissionError):  # not root: nothing of ours can exist
        StateFile.load().record("process", **entry)


def untrack(pid: int) -> None:
    with contextlib.suppress(PermissionError):
        state = StateFile.load()
        for e in state.processes():
            if e["pid"] == pid:
                state.forget(**e)

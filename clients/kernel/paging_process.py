"""The parent's side of the paging worker (clients/kernel/paging_worker.py): start it,
put it into its cgroup before it allocates, read its events as they come, stop it, and
tell what became of it.

    proc = PagingProcess(pages=12288, seed=1, state=state)
    proc.start(); grp.add(proc.pid); proc.go(); proc.wait_filled()
    proc.progress()                    # touches so far (its last report)
    fate = proc.stop()                 # bounded: STOP_TIMEOUT_S; stuck: left, stack kept
    proc.events, fate.process, fate.stack
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from harness.core import procfs
from harness.core.errors import BoundExceeded, ProtocolError, RxePowerError
from harness.core.proc import python_child, spawn
from harness.workload.page_ledger import ProcessFate, Sweep, Touch, parse_event

FILL_TIMEOUT_S = 120.0  # every page written once (under the limit: paged out as it goes)
STOP_TIMEOUT_S = 120.0  # the sweep pages every page in again: over the fabric, bounded
POLL_S = 0.05


@dataclass
class Fate:
    process: ProcessFate
    returncode: int | None  # None: still there (stuck in the kernel, left)
    stack: list[str] = field(default_factory=list)  # its kernel stack when stuck
    state: str = ""  # its /proc state letter when it was looked at

    def to_json(self) -> dict[str, Any]:
        return {"process": self.process.value, "returncode": self.returncode,
                "stack": self.stack, "state": self.state}


class PagingProcess:
    def __init__(self, pages: int, seed: int, plants: tuple[str, ...] = ()) -> None:
        self.pages, self.seed, self.plants = pages, seed, plants
        self.events: list[Touch | Sweep] = []
        self.filled_ns: int | None = None
        self.touches = 0  # from its last progress report
        self.progress_at: list[tuple[int, int]] = []  # (t_ns, touches)
        self.problem = ""  # a line it wrote that is not its protocol
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        argv = python_child("clients.kernel.paging_worker", str(self.pages), str(self.seed),
                            *[a for p in self.plants for a in ("--plant", p)])
        self._proc = spawn(argv, "paging worker", stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()  # it waits for `go`: nothing allocated yet
        try:
            rec = json.loads(ready)
        except ValueError:
            rec = {}
        if rec.get("event") != "ready":
            raise ProtocolError(f"paging worker: first line {ready[:80]!r} is not `ready`")
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="paging-worker-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                rec = json.loads(line)
                kind = rec.get("event")
                with self._lock:
                    if kind == "filled":
                        self.filled_ns = int(rec["t_ns"])
                    elif kind == "progress":
                        self.touches = int(rec["touches"])
                        self.progress_at.append((int(rec["t_ns"]), self.touches))
                    else:
                        self.events.append(parse_event(rec))
            except (ValueError, TypeError, KeyError, AttributeError):
                self.problem = self.problem or f"not its protocol: {line[:120]!r}"

    def _send(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: its fate says how

    def go(self) -> None:
        self._send("go")

    def wait_filled(self) -> None:
        end = time.monotonic() + FILL_TIMEOUT_S
        while self.filled_ns is None:
            if self._proc is not None and self._proc.poll() is not None:
                raise RxePowerError(f"the paging worker ended ({self._proc.returncode}) before "
                                "it had written every page", "read its cgroup's "
                                "memory.events (oom_kill?) and the kernel log")
            if time.monotonic() > end:
                raise BoundExceeded("the paging worker's first write of every page",
                                    "FILL_TIMEOUT_S", FILL_TIMEOUT_S,
                                    f"{self.pages} pages, not all written")
            time.sleep(POLL_S)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, oom_kills: int = 0) -> Fate:
        """Ask it to sweep and exit; wait within STOP_TIMEOUT_S. `oom_kills`: its cgroup's
        oom_kill count (memory.events), which tells an OOM kill from another SIGKILL."""
        assert self._proc is not None
        self._send("stop")
        end = time.monotonic() + STOP_TIMEOUT_S
        while self._proc.poll() is None and time.monotonic() < end:
            time.sleep(POLL_S)
        rc = self._proc.poll()
        if rc is None:  # stuck: where, then left (the cgroup's removal reports it)
            st = procfs.read_stat(self._proc.pid)
            stack = procfs.read_kernel_stack(self._proc.pid, self._proc.pid) or ()
            return Fate(ProcessFate.STUCK, None, list(stack), st.state if st else "")
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT_S)
        if rc == 0:
            return Fate(ProcessFate.ALIVE, rc)
        if rc == -signal.SIGBUS:
            return Fate(ProcessFate.SIGBUS, rc)
        if rc == -signal.SIGKILL and oom_kills:
            return Fate(ProcessFate.OOM_KILLED, rc)
        return Fate(ProcessFate.KILLED if rc < 0 else ProcessFate.EXITED, rc)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

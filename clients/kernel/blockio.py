"""The block I/O driver: O_DIRECT writes (and verified reads) with several in flight,
each recorded in the block ledger (harness/workload/block_ledger.py), on a block device
or on a file (one under an NFS mount: O_DIRECT writes there return once the server has
them, WRITE and COMMIT).

    drv = BlockDriver(Path("/dev/nvme0n1"), DriverSpec(count=400, depth=4, rate_per_s=50))
    drv.start()
    drv.pause(); ...; drv.resume(Path("/dev/nvme0n1"))    # clients-first: around the sleep
    drv.pause(); drv.detach(); ...; drv.resume(path)       # ... closing the file (unmount)
    records = drv.finish()                                 # bounded: IO_STUCK_TIMEOUT_S

Write `seq` goes to block `seq` (each block written once), so every acknowledged write
can be checked on the target's backing store. Every `read_every`-th I/O reads back the
newest acknowledged write and checks it. `depth` threads each do one pwrite/pread at a
time (the calls release the GIL), so up to `depth` I/Os are in flight. An I/O that has
not completed IO_STUCK_TIMEOUT_S after its submission is recorded stuck, with its
thread's /proc wchan and kernel stack.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.core import procfs
from harness.core.errors import OsCallError, ProcError, ProcUnreadable
from harness.workload.block_ledger import BlockState, IoOp, IoRecord, check_block, make_block

IO_STUCK_TIMEOUT_S = 20.0  # an I/O without completion this long after submission is stuck
PAUSE_DRAIN_TIMEOUT_S = 20.0  # pause(): in-flight I/O completes within this
FINISH_POLL_S = 0.05


@dataclass(frozen=True)
class DriverSpec:
    count: int = 400
    depth: int = 4
    rate_per_s: float = 50.0  # submissions per second overall; 0: as fast as possible
    block_size: int = 4096
    generation: int = 1
    read_every: int = 5  # every Nth I/O is a verified read; 0: writes only


def proc_task_info(tid: int) -> tuple[str, str]:
    """The task's wchan and kernel stack (what it waits for: function names, innermost
    first, one a line), as /proc tells it (harness.core.procfs)."""
    out = []
    for read in (procfs.read_wchan, procfs.read_kernel_stack):
        try:
            got = read("self", tid)
        except ProcUnreadable as exc:
            out.append(f"unreadable: {exc.strerror}")
            continue
        except ProcError as exc:
            out.append(f"unreadable: {exc.problem}")
            continue
        if got is None:
            out.append("unreadable: the thread is gone")
        else:
            out.append(got if isinstance(got, str) else "\n".join(got))
    return out[0], out[1]


class BlockDriver:
    def __init__(self, device: Path, spec: DriverSpec) -> None:
        self.spec = spec
        self.records: list[IoRecord] = []
        self._lock = threading.Condition()
        self._next = 0
        self._in_flight: dict[int, IoRecord] = {}
        self._paused = False
        self._stopping = False
        self._acked: int | None = None  # newest acknowledged write's seq
        self._limit = spec.count  # stop() lowers it to what was issued
        self._fd = self._open(device)
        self._t0 = 0.0
        self._threads = [threading.Thread(target=self._worker, name=f"blockio-{i}",
                                          daemon=True) for i in range(spec.depth)]

    def _open(self, device: Path) -> int:
        try:
            return os.open(device, os.O_RDWR | os.O_DIRECT)
        except OSError as exc:
            raise OsCallError(f"open {device} O_DIRECT", exc.errno or 0,
                              "is the block device (or the file, or its mount) there?"
                              ) from None

    def start(self) -> None:
        self._t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def _take(self) -> tuple[int, IoOp, int, int | None] | None:
        """The next I/O (seq, op, block, expected seq of a read), paced, or None at the end."""
        s = self.spec
        with self._lock:
            while True:
                if self._stopping or self._next >= self._limit:
                    return None
                due = self._t0 + self._next / s.rate_per_s if s.rate_per_s else 0.0
                wait = due - time.monotonic()
                if not self._paused and wait <= 0:
                    break
                self._lock.wait(max(wait, 0.005) if not self._paused else None)
            seq = self._next
            self._next += 1
            if s.read_every and seq % s.read_every == s.read_every - 1 and \
                    self._acked is not None:
                return seq, IoOp.READ, self._acked, self._acked
            return seq, IoOp.WRITE, seq, None

    def _worker(self) -> None:
        s = self.spec
        buf = mmap.mmap(-1, s.block_size)  # page aligned, as O_DIRECT wants
        tid = threading.get_native_id()
        while (job := self._take()) is not None:
            seq, op, block, expect = job
            rec = IoRecord(seq, op, block, s.generation, 0, expect_seq=expect, tid=tid)
            if op is IoOp.WRITE:
                buf[:] = make_block(seq, s.generation, block, s.block_size)
            with self._lock:
                rec.submit_ns = time.monotonic_ns()  # before finish() can see it in flight
                self._in_flight[seq] = rec
                self.records.append(rec)
                fd = self._fd
            try:
                if op is IoOp.WRITE:
                    n = os.pwritev(fd, [buf], block * s.block_size)
                else:
                    n = os.preadv(fd, [buf], block * s.block_size)
                err = None
            except OSError as exc:
                n, err = None, exc.errno or 0
            done = time.monotonic_ns()
            with self._lock:
                if seq not in self._in_flight:
                    continue  # already declared stuck; its late return is kept as detail
                rec.done_ns, rec.nbytes, rec.errno = done, n, err
                if op is IoOp.READ and err is None:
                    rec.read_ok = expect is not None and check_block(
                        bytes(buf), expect, s.generation, block) is BlockState.INTACT
                if op is IoOp.WRITE and err is None and n == s.block_size:
                    self._acked = seq if self._acked is None else max(self._acked, seq)
                del self._in_flight[seq]
                self._lock.notify_all()

    # --- around the sleep (clients-first) ---------------------------------------------------

    def pause(self, timeout_s: float = PAUSE_DRAIN_TIMEOUT_S) -> list[int]:
        """Stop submitting and wait (bounded) for the in-flight I/O. Returns the seqs still
        in flight when the bound fired (empty when drained)."""
        end = time.monotonic() + timeout_s
        with self._lock:
            self._paused = True
            while self._in_flight and time.monotonic() < end:
                self._lock.wait(FINISH_POLL_S)
            return sorted(self._in_flight)

    def detach(self) -> None:
        """While paused: close the device or file (an unmount needs it closed)."""
        with self._lock:
            old, self._fd = self._fd, -1
        if old >= 0:
            os.close(old)

    def resume(self, device: Path) -> None:
        """Reopen the device (it may have a new name) and go on."""
        fd = self._open(device)
        with self._lock:
            old, self._fd = self._fd, fd
            self._paused = False
            # the pacing restarts from here: the I/O not issued while asleep comes now
            self._t0 = time.monotonic() - self._next / self.spec.rate_per_s \
                if self.spec.rate_per_s else 0.0
            self._lock.notify_all()
        if old >= 0:
            os.close(old)

    def answered_after(self, t_ns: int) -> bool:
        """An I/O submitted at or after `t_ns` (CLOCK_MONOTONIC) has completed, either way."""
        with self._lock:
            return any(r.submit_ns >= t_ns and r.done_ns for r in self.records)

    def stop(self) -> None:
        """Issue nothing more (the I/O in flight goes on; finish() collects it)."""
        with self._lock:
            self._limit = self._next
            self._lock.notify_all()

    @property
    def issued(self) -> int:
        with self._lock:
            return self._next

    def finish(self, stuck_timeout_s: float = IO_STUCK_TIMEOUT_S,
               finish_timeout_s: float | None = None) -> list[IoRecord]:
        """Let the workload run to its end (bounded by finish_timeout_s: the rest is not
        issued), then wait until every I/O completed or is older than stuck_timeout_s;
        those are recorded stuck with what their task waits for."""
        s = self.spec
        if finish_timeout_s is None:
            finish_timeout_s = (s.count / s.rate_per_s if s.rate_per_s else 60.0) + 30.0
        end = time.monotonic() + finish_timeout_s
        with self._lock:
            self._paused = False
            self._lock.notify_all()
            # every I/O issued (a thread stuck in the kernel holds only its own I/O back)
            while self._next < self._limit and time.monotonic() < end:
                self._lock.wait(FINISH_POLL_S)
            self._stopping = True
            self._lock.notify_all()
            while True:
                now = time.monotonic_ns()
                young = [r for r in self._in_flight.values()
                         if (now - r.submit_ns) / 1e9 < stuck_timeout_s]
                if not young:
                    break
                self._lock.wait(FINISH_POLL_S)
            for _seq, rec in sorted(self._in_flight.items()):
                rec.stuck_wchan, rec.stuck_stack = proc_task_info(rec.tid)
            self._in_flight.clear()  # stuck: their late return is not counted
            return sorted(self.records, key=lambda r: r.seq)

    def close(self) -> None:
        """Close the fd (a stuck thread keeps its own reference until it returns)."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

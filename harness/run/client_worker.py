"""One client worker process seen from the controller: its control channel, its journal
(a memfd shared with it) and its death as an event naming what it was doing."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from clients.userspace import policy_import_roots
from clients.userspace.worker import main as worker_main
from harness.core.device import DeviceInfo
from harness.core.errors import ProtocolError, RxePowerError
from harness.core.files import open_new
from harness.core.proc import spawn_python, stop_child
from harness.core.protocol import Channel
from harness.core.schemas import ChannelKind
from harness.workload.journal import ledger_from_journal
from harness.workload.ledger import Ledger, Outcome, WorkloadSpec

WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 5.0
LEDGER_PAGE_TIMEOUT_S = 60.0  # one page of a finished round's ledger
LEDGER_PAGE_REQUESTS = 20_000  # asked for per page (the worker may send fewer)


class ClientWorker:
    """One worker process, its control channel (a socketpair) and its journal: a memfd
    this process made and shares with the worker, so that the worker's postings and
    completions are here the moment it writes them, whatever kills it (a file in the
    results folder would be on the VM's 9p share, and a page the worker had not written
    yet is lost with it). close() keeps a copy in the log folder."""

    def __init__(self, name: str, policy: str, spec: WorkloadSpec, log_dir: Path) -> None:
        self.name, self.policy, self.spec = name, policy, spec
        log_dir.mkdir(parents=True, exist_ok=True)
        self.journal = log_dir / f"{name}.journal.jsonl"  # the copy kept by close()
        self.journal.unlink(missing_ok=True)
        self.journal_fd = os.memfd_create(f"rxe-power-journal-{name}", os.MFD_CLOEXEC)
        self.log_path = log_dir / f"{name}.log"
        ours, theirs = socket.socketpair()
        self._log = open_new(self.log_path)  # closed in close()
        roots = [a for r in policy_import_roots([policy]) for a in ("--import-root", r)]
        try:
            self.proc = spawn_python(worker_main, "clients.userspace.worker",
                                     ["--fd", str(theirs.fileno()),
                                      "--journal-fd", str(self.journal_fd), *roots],
                                     f"client worker {name} ({policy})",
                                     pass_fds=[theirs.fileno(), self.journal_fd],
                                     stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        except BaseException:
            os.close(self.journal_fd)
            self._log.close()
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.chan = Channel(ours, f"client {name} (pid {self.pid})", ChannelKind.WORKER)
        self.rounds_done = 0  # finished workload rounds

    def start(self, device: DeviceInfo, agent_socket: str, clients_dir: Path) -> None:
        """Open the device and connect (the process was spawned already, in parallel)."""
        self.request("start", WORKER_START_TIMEOUT_S, name=self.name, policy=self.policy,
                     spec=self.spec.to_json(), device=device.to_json(),
                     agent_socket=agent_socket, clients_dir=str(clients_dir))

    def new_round(self, spec: WorkloadSpec) -> None:
        """The next workload round on the same process and device (after finish)."""
        self.spec = spec
        self.request("round", WORKER_START_TIMEOUT_S, spec=spec.to_json())

    def request(self, event: str, reply_timeout_s: float, **payload: object) -> dict[str, Any]:
        try:
            return self.chan.request(event, reply_timeout_s, **payload)
        except (ProtocolError, OSError) as exc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(WORKER_STOP_TIMEOUT_S)  # a broken channel: did it die?
            if self.proc.returncode is not None:
                raise WorkerDied(self, event) from exc
            raise

    def crash_text(self) -> str:
        rc = self.proc.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited {rc}"
        self._log.flush()
        tail = self.log_path.read_text().strip().splitlines()[-5:] if self.log_path.exists() \
            else []
        return how + (f"; its log ends: {' | '.join(tail)}" if tail else "")

    def journal_text(self) -> str | None:
        """Everything the worker has journaled so far (None: it cannot be read)."""
        try:
            size = os.fstat(self.journal_fd).st_size
            return os.pread(self.journal_fd, size, 0).decode("utf-8", "replace")
        except OSError:
            return None

    def journal_ledger(self) -> Ledger | None:
        """The ledger of this (killed) worker's current round up to the kill, from its
        journal (None: the journal cannot be read)."""
        text = self.journal_text()
        return None if text is None else ledger_from_journal(text, self.spec)

    def in_flight(self) -> list[int]:
        """From the journal: requests posted or waiting whose outcome never came."""
        led = self.journal_ledger()
        return [] if led is None else sorted(
            i for i, e in led.entries.items() if e.outcome is Outcome.KILLED_IN_FLIGHT)

    def fetch_ledger(self, requests: int) -> Ledger:
        """The finished round's whole ledger, page by page (see clients.userspace.worker
        "ledger")."""
        pages, start = [], 0
        while start < requests:
            page = self.request("ledger", LEDGER_PAGE_TIMEOUT_S, start=start,
                                limit=LEDGER_PAGE_REQUESTS)
            if int(page.get("stop", start)) <= start:
                raise ProtocolError(f"client {self.name}: ledger page from {start} is empty",
                                    "the worker must return at least one request per page")
            pages.append(page)
            start = int(page["stop"])
        return Ledger.from_pages(pages)

    def close(self) -> None:
        self.chan.sock.close()
        stop_child(self.proc, WORKER_STOP_TIMEOUT_S)
        self._log.close()
        text = self.journal_text()
        os.close(self.journal_fd)
        if text is not None:
            with open_new(self.journal) as f:
                f.write(text)

    def __enter__(self) -> ClientWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerDied(RxePowerError):
    def __init__(self, worker: ClientWorker, doing: str) -> None:
        self.worker = worker
        super().__init__(f"client {worker.name} died while {doing!r} was outstanding: "
                         f"{worker.crash_text()}", f"see {worker.log_path}")

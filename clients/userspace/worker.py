"""A client worker process: one client policy driving the workload, steered by a controller.

    python -m clients.userspace.worker --fd N

It stands alone: everything it needs comes in the `start` request over the
control socket (fd N, a socketpair end from the controller). Protocol: the
(event, payload) JSON lines of harness.core.protocol on the WORKER channel
(harness.core.schemas.WORKER_REQUESTS), each answered by the worker's
worker_<event> method:

    start    {name, policy, spec, device, agent_socket, clients_dir}
             -> {generation}                 device opened, QPs connected
    go       {} -> {}                         start posting the workload
    progress {} -> {outstanding, queued, counts, done}
    stop     {} -> {issued, ran_dry}           the application stops handing requests over
             (a RESUMED workload): what was issued by now is the round's workload
    finish   {timeout_s} -> the client's report (counts, metrics, events; the ledger's
             size in "requests") when every request has an outcome, or at the deadline
             (in flight: LOST)
    ledger   {start, limit} -> a page of the ledger as columns (Recorder.page of
             harness.workload.recorder; Ledger.from_pages rebuilds it), at most `limit`
             requests from `start`, fewer if the page would not fit one message: "stop"
             says where it ended
    round    {spec} -> {generation}           after a finish: the next workload round on
             the same device with a fresh QP generation and ledger (rxe-power stress)

The worker lives until the controller closes the socket. Its journal (--journal-fd, a
memfd the controller made and reads back if the worker dies) gets every posting before
the post and every completion as it is taken (harness.workload.journal).

Power notices come straight from the shim on the client's own socket
(power.notify.ClientEndpoint). Every posting and completion also goes to the
journal file, so if the worker dies the controller can say what was in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

from clients.userspace import policy_class
from clients.userspace.connection import Policy
from clients.userspace.core import ClientCore
from harness.core.device import DeviceInfo
from harness.core.errors import ProtocolError, RxePowerError
from harness.core.handlers import handler_for
from harness.core.protocol import MAX_MESSAGE_BYTES, LineReader, Message, decode, error_reply
from harness.core.schemas import ChannelKind
from harness.rdma.event_fds import raise_fd_limit
from harness.workload.spec import WorkloadSpec
from power.notify import ClientEndpoint, SuspendReply

TICK_S = 0.05  # longest loop turn (the removal watch); completions and due posts wake sooner
MAX_PAGE_REQUESTS = 20_000  # ledger requests per page at most (~30 bytes each as columns)



Waitable = socket.socket | int  # a socket, or an fd number


def wait_any(fds: list[Waitable], timeout_s: float) -> set[Waitable]:
    """The readable ones of `fds` (sockets or fd numbers) after at most `timeout_s`: poll(2),
    which has no FD_SETSIZE limit (a QP's completion channel is an fd of its own)."""
    p = select.poll()
    by_fd: dict[int, Waitable] = {}
    for f in fds:
        fd = f if isinstance(f, int) else f.fileno()
        by_fd[fd] = f
        p.register(fd, select.POLLIN)
    return {by_fd[fd] for fd, _ in p.poll(timeout_s * 1000)}


class Worker:
    def __init__(self, sock: socket.socket, journal_fd: int | None = None) -> None:
        self.sock = sock
        self.journal_fd = journal_fd
        self.reader = LineReader()
        self.core: ClientCore | None = None
        self.endpoint: ClientEndpoint | None = None
        self.finish_msg: Message | None = None
        self.finish_deadline = 0.0
        self.journal: IO[str] | None = None

    def reply(self, msg: Message, event: str, payload: dict[str, Any]) -> None:
        self.sock.sendall(Message(event, payload, msg.id).encode())

    def handle(self, msg: Message) -> None:
        """Answer a request with its worker_<event> method (one per WORKER_REQUESTS event):
        the payload it returns is the "ok" reply; None: answered later (finish)."""
        handler = handler_for(self, "worker_", msg.event, "update the worker", msg.id)
        reply: dict[str, Any] | None = handler(msg)
        if reply is not None:
            self.reply(msg, "ok", reply)

    def _started(self, msg: Message) -> ClientCore:
        if self.core is None:
            raise RxePowerError(f"{msg.event!r} before start", "send start first")
        return self.core

    def worker_start(self, msg: Message) -> dict[str, Any]:
        if self.core is not None:
            raise ProtocolError(f"start while client {self.core.name!r} is running: a second "
                                "start would replace its ledger", "use one worker per client")
        core = self.start(msg.payload)
        return {"generation": core.generation, "pid": os.getpid()}

    def worker_go(self, msg: Message) -> dict[str, Any]:
        self._started(msg).go()
        return {}

    def worker_progress(self, msg: Message) -> dict[str, Any]:
        c = self._started(msg)
        return {"outstanding": c.outstanding(), "queued": len(c.queue),
                "counts": c.ledger.counts(), "done": c.done()}

    def worker_stop(self, msg: Message) -> dict[str, Any]:
        return self._started(msg).stop_arrivals()

    def worker_finish(self, msg: Message) -> None:
        """Answered by the loop once every request has an outcome, or at the deadline."""
        self._started(msg)
        if self.finish_msg is not None:
            raise ProtocolError(f"finish while finish id {self.finish_msg.id} is outstanding",
                                "send finish once")
        self.finish_msg = msg
        self.finish_deadline = time.monotonic() + msg.payload["timeout_s"]

    def worker_ledger(self, msg: Message) -> dict[str, Any]:
        return self.ledger_page(self._started(msg), msg.payload["start"], msg.payload["limit"])

    def worker_round(self, msg: Message) -> dict[str, Any]:
        core = self._started(msg)
        if self.finish_msg is not None:
            raise RxePowerError("round while a finish is outstanding",
                                "wait for the finish reply first")
        core.new_round(WorkloadSpec.from_json(msg.payload["spec"]))
        return {"generation": core.generation}

    @staticmethod
    def ledger_page(core: ClientCore, start: int, limit: int) -> dict[str, Any]:
        """A page that fits one message: halved until it does."""
        limit = max(1, min(limit, MAX_PAGE_REQUESTS))
        while True:
            page = core.ledger_page(start, limit)
            if limit == 1 or len(Message("ok", page).encode()) < MAX_MESSAGE_BYTES - 1024:
                return page
            limit //= 2

    def start(self, p: dict[str, Any]) -> ClientCore:
        policy: Policy = policy_class(p["policy"])()
        if self.journal_fd is None:
            raise RxePowerError("start without a journal", "start the worker with --journal-fd")
        self.journal = os.fdopen(self.journal_fd, "w", encoding="utf-8")  # closed at exit
        self.journal_fd = None  # the file object owns it now
        core = self.core = ClientCore(p["name"], policy, WorkloadSpec.from_json(p["spec"]),
                                      DeviceInfo.from_json(p["device"]), p["agent_socket"],
                                      self.journal)
        core.admitting = False  # until "go"
        core.open(core.device_info)

        def on_suspend(transition: str, deadline_s: float) -> SuspendReply | None:
            core.note("suspend_prepare", transition=transition, deadline_s=deadline_s)
            return policy.on_suspend(core, deadline_s)

        def on_resume(transition: str, info: DeviceInfo) -> None:
            core.note("resume_complete", transition=transition, dev=info.dev)
            policy.on_resume(core, info)

        self.endpoint = ClientEndpoint(p["name"], on_suspend, on_resume,
                                       clients_dir=Path(p["clients_dir"]))
        return core

    def loop(self) -> int:
        while True:
            fds: list[Waitable] = [self.sock]
            if self.endpoint is not None:
                fds.append(self.endpoint.fileno())
            if self.core is not None:
                fds += self.core.fds()
            timeout = TICK_S
            if self.core is not None:
                core = self.core
                core.flush_journal()  # arrivals and refusals, before the wait
                if core.spec.completion == "poll":
                    timeout = 0
                elif (due := core.pace_delay()) is not None:
                    timeout = min(TICK_S, due)  # wake when the next post is due, not later
            readable = wait_any(fds, timeout)
            if self.sock in readable:
                # Nothing the controller sends ends the worker: a line that is not a valid
                # WORKER_REQUESTS message, a request out of order, or a handler's exception
                # is answered with an "error" reply (id 0 when the line's id cannot be
                # read) and the loop carries on with its ledger intact. A line over
                # MAX_MESSAGE_BYTES without a newline (broken framing) is answered the same
                # way and the reader skips to the next newline: unlike the peer agent, which
                # drops such a connection, the worker has only this one, and dropping it
                # would end the worker. Only the socket itself failing ends the loop.
                try:
                    data = self.sock.recv(1 << 16)
                except OSError:
                    return 0  # the controller is gone (connection reset)
                if not data:
                    return 0  # the controller is gone
                try:
                    lines, framing = self.reader.feed(data), None
                except ProtocolError as exc:  # FramingError: whole lines before it in .lines
                    lines, framing = getattr(exc, "lines", []), exc
                for line in [*lines, None]:  # None: the framing error, if any, comes last
                    mid = 0
                    try:
                        if line is None:
                            if framing is None:
                                break
                            raise framing
                        msg = decode(line, ChannelKind.WORKER)
                        mid = msg.id
                        self.handle(msg)
                        continue
                    except Exception as exc:  # answered right here; never ends the worker
                        err = exc
                    if isinstance(err, ProtocolError) and not mid:
                        mid = err.msg_id
                    if isinstance(err, RxePowerError):
                        print(f"clients.userspace.worker: error reply to id {mid}: {err.problem}",
                              file=sys.stderr, flush=True)
                    else:
                        traceback.print_exception(err)
                    try:
                        self.sock.sendall(error_reply(err, mid))
                    except OSError:
                        return 0  # the controller is gone
            if self.endpoint is not None and self.endpoint.fileno() in readable:
                self.endpoint.handle_ready()
            if self.core is None:
                continue
            core = self.core
            core.service({f for f in readable if isinstance(f, int)})
            if self.finish_msg is not None and (core.done()
                                                or time.monotonic() >= self.finish_deadline):
                self.reply(self.finish_msg, "ok", core.finish())
                self.finish_msg = None

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        if self.core is not None:
            self.core.release()
        if self.journal is not None:
            self.journal.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="clients.userspace.worker",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--fd", type=int, required=True, help="the control socket's fd")
    ap.add_argument("--journal-fd", type=int, required=True,
                    help="the journal's fd (a memfd the controller reads back after a kill)")
    ap.add_argument("--import-root", action="append", default=[],
                    help="a folder a `module:Class` policy is imported from (the controller "
                         "found it; this process runs with -P: no working directory on its path)")
    args = ap.parse_args(argv)
    sys.path.extend(r for r in args.import_root if r not in sys.path)
    sock = socket.socket(fileno=args.fd)
    raise_fd_limit()
    worker = Worker(sock, args.journal_fd)

    def on_sigterm(signum: int, frame: object) -> None:
        """Terminated (the shim under --on-veto force): the journal gets what is pending,
        then the default action ends the process, as it would have."""
        with contextlib.suppress(Exception):
            if worker.core is not None:
                worker.core.note("terminated", signal=signum)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return worker.loop()
    except (RxePowerError, ProtocolError) as exc:
        print(f"clients.userspace.worker: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        traceback.print_exc()
        return 3
    finally:
        with contextlib.suppress(Exception):
            worker.close()
        sock.close()


if __name__ == "__main__":
    raise SystemExit(main())

"""A program that is not ours in the matrix: `--client-cmd 'PROG ARGS'` (and
`--server-cmd` for its own server on the peer HCA), run under the verbs tracer through a
transition, with a table row like a policy's.

Placeholders in the commands (each argument is formatted, after shlex splitting):
    {dev} {gid} {addr}                  the local HCA, its RoCEv2 GID index, its address
    {peer_dev} {peer_gid} {peer_addr}   the peer HCA's
    {port}                              a free port (the programs' rendezvous: a TCP port,
                                        or the rdma_cm port of a server such as rping)
A scenario: the server starts (traced) and is ready when it listens on {port}, over TCP or
through rdma_cm on the peer HCA (or, if its command has no {port}, when its rdma_cm id
listens there or it holds the peer HCA: outside_ready.py); the client starts (traced, with
RXE_POWER_CLIENTS_DIR set so it may speak the notify protocol) and is busy when its log
shows a successful completion; the shim runs the transition; the client gets
CLIENT_EXIT_TIMEOUT_S to end by itself (else it is stopped and the row says so); then both
ledgers are built from the logs and the client's SENDs are matched with the server's
receives. A program that does not answer the notify protocol is treated as hca-first
would treat it: the shim finds it holding the device and (under --on-veto force) ends it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import string
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.tracer.traced import make_trace_dir, recorded_work_dir, traced_env
from harness.core import settings
from harness.core.bounds import MAX_WAIT_S, check_number
from harness.core.errors import BoundExceeded, SettingError
from harness.core.proc import spawn, stop_child
from harness.run.outside_lane import program_lane
from harness.run.outside_ready import ServerReady
from harness.run.outside_result import CLIENT_EXIT_TIMEOUT_S as CLIENT_EXIT_TIMEOUT_S
from harness.run.outside_result import OutsideResult, ProgramResult
from harness.run.scenario_result import ClientEnd
from harness.system.kstacks import process_in_kernel
from harness.system.tcp_ports import free_tcp_port
from harness.topology.neighbour import resolve_neighbour
from harness.workload.coverage import Coverage, Span
from harness.workload.ledger import Outcome
from harness.workload.traced_ledger import build_ledger
from harness.workload.traced_peer import match_peer
from harness.workload.traced_types import FindingKind, ProcessLedger
from harness.workload.tracelog import REFUSED_EXIT, TraceLogError, log_paths, read_log

PLACEHOLDERS = ("dev", "gid", "addr", "peer_dev", "peer_gid", "peer_addr", "port")
WIRE_READY_TIMEOUT_S = 45.0  # before the programs start: ARP across our wire, both ways
SERVER_READY_TIMEOUT_S = 30.0  # the server listening (TCP or rdma_cm: outside_ready.py)
CLIENT_BUSY_TIMEOUT_S = 30.0  # the client's first successful completion in its log
SERVER_EXIT_TIMEOUT_S = 10.0  # after the client, the server ends by itself (or exit_timeout_s)
STOP_TIMEOUT_S = 5.0  # SIGTERM -> SIGKILL
POLL_S = 0.05
STDERR_TAIL = 400  # characters of the program's output kept in the row's record
OUTSIDE_PREFIX = "cmd:"  # an outside program's policy name: cmd:<basename of its client>


@dataclass(frozen=True)
class OutsideSpec:
    client_cmd: str
    server_cmd: str = ""
    # after the transition the client gets this long to end by itself (else it is stopped
    # and its row says so): a program that never ends by itself (a pingpong with a huge
    # count, a server loop) is judged after this long
    exit_timeout_s: float = CLIENT_EXIT_TIMEOUT_S

    def validate(self) -> OutsideSpec:
        check_number("--client-exit-timeout-s", self.exit_timeout_s, 0, MAX_WAIT_S, "s",
                     "MAX_WAIT_S", lo_open=True)
        for name, cmd in (("--client-cmd", self.client_cmd), ("--server-cmd", self.server_cmd)):
            if not cmd and name == "--server-cmd":
                continue
            try:
                words = shlex.split(cmd)
            except ValueError as e:
                raise SettingError(f"{name} {cmd!r}: {e}", "quote it as a shell would") from e
            if not words:
                raise SettingError(f"{name} is empty", "give the program and its arguments")
            for w in words:
                for _, field_name, _, _ in string.Formatter().parse(w):
                    if field_name is not None and field_name not in PLACEHOLDERS:
                        raise SettingError(f"{name}: unknown placeholder {{{field_name}}}",
                                           f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                                           " (double a brace for a literal one)")
            if shutil.which(words[0]) is None:
                raise SettingError(f"{name}: program {words[0]!r} not found",
                                   "give a path or a program on PATH")
        return self

    @property
    def label(self) -> str:
        return OUTSIDE_PREFIX + os.path.basename(shlex.split(self.client_cmd)[0])


def expand(cmd: str, topo: Any, port: int) -> list[str]:
    values = {"dev": topo.local.dev, "gid": topo.local.gid_index, "addr": topo.local.addr,
              "peer_dev": topo.peer.dev, "peer_gid": topo.peer.gid_index,
              "peer_addr": topo.peer.addr, "port": port}
    return [w.format(**values) for w in shlex.split(cmd)]


def _wait(cond: Callable[[], bool], what: str, bound_name: str, bound: float,
          proc: subprocess.Popen[bytes], seen: Callable[[], str] | None = None,
          also: subprocess.Popen[bytes] | None = None) -> bool:
    """True when COND held; False when PROC exited first; BoundExceeded at the bound
    (with what SEEN says the last look found, and where PROC's threads and ALSO's, its
    other side, are in the kernel: beside a CPU hog ib_send_bw once had neither a QP nor
    a TCP socket 30 s after it opened the device, and the bound said no more)."""
    deadline = time.monotonic() + bound
    while not cond():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            where = "; ".join(f"{_program(p)} (pid {p.pid}): " + (", ".join(
                t.describe() for t in process_in_kernel(p.pid)) or "gone")
                for p in (proc, also) if p is not None)
            raise BoundExceeded(what, bound_name, bound, f"{_program(proc)} (pid {proc.pid}) "
                                "still running without it"
                                + (f"; last seen: {seen()}" if seen else "")
                                + f"; in the kernel: {where}")
        time.sleep(POLL_S)  # polling interval of a bounded wait
    return True


def _program(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    return str(args[0]) if isinstance(args, list) and args else str(args)


def _ledger(tdir: Path, pid: int) -> ProcessLedger | None:
    path = tdir / f"rxe-power-trace.{pid}.bin"
    try:
        return build_ledger(read_log(path)) if path.exists() else None
    except TraceLogError:
        return None


def _busy(tdir: Path, pid: int) -> bool:
    led = _ledger(tdir, pid)
    return led is not None and any(r.outcome is Outcome.COMPLETED_OK for r in led.requests)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - STDERR_TAIL))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def run_outside(shim: Any, topo: Any, req: Any, spec: OutsideSpec,
                log_dir: Path) -> OutsideResult:
    """One scenario for the outside program: its result (to_json: the record's `result`)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    # the logs are written in a recorded work directory (see recorded_work_dir), then kept
    with recorded_work_dir("trace") as work:
        try:
            return _run(shim, topo, req, spec, log_dir, make_trace_dir(work / "trace"))
        finally:
            keep = log_dir / "trace"
            keep.mkdir(exist_ok=True)
            for p in log_paths(work / "trace") if (work / "trace").is_dir() else []:
                shutil.copyfile(p, keep / p.name)


def _run(shim: Any, topo: Any, req: Any, spec: OutsideSpec, log_dir: Path,
         tdir: Path) -> OutsideResult:
    env = traced_env(tdir)
    env[settings.CLIENTS_DIR_ENV] = str(shim.notifier.clients_dir)
    port = free_tcp_port()
    cli_argv = expand(spec.client_cmd, topo, port)
    srv_argv = expand(spec.server_cmd, topo, port) if spec.server_cmd else []
    srv = cli = None
    stopped, server_ready = False, ""
    # the programs' own rendezvous (TCP) and connects cross our wire: both sides' ARP for
    # the far address first, bounded (measured: after a link-flap scenario, twice in four
    # suite runs, the wire gave the next program no ARP answer for ~30 s: the neighbour
    # stayed FAILED; the wait is in the record, the program is not blamed for it)
    wire_ms = _wire_ready(shim.cfg)
    try:
        if srv_argv:
            with open(log_dir / "server.log", "wb") as out:
                srv = spawn(srv_argv, "outside server", env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT)
            ready = ServerReady(srv.pid, topo.peer.dev,
                                port if "{port}" in spec.server_cmd else None)
            if not _wait(ready, f"the outside server ready ({ready.waited_for()})",
                         "SERVER_READY_TIMEOUT_S", SERVER_READY_TIMEOUT_S, srv,
                         lambda: ready.seen):
                raise SettingError(f"--server-cmd exited {srv.returncode} before it was ready: "
                                   f"{_tail(log_dir / 'server.log')[-200:]!r}",
                                   "run it by hand on the peer HCA to see why")
            server_ready = ready.how
        with open(log_dir / "client.log", "wb") as out, \
                open(log_dir / "client.stderr", "wb") as err:
            cli = spawn(cli_argv, "outside client", env=env, stdin=subprocess.DEVNULL,
                        stdout=out, stderr=err)
        _wait(lambda: _busy(tdir, cli.pid), "the outside client's first completion",
              "CLIENT_BUSY_TIMEOUT_S", CLIENT_BUSY_TIMEOUT_S, cli, also=srv)
        res = shim.run(req)
        resumed_ns = time.monotonic_ns()
        try:
            cli.wait(spec.exit_timeout_s)
            exit_ns: int | None = time.monotonic_ns()  # (within POLL: wait() polls)
        except subprocess.TimeoutExpired:
            stopped, exit_ns = True, None
        if srv is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                srv.wait(min(SERVER_EXIT_TIMEOUT_S, spec.exit_timeout_s))
    finally:
        for p in (cli, srv):
            if p is not None:
                stop_child(p, 0.0, grace_s=STOP_TIMEOUT_S)
    program, led = _result(spec, cli, srv, cli_argv, srv_argv, res, resumed_ns, stopped, tdir,
                           log_dir)
    program.wire_ready_ms, program.server_ready = wire_ms, server_ready
    ended = (ClientEnd.TERMINATED_BY_SHIM if program.terminated_by_shim else ClientEnd.NO_REPLY
             if stopped else ClientEnd.COMPLETED if cli.returncode >= 0 else ClientEnd.DIED)
    # the program's requests as a client lane of the timeline picture (its row: "outside")
    return OutsideResult(res, program_lane(spec.label, led, ended, program.peer_counts,
                                           exit_ns), program)


def _wire_ready(cfg: Any) -> float:
    """Resolve the far address on both sides, trying again (a fresh datagram, so a fresh
    ARP request) every NEIGH_TIMEOUT_S until WIRE_READY_TIMEOUT_S; the ms it took.
    BoundExceeded names the side whose ARP got no answer."""
    t0 = time.monotonic()
    for side in ("local", "peer"):
        while True:
            try:
                resolve_neighbour(cfg, side)
                break
            except BoundExceeded:
                if time.monotonic() - t0 > WIRE_READY_TIMEOUT_S:
                    raise BoundExceeded(f"ARP across the wire ({side} side) before the "
                                        "programs start", "WIRE_READY_TIMEOUT_S",
                                        WIRE_READY_TIMEOUT_S,
                                        "a complete neighbour entry for the far address"
                                        ) from None
    return round((time.monotonic() - t0) * 1000, 1)


def _result(spec: OutsideSpec, cli: subprocess.Popen[bytes], srv: subprocess.Popen[bytes] | None,
            cli_argv: list[str], srv_argv: list[str], res: Any, resumed_ns: int,
            stopped: bool, tdir: Path, log_dir: Path,
            ) -> tuple[ProgramResult, ProcessLedger | None]:
    veto = res.veto
    held = bool(veto) and any(h["pid"] == cli.pid for h in veto.holders)
    terminated = bool(veto) and any(t["pid"] == cli.pid for t in veto.terminated)
    led = _ledger(tdir, cli.pid)
    peer = _ledger(tdir, srv.pid) if srv is not None else None
    findings: list[str] = []
    exit_code = None if (stopped or terminated) else cli.returncode
    counts: dict[str, int] = {}
    recv: dict[str, int] = {}
    peer_counts: dict[str, int] = {}
    recovery = None
    if led is None:
        findings.append("no trace log: the tracer was not loaded (setuid? static?)"
                        if cli.returncode != REFUSED_EXIT else "the tracer refused to start")
    else:
        counts, recv = dict(led.counts(False)), dict(led.counts(True))
        if peer is not None:
            ms = match_peer(led, peer)
            peer_counts = {"delivered-once": sum(m.delivered_once for m in ms),
                           "missing": sum(m.missing for m in ms),
                           "duplicated": sum(m.duplicated for m in ms)}
        later = [r.completed_ns for r in led.sends() if r.outcome is Outcome.COMPLETED_OK
                 and r.completed_ns is not None and r.completed_ns > resumed_ns]
        recovery = (min(later) - resumed_ns) / 1e6 if later else None
        kinds = sorted({f.what.value for f in led.findings
                        if f.what is not FindingKind.ASYNC_EVENT})
        findings += [f"trace: {k}" for k in kinds]
    return (ProgramResult(
        spec.label, cli_argv, srv_argv, cli.pid, exit_code, _tail(log_dir / "client.stderr"),
        srv.returncode if srv is not None else None, held, terminated, stopped,
        led is not None, bool(led and led.closed), counts, recv, peer_counts,
        len(led.unaccounted()) if led else 0,
        len(led.unmatched_completions()) if led else 0,
        led.posted_after_error() if led else 0, list(led.devices) if led else [],
        recovery, findings, spec.exit_timeout_s, _coverage(led, peer, res)), led)


def _coverage(led: ProcessLedger | None, peer: ProcessLedger | None,
              res: Any) -> Coverage | None:
    """How the program's traffic met the transition: its send-queue requests and its
    traced server's, each from its post to its completion (None: never). A ping-pong
    client waits on its server's message, which may be the one in flight across the
    transition (measured: rping's server's SEND in flight 898 ms across a link flap while
    its client had none: the row read `missed`). The program's workload is its own: it is
    not run on past the transition, so only none crossing it makes the row no
    measurement."""
    win = res.fault_window()
    if led is None or win is None:
        return None
    sends = [*led.sends(), *(peer.sends() if peer is not None else [])]
    return Coverage.of((Span(r.posted_ns, r.completed_ns) for r in sends), win)

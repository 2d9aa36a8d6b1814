"""perftest next to the harness: its command lines, a bounded server/client run on
the rxe pair, and its result table parsed by its header columns (perftest prints no
JSON; an unexpected format is an error naming what is missing)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from dataclasses import dataclass

from harness.core.errors import BoundExceeded, RxePowerError
from harness.core.proc import kill_bounded, run_bounded
from harness.run.bench.bounds import Clipped, SectionBound
from harness.run.bench.failures import perftest_failure
from harness.system.tcp_ports import free_tcp_port, tcp_listening
from harness.topology.config import Topology

PERFTEST_SERVER_READY_TIMEOUT_S = 30.0  # the server prints its banner and listens
PERFTEST_TIMEOUT_S = 300.0  # one perftest client run
PERFTEST_SERVER_EXIT_TIMEOUT_S = 30.0  # the server, once its client is done

_COLUMN = re.compile(r"#\w+|[\w%.]+(?: [\w%.]+)*\[[^\]]*\]")
BW_COLUMNS = ("#bytes", "#iterations", "BW average[MB/sec]", "MsgRate[Mpps]")
LAT_COLUMNS = ("#bytes", "#iterations", "t_typical[usec]", "99% percentile[usec]")


class PerftestFormatError(RxePowerError):
    """perftest printed something other than the result table we know."""


def parse_perftest(text: str, required: tuple[str, ...]) -> list[dict[str, float]]:
    """The rows of perftest's result table: the line whose columns start with `#bytes`
    names the columns (e.g. `BW average[MB/sec]`, `99% percentile[usec]`); each following
    line of numbers is one row, read by those names. Raises PerftestFormatError naming
    what is missing when there is no such table, a row does not fit its header, or a
    `required` column is absent."""
    lines = text.splitlines()
    rows: list[dict[str, float]] = []
    header: list[str] | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#bytes"):
            header = _COLUMN.findall(stripped)
            continue
        if header is None or not stripped:
            continue
        if stripped.startswith("-"):
            if rows:
                break  # the table's closing rule
            continue
        fields_ = stripped.split()
        try:
            values = [float(v) for v in fields_]
        except ValueError:
            if rows:
                break
            raise PerftestFormatError(f"perftest's result line {stripped[:80]!r} is not "
                                      f"numbers under the header {header}",
                                      "run a perftest whose output has the usual table") \
                from None
        if len(values) != len(header):
            raise PerftestFormatError(f"perftest's result line has {len(values)} values, its "
                                      f"header {len(header)} columns ({header})",
                                      "run a perftest whose output has the usual table")
        rows.append(dict(zip(header, values, strict=True)))
    if header is None:
        raise PerftestFormatError("perftest printed no result table (no line starting with "
                                  f"'#bytes'); its output ends: {' | '.join(lines[-4:])[:300]}",
                                  "see the perftest output: did it connect and run?")
    if not rows:
        raise PerftestFormatError(f"perftest's result table has a header ({header}) but no row",
                                  "see the perftest output: did it finish?")
    missing = [c for c in required if c not in header]
    if missing:
        raise PerftestFormatError(f"perftest's result table lacks {missing} (has {header})",
                                  "this perftest version prints other columns")
    return rows


@dataclass
class PerftestRun:
    tool: str
    size: int
    iterations: int
    row: dict[str, float]  # empty when the run failed
    argv: list[str]
    seconds: float
    output: str  # the client's whole output (kept in bench.json)
    # runs before this one that reported a message rate of 0 (a perftest 4.5 quirk seen
    # under TCG: the run completes and prints 0.00 MB/s) and were left out
    zero_runs: int = 0
    # of the runs that reported 0 (the left-out ones and, when all did, this one): those
    # whose perftest said its clock calibration failed (clock_calibration_r2)
    uncalibrated_runs: int = 0
    failure: str | None = None  # why this run is not a figure (None: it is one)

    def figure(self, column: str) -> float:
        if self.failure is not None:
            raise RxePowerError(f"{self.tool} {self.size} B failed: no figure ({self.failure})",
                                "check PerftestRun.failure before reading a figure")
        return self.row[column]


def perftest_argv(tool: str, dev: str, gid_index: int, size: int, iters: int, qd: int,
                  port: int, server: str | None = None) -> list[str]:
    argv = [tool, "-d", dev, "-x", str(gid_index), "-s", str(size), "-n", str(iters),
            "-p", str(port), "-F"]
    if tool.endswith("_bw"):
        argv += ["-t", str(qd)]
    return argv + ([server] if server else [])


def run_perftest(tool: str, topo: Topology, size: int, iters: int, qd: int,
                 bound: SectionBound | None = None) -> PerftestRun:
    """Server on the peer HCA, client on the local one connecting to the peer's address;
    both bounded (the client by PERFTEST_TIMEOUT_S or what is left of the section's
    `bound`). The client starts once the server listens on its TCP port (its banner sits
    in stdio's buffer until it exits). A run that fails (an error completion, a non-zero
    exit, a bound, output without the result table) comes back with `failure` saying why
    and no figures."""
    port = free_tcp_port()
    srv_argv = perftest_argv(tool, topo.peer.dev, topo.peer.gid_index, size, iters, qd, port)
    cli_argv = perftest_argv(tool, topo.local.dev, topo.local.gid_index, size, iters, qd, port,
                             topo.peer.addr)
    clip = bound.clip("PERFTEST_TIMEOUT_S", PERFTEST_TIMEOUT_S) if bound \
        else Clipped(PERFTEST_TIMEOUT_S, "PERFTEST_TIMEOUT_S", PERFTEST_TIMEOUT_S)

    def failed(why: str, output: str = "", seconds: float = 0.0) -> PerftestRun:
        return PerftestRun(tool, size, iters, {}, cli_argv, round(seconds, 3), output,
                           failure=why)

    try:
        srv = subprocess.Popen(srv_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    except FileNotFoundError as exc:
        raise RxePowerError(f"cannot run {tool}: {exc}", "apt-get install perftest") from None
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + PERFTEST_SERVER_READY_TIMEOUT_S
        while not tcp_listening(port):
            if srv.poll() is not None:
                said = srv.communicate(timeout=PERFTEST_SERVER_EXIT_TIMEOUT_S)[0].decode(
                    errors="replace")
                return failed(f"{tool} server exited {srv.returncode} before its client "
                              f"connected: {perftest_failure(said, srv.returncode or 1)}", said)
            if time.monotonic() > deadline:
                return failed(BoundExceeded(f"{tool} server start",
                                            "PERFTEST_SERVER_READY_TIMEOUT_S",
                                            PERFTEST_SERVER_READY_TIMEOUT_S,
                                            f"it listening on TCP port {port}").problem)
            time.sleep(0.02)  # polling interval of the bounded wait above
        t0 = time.monotonic()
        try:
            cli = run_bounded(cli_argv, clip.seconds, step=" ".join(cli_argv),
                              bound_name=clip.bound_name,
                              outstanding="the perftest client had not exited")
        except BoundExceeded as exc:
            return failed(exc.problem, seconds=time.monotonic() - t0)
        seconds = time.monotonic() - t0
        with contextlib.suppress(subprocess.TimeoutExpired):
            srv.communicate(timeout=PERFTEST_SERVER_EXIT_TIMEOUT_S)
    finally:
        kill_bounded(srv)
    text = cli.stdout + cli.stderr
    why = perftest_failure(text, cli.returncode)
    if why is not None:
        return failed(why, text, seconds)
    required = BW_COLUMNS if tool.endswith("_bw") else LAT_COLUMNS
    try:
        rows = parse_perftest(text, required)
    except PerftestFormatError as exc:
        return failed(f"perftest's output: {exc.problem}", text, seconds)
    return PerftestRun(tool, size, iters, rows[-1], cli_argv, round(seconds, 3), text)


PERFTEST_ATTEMPTS = 5  # a bandwidth run that reports a rate of 0 is run again, this often
RATE_COLUMN = "MsgRate[Mpps]"
# perftest's get_cpu_mhz() fits TSC cycles against gettimeofday() over ~0.2 s; when the
# fit's r^2 is below 0.9 (its vCPU was descheduled while it sampled) it prints this line
# and takes 0 MHz, and every rate it reports is 0 (perftest 4.5, get_clock.c)
_CLOCK_R2 = re.compile(r"^Correlation coefficient r\^2: (\S+) < 0\.9$", re.MULTILINE)


def clock_calibration_r2(output: str) -> float | None:
    """The r^2 of perftest's failed clock calibration, None when it did not say one
    failed (its output is read here, at the edge, once)."""
    m = _CLOCK_R2.search(output)
    if m is None:
        return None
    try:
        return float(m.group(1))
    except ValueError:
        return float("nan")


def run_perftest_counted(tool: str, topo: Topology, size: int, iters: int,
                         qd: int, bound: SectionBound | None = None) -> PerftestRun:
    """run_perftest, again (at most PERFTEST_ATTEMPTS runs) while a bandwidth tool
    reports a message rate of 0 for a run that completed: perftest 4.5 printed 0.00 MB/s
    for about one run in ten under TCG (the tracer bench and CI runs of the bench saw it),
    because its clock calibration failed (clock_calibration_r2; more often on a busy
    machine). The runs left out are counted in the result, and those that said their
    calibration failed; if every run says 0, the last is returned as failed, naming that
    count. A run that failed otherwise is returned as it is (not retried)."""
    zero = uncalibrated = 0
    while True:
        run = run_perftest(tool, topo, size, iters, qd, bound)
        if run.failure is not None or not tool.endswith("_bw") \
                or run.row.get(RATE_COLUMN, 0) > 0:
            run.zero_runs, run.uncalibrated_runs = zero, uncalibrated
            return run
        uncalibrated += clock_calibration_r2(run.output) is not None
        if zero + 1 >= PERFTEST_ATTEMPTS:
            run.zero_runs, run.uncalibrated_runs = zero, uncalibrated
            run.failure = (f"{tool} reported a message rate of 0 in all {zero + 1} runs "
                           f"(PERFTEST_ATTEMPTS); in {uncalibrated} of them it said its clock "
                           "calibration failed (r^2 < 0.9: its vCPU was descheduled while it "
                           "timed the TSC; a busy or overcommitted machine)")
            return run
        zero += 1

"""rxe-power bench: the harness's own client next to perftest, and what a sleep costs.

    rxe-power bench [--sizes 64,4096,65536] [--queue-depth 64] [--scale F] [--cycles 10]
                    [--stress-cycles 5] [--qps 1024] [--qp-workers 8] [--only S,..]

In one run, on the same rxe0 <-> rxe1 pair (in the VM when this kernel has no rxe):

- throughput: the harness client (one worker process, the one I/O path of every
  policy, with its ledger and the peer agent checking every message) against
  `ib_send_bw` (harness SEND_WITH_IMM) and `ib_write_bw` (harness RDMA_WRITE_WITH_IMM)
  at each size, same queue depth, one QP; MB/s as perftest prints it (2^20 bytes/s)
  and messages/s, as ratios harness / perftest;
- latency at queue depth 1: post -> completion of every request from the ledger
  (median, p99), completions by event (the default) and by polling, next to
  `ib_write_lat` / `ib_send_lat` (which busy-poll and print half a ping-pong round trip);
- the standby cycle part by part over repeated cycles (median, min/max, IQR):
  quiesce (suspend notice -> the client's release), port down, delete, hold, re-create,
  port up, resume notice -> the clients' reconnect, first successful completion after
  resume, and the whole (suspend notice -> the last client's first success);
- stress cycles per minute (a short `rxe-power stress`);
- one standby under 1,024 QPs spread over several workers, the ledger holding;
- the machine load with the figures (load average, CPUs, other QEMUs on the host).

perftest prints no JSON: its result table is parsed by its header columns
(`parse_perftest`), and an unexpected format is an error naming what is missing.
Every subprocess is bounded. The figures go to the terminal and to DIR/bench.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.core import settings
from harness.core.errors import BoundExceeded, RxePowerError, SettingError

BENCH_VM_TIMEOUT_S = 3600.0
PERFTEST_SERVER_READY_TIMEOUT_S = 30.0  # the server prints its banner and listens
PERFTEST_TIMEOUT_S = 300.0  # one perftest client run
PERFTEST_SERVER_EXIT_TIMEOUT_S = 30.0  # the server, once its client is done
HARNESS_RUN_TIMEOUT_S = 600.0  # one harness throughput/latency run, go -> finish
SECTIONS = ("throughput", "latency", "cycle", "stress", "qps")
BW_TOOLS = {"SEND": "ib_send_bw", "WRITE": "ib_write_bw"}
LAT_TOOLS = {"SEND": "ib_send_lat", "WRITE": "ib_write_lat"}
BASE_COUNT = ((256, 20000), (8192, 8000), (1 << 30, 2000))  # (size up to, messages)
MIN_COUNT = 50
LAT_SIZE = 64
MIB = 1 << 20  # perftest's "MB/sec" is 2^20 bytes per second
TARGETS = {"send_64k_bw_ratio": 0.80, "send_64_rate_ratio": 0.30, "cycle_vm_ms": 3000.0,
           "cycle_native_ms": 1000.0}


# --- perftest output ----------------------------------------------------------------------

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
    row: dict[str, float]
    argv: list[str]
    seconds: float
    output: str  # the client's whole output (kept in bench.json)

    def figure(self, column: str) -> float:
        return self.row[column]


def perftest_argv(tool: str, dev: str, gid_index: int, size: int, iters: int, qd: int,
                  port: int, server: str | None = None) -> list[str]:
    argv = [tool, "-d", dev, "-x", str(gid_index), "-s", str(size), "-n", str(iters),
            "-p", str(port), "-F"]
    if tool.endswith("_bw"):
        argv += ["-t", str(qd)]
    return argv + ([server] if server else [])


def run_perftest(tool: str, topo: Any, size: int, iters: int, qd: int) -> PerftestRun:
    """Server on the peer HCA, client on the local one connecting to the peer's address;
    both bounded. The client starts once the server listens on its TCP port (its banner
    sits in stdio's buffer until it exits)."""
    from harness.system.tcp_ports import free_tcp_port, tcp_listening

    port = free_tcp_port()
    srv_argv = perftest_argv(tool, topo.peer.dev, topo.peer.gid_index, size, iters, qd, port)
    cli_argv = perftest_argv(tool, topo.local.dev, topo.local.gid_index, size, iters, qd, port,
                             topo.peer.addr)
    try:
        srv = subprocess.Popen(srv_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    except FileNotFoundError as exc:
        raise RxePowerError(f"cannot run {tool}: {exc}", "apt-get install perftest") from None
    try:
        deadline = time.monotonic() + PERFTEST_SERVER_READY_TIMEOUT_S
        while not tcp_listening(port):
            if srv.poll() is not None:
                said = srv.communicate()[0].decode(errors="replace")[-300:]
                raise RxePowerError(f"{tool} server exited {srv.returncode} before its client "
                                    f"connected: {said}", "see its output; is the peer up?")
            if time.monotonic() > deadline:
                raise BoundExceeded(f"{tool} server start", "PERFTEST_SERVER_READY_TIMEOUT_S",
                                    PERFTEST_SERVER_READY_TIMEOUT_S, f"it listening on {port}")
            time.sleep(0.02)
        t0 = time.monotonic()
        try:
            cli = subprocess.run(cli_argv, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=PERFTEST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BoundExceeded(" ".join(cli_argv), "PERFTEST_TIMEOUT_S", PERFTEST_TIMEOUT_S,
                                "the perftest client had not exited") from None
        seconds = time.monotonic() - t0
        with contextlib.suppress(subprocess.TimeoutExpired):
            srv.communicate(timeout=PERFTEST_SERVER_EXIT_TIMEOUT_S)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.communicate()
    text = cli.stdout + cli.stderr
    if cli.returncode != 0:
        raise RxePowerError(f"{' '.join(cli_argv)} exited {cli.returncode}: "
                            f"{' | '.join(text.strip().splitlines()[-4:])[:400]}",
                            "see the perftest output in bench.json")
    required = BW_COLUMNS if tool.endswith("_bw") else LAT_COLUMNS
    rows = parse_perftest(text, required)
    return PerftestRun(tool, size, iters, rows[-1], cli_argv, round(seconds, 3), text)


# --- statistics -----------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def spread(values: list[float]) -> dict[str, float]:
    """median, min, max and the quartiles of a series (rounded to 0.1)."""
    if not values:
        return {}
    return {k: round(v, 1) for k, v in (
        ("median", statistics.median(values)), ("min", min(values)), ("max", max(values)),
        ("q1", percentile(values, 25)), ("q3", percentile(values, 75)))} | {"n": len(values)}


# --- the spec -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchSpec:
    sizes: tuple[int, ...] = (64, 4096, 65536)
    queue_depth: int = 64
    scale: float = 1.0  # multiplies the message counts (BASE_COUNT)
    lat_iters: int = 2000
    cycles: int = 10
    stress_cycles: int = 5
    qps: int = 1024
    qp_workers: int = 8
    hold_ms: int = 100
    sections: tuple[str, ...] = SECTIONS
    cycle_count: int = 800  # requests per client and cycle (at CYCLE_RATE: 4 s, outlasting it)

    def validate(self) -> BenchSpec:
        from harness.workload.ledger import MAX_MESSAGE

        bad = [s for s in self.sections if s not in SECTIONS]
        if bad or not self.sections:
            raise SettingError(f"--only {','.join(self.sections)}: unknown section(s) {bad}",
                               f"choose from {', '.join(SECTIONS)}")
        if not self.sizes or any(not 1 <= s <= MAX_MESSAGE for s in self.sizes):
            raise SettingError(f"--sizes {self.sizes} must be 1..{MAX_MESSAGE} bytes",
                               "give message sizes that fit a slot")
        for name, val, lo in (("--queue-depth", self.queue_depth, 1),
                              ("--lat-iters", self.lat_iters, 10),
                              ("--cycles", self.cycles, 1),
                              ("--stress-cycles", self.stress_cycles, 1),
                              ("--qp-workers", self.qp_workers, 1),
                              ("--hold-ms", self.hold_ms, 0),
                              ("cycle_count", self.cycle_count, 1)):
            if val < lo:
                raise SettingError(f"{name} {val} must be at least {lo}", f"give {name} >= {lo}")
        if not 0 < self.scale <= 100:
            raise SettingError(f"--scale {self.scale} must be in (0, 100]",
                               "1 is the full run; 0.05 a quick look")
        if self.qps < self.qp_workers or self.qps % self.qp_workers:
            raise SettingError(f"--qps {self.qps} must be a multiple of --qp-workers "
                               f"{self.qp_workers}", "e.g. --qps 1024 --qp-workers 8")
        for size in self.sizes:  # the workloads must pass the ledger's own checks
            self.throughput_spec("SEND", size)
        self.qp_spec()
        return self

    def count(self, size: int) -> int:
        base = next(n for limit, n in BASE_COUNT if size <= limit)
        return max(MIN_COUNT, int(base * self.scale))

    def throughput_spec(self, op: str, size: int, queue_depth: int | None = None,
                        completion: str = "events", count: int | None = None,
                        signal_every: int | None = None) -> Any:
        """One QP flat out. signal_every defaults to the queue depth: perftest's CQ
        moderation at the same -t (it prints "CQ Moderation: 64" for -t 64)."""
        from harness.workload.ledger import Op, WorkloadSpec

        qd = queue_depth or self.queue_depth
        # WRITE targets: the sender may be qd requests ahead, the agent's unprocessed
        # arrivals up to its 2 x qd receives: 4 x qd slots never overwrite one unchecked
        return WorkloadSpec(ops=(Op(op),), sizes=(size,), count=count or self.count(size),
                            rate_per_s=0.0, queue_depth=qd, qps=1, completion=completion,
                            write_slots=4 * qd,
                            signal_every=signal_every or qd).validate()

    def qp_spec(self) -> Any:
        """Each scale worker: qps/qp_workers QPs, 4 small requests per QP, paced so that the
        transition comes in the middle of the workload; tiny slots (see peer_mr_bytes)."""
        from harness.workload.ledger import Op, WorkloadSpec

        per = self.qps // self.qp_workers
        return WorkloadSpec(ops=(Op.SEND, Op.WRITE), sizes=(64,), count=4 * per,
                            rate_per_s=float(max(50, per)), queue_depth=2, qps=per,
                            write_slots=8).validate()

    def to_json(self) -> dict:
        return asdict(self)


# --- the harness side of each measurement --------------------------------------------------

@dataclass
class HarnessRun:
    op: str
    size: int
    queue_depth: int
    completion: str
    signal_every: int
    count: int
    seconds: float  # first post -> last completion, from the ledger
    mib_per_s: float
    msg_per_s: float
    latency_us: dict[str, float]
    counts: dict[str, int]
    peer_counts: dict[str, int]
    unaccounted: int
    open_ms: float  # worker start (device open, QP connect)
    wall_s: float  # go -> finish reply (incl. the controller's round trips)

    def to_json(self) -> dict:
        return asdict(self)


def harness_run(agent: Any, topo: Any, clients_dir: Path, log_dir: Path, spec: Any,
                name: str) -> HarnessRun:
    """One worker (the real client process) runs `spec` flat out; figures from its ledger,
    every request accounted, the peer's record of every SEND/WRITE matched to it."""
    from harness.core.device import DeviceInfo
    from harness.run.scenario import ClientWorker
    from harness.workload.ledger import apply_peer_view

    with ClientWorker(name, "fail-fast", spec, log_dir) as w:
        t0 = time.monotonic()
        w.start(DeviceInfo.from_endpoint(topo.local), agent.sock_path, clients_dir)
        open_ms = (time.monotonic() - t0) * 1000
        t1 = time.monotonic()
        w.request("go", 30.0)
        rep = w.request("finish", HARNESS_RUN_TIMEOUT_S + 10, timeout_s=HARNESS_RUN_TIMEOUT_S)
        wall = time.monotonic() - t1
        ledger = w.fetch_ledger(int(rep["requests"]))
    arrivals: list[dict] = []
    for aq in rep["agent_qps"]:
        arrivals += agent.arrivals(aq["qp_id"], 0, timeout_s=0)["arrivals"]
        with contextlib.suppress(RxePowerError):
            agent.request("destroy_qp", 30.0, qp_id=aq["qp_id"])
    apply_peer_view(ledger, arrivals)
    ok = [a for e in ledger.entries.values() for a in e.attempts if a.status == "SUCCESS"]
    size = spec.sizes[0]
    if ok:
        window = (max(a.completed_ns for a in ok) - min(a.posted_ns for a in ok)) / 1e9
        lats = [(a.completed_ns - a.posted_ns) / 1e3 for a in ok]
        lat = {"median": round(statistics.median(lats), 1),
               "p99": round(percentile(lats, 99), 1), "min": round(min(lats), 1),
               "max": round(max(lats), 1)}
    else:
        window, lat = 0.0, {}
    return HarnessRun(spec.ops[0].value, size, spec.queue_depth, spec.completion,
                      spec.signal_every, spec.count,
                      round(window, 4),
                      round(len(ok) * size / window / MIB, 3) if window else 0.0,
                      round(len(ok) / window, 1) if window else 0.0, lat, ledger.counts(),
                      ledger.peer_counts(), len(ledger.unaccounted()), round(open_ms, 1),
                      round(wall, 3))


def ledger_ok(run: HarnessRun) -> bool:
    """Every request completed once and, for SEND/WRITE, delivered once at the peer."""
    return (run.unaccounted == 0 and run.counts == {"completed-ok": run.count}
            and run.peer_counts == {"delivered-once": run.count})


# --- the power cycle, part by part ----------------------------------------------------------

CYCLE_RATE = 200.0  # requests per second per client during the standby cycles
CYCLE_PARTS = ("quiesce", "port_down", "delete", "hold", "recreate", "port_up", "reconnect",
               "first_ok", "whole", "shim_total")
CYCLE_PART_TEXT = {
    "quiesce": "quiesce: suspend notice -> last client released",
    "port_down": "port down (carrier off -> port DOWN)",
    "delete": "delete (rdma link delete)",
    "hold": "hold (asleep)",
    "recreate": "re-create (rdma link add -> port present)",
    "port_up": "port up (carrier on -> ACTIVE + RoCEv2 GID)",
    "reconnect": "resume notice -> last client reconnected",
    "first_ok": "resume notice -> last client's first ok",
    "whole": "whole: suspend notice -> last first ok",
    "shim_total": "shim transition (first step -> last step)",
}


def light(res: Any) -> dict:
    """What the bench reads of a ScenarioResult, without its per-request ledgers (whose
    JSON form costs seconds under emulation for a thousand QPs' worth)."""
    return {"transition": res.transition.to_json(), "ok": res.ok,
            "clients": [{"client": c.client, "policy": c.policy, "crashed": c.crashed,
                         "crash": c.crash, "metrics": c.metrics, "counts": c.counts,
                         "peer_counts": c.peer_counts, "unaccounted": c.unaccounted,
                         "events": c.events, "clean_shutdown": c.clean_shutdown}
                        for c in res.clients]}


def cycle_parts(res: dict) -> dict[str, float]:
    """One standby round (ScenarioResult JSON) in parts, in ms. See CYCLE_PART_TEXT."""
    t = res["transition"]
    steps = {s["step"]: s for s in t["steps"] if s["outcome"] != "skipped"}
    out: dict[str, float] = {}
    for part, step in (("port_down", "port-down"), ("delete", "delete-device"),
                       ("hold", "hold"), ("recreate", "create-device"),
                       ("port_up", "port-up")):
        if step in steps:
            out[part] = steps[step]["ms"]
    sus, res_step = steps.get("notify-suspend"), steps.get("notify-resume")
    released = [a["answered_ns"] for a in t.get("answers", [])
                if a["kind"] == "released" and a.get("answered_ns")]
    resumed = [a["answered_ns"] for a in t.get("answers", [])
               if a["kind"] == "resumed" and a.get("answered_ns")]
    firsts = [c["metrics"].get("first_ok_after_resume_ns") for c in res["clients"]
              if not c["crashed"]]
    if sus and released:
        out["quiesce"] = (max(released) - sus["begin_ns"]) / 1e6
    if res_step and resumed:
        out["reconnect"] = (max(resumed) - res_step["begin_ns"]) / 1e6
    if res_step and firsts and all(firsts):
        out["first_ok"] = (max(firsts) - res_step["begin_ns"]) / 1e6
        if sus:
            out["whole"] = (max(firsts) - sus["begin_ns"]) / 1e6
    out["shim_total"] = t.get("total_ms", 0.0)
    return {k: round(v, 1) for k, v in out.items()}


# --- the run ------------------------------------------------------------------------------

def machine_load() -> dict:
    """Where the figures were taken: load average and CPUs here; for a VM run, the host's
    (measured before the guest booted: RXE_POWER_BENCH_HOST)."""
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "nproc": os.cpu_count(),
            "in_vm": settings.in_vm(), "host": settings.bench_host()}


def host_load() -> dict:
    """This machine's load and the QEMUs running on it (another VM slows ours)."""
    qemus = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if cmd and b"qemu-system" in os.path.basename(cmd[0]):
                qemus.append(int(pid))
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "nproc": os.cpu_count(),
            "qemu_pids": sorted(qemus)}


@dataclass
class Bench:
    spec: BenchSpec
    out_dir: Path
    log: Callable[[str], None] = print
    results: dict = field(default_factory=dict)

    def section(self, name: str) -> bool:
        return name in self.spec.sections

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        self.write()

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "bench.json").write_text(json.dumps(self.results, indent=1,
                                                            default=str))


def run_bench(spec: BenchSpec, cfg: Any, out_dir: Path, log: Callable[[str], None] = print
              ) -> int:
    """Run the sections of `spec`; 0 when every ledger held (figures are figures: a missed
    target is reported, not an error), 1 otherwise."""
    from harness.peer.controller import PeerAgent
    from harness.topology import lifecycle
    from power.notify import Notifier, private_clients_dir
    from power.shim import Shim

    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(spec, out_dir, log)
    bench.results = {"spec": spec.to_json(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "kernel": os.uname().release, "load_start": machine_load()}
    topo, built = lifecycle.setup(cfg, log=lambda m: None)
    bench.results["topology"] = topo.to_json()
    ok = True
    try:
        log(header_line(bench.results))
        with PeerAgent(topo.peer, log_dir=out_dir / "logs") as agent, \
                private_clients_dir() as clients_dir:
            logs = out_dir / "logs"
            if bench.section("throughput"):
                ok &= throughput_section(bench, agent, topo, clients_dir, logs)
            if bench.section("latency"):
                ok &= latency_section(bench, agent, topo, clients_dir, logs)
            if bench.section("cycle") or bench.section("qps"):
                with Shim(cfg, Notifier(clients_dir)) as shim:
                    if bench.section("cycle"):
                        ok &= cycle_section(bench, shim, agent, topo, clients_dir, logs, cfg)
                    if bench.section("qps"):
                        ok &= qp_section(bench, shim, agent, topo, clients_dir, logs, cfg)
        if bench.section("stress"):
            ok &= stress_section(bench, cfg)
    finally:
        bench.results["load_end"] = machine_load()
        bench.results["targets"] = targets(bench.results)
        bench.write()
        if built:
            lifecycle.teardown(log=lambda m: None)
    log("")
    for line in target_lines(bench.results["targets"]):
        log(line)
    log(f"\nload at the end: {load_text(bench.results['load_end'])}")
    log(f"results: {out_dir / 'bench.json'}")
    return 0 if ok else 1


def load_text(load: dict) -> str:
    text = (f"load average {' '.join(str(x) for x in load['loadavg'])} on {load['nproc']} "
            f"CPUs{' (guest)' if load.get('in_vm') else ''}")
    host = load.get("host")
    if host:
        others = host.get("other_qemu_pids", [])
        text += (f"; host: load {' '.join(str(x) for x in host['loadavg'])} on "
                 f"{host['nproc']} CPUs, other QEMUs running: "
                 f"{len(others) if others else 'none'}")
    return text


def header_line(results: dict) -> str:
    t = results["topology"]
    return (f"rxe-power bench: {t['local']['dev']} <-> {t['peer']['dev']} (gid index "
            f"{t['local']['gid_index']}, {t['peer']['addr']}), kernel {results['kernel']}; "
            f"{load_text(results['load_start'])}")


def throughput_section(bench: Bench, agent: Any, topo: Any, clients_dir: Path,
                       logs: Path) -> bool:
    spec = bench.spec
    rows: list[dict] = []
    ok = True
    qd = spec.queue_depth
    bench.log(f"\nthroughput: 1 QP, queue depth {qd}, one signaled completion per {qd} WRs "
              f"(perftest's CQ moderation at -t {qd}) unless the row says 1/1; MB/s = 2^20 "
              "bytes/s (as perftest prints it); ratio = harness / perftest")
    bench.log(f"{'size':>6} {'op':<6} {'signal':>6} {'perftest':>9} {'msg/s':>8} "
              f"{'harness':>9} {'msg/s':>8} {'MB/s':>6} {'msg/s':>6}  ledger")
    for size in spec.sizes:
        for op, tool in BW_TOOLS.items():
            hs = spec.throughput_spec(op, size)
            pt = run_perftest(tool, topo, size, hs.count, qd)
            variants = [hs]
            if size == min(spec.sizes) and op == "SEND" and qd > 1:  # what signaling costs
                variants.append(spec.throughput_spec(op, size, signal_every=1))
            for v in variants:
                hr = harness_run(agent, topo, clients_dir, logs, v,
                                 f"bench-{op.lower()}-{size}-s{v.signal_every}")
                row = throughput_row(op, tool, size, pt, hr)
                ok &= row["ledger_ok"]
                rows.append(row)
                bench.record("throughput", rows)
                bench.log(f"{size:>6} {op:<6} {'1/' + str(v.signal_every):>6} "
                          f"{row['perftest']['mib_per_s']:>9.2f} "
                          f"{row['perftest']['msg_per_s']:>8.0f} {hr.mib_per_s:>9.2f} "
                          f"{hr.msg_per_s:>8.0f} {row['ratio_mib'] or 0:>6.2f} "
                          f"{row['ratio_msg'] or 0:>6.2f}  {ledger_text(hr)}")
    return ok


def throughput_row(op: str, tool: str, size: int, pt: PerftestRun, hr: HarnessRun) -> dict:
    pt_mib, pt_rate = pt.figure("BW average[MB/sec]"), pt.figure("MsgRate[Mpps]") * 1e6
    return {"size": size, "op": op, "tool": tool, "signal_every": hr.signal_every,
            "perftest": {"mib_per_s": pt_mib, "msg_per_s": round(pt_rate, 1),
                         "argv": pt.argv, "output": pt.output},
            "harness": hr.to_json(),
            "ratio_mib": round(hr.mib_per_s / pt_mib, 3) if pt_mib else None,
            "ratio_msg": round(hr.msg_per_s / pt_rate, 3) if pt_rate else None,
            "ledger_ok": ledger_ok(hr), "load": machine_load()}


def ledger_text(hr: HarnessRun) -> str:
    peer = ", ".join(f"{v} {k}" for k, v in hr.peer_counts.items())
    outs = ", ".join(f"{v} {k}" for k, v in hr.counts.items())
    return f"{outs}; peer: {peer}; unaccounted {hr.unaccounted}"


def latency_section(bench: Bench, agent: Any, topo: Any, clients_dir: Path,
                    logs: Path) -> bool:
    spec = bench.spec
    rows: list[dict] = []
    ok = True
    bench.log(f"\nlatency: {LAT_SIZE} B, queue depth 1, {spec.lat_iters} requests; microseconds."
              " perftest: typical and p99 of half a ping-pong round trip (busy polling);"
              " harness: post -> completion (a full round trip: the responder's ack)")
    bench.log(f"{'op':<6} {'perftest typ':>12} {'p99':>8} {'harness events med':>18} {'p99':>8}"
              f" {'harness poll med':>16} {'p99':>8}")
    for op, tool in LAT_TOOLS.items():
        pt = run_perftest(tool, topo, LAT_SIZE, spec.lat_iters, 1)
        runs = {}
        for completion in ("events", "poll"):
            hs = spec.throughput_spec(op, LAT_SIZE, queue_depth=1, completion=completion,
                                      count=spec.lat_iters)
            runs[completion] = harness_run(agent, topo, clients_dir, logs, hs,
                                           f"bench-lat-{op.lower()}-{completion}")
            ok &= ledger_ok(runs[completion])
        row = {"op": op, "tool": tool, "size": LAT_SIZE,
               "perftest": {"typical_us": pt.figure("t_typical[usec]"),
                            "p99_us": pt.figure("99% percentile[usec]"), "argv": pt.argv,
                            "output": pt.output},
               "harness": {k: v.to_json() for k, v in runs.items()}, "load": machine_load()}
        rows.append(row)
        bench.record("latency", rows)
        ev, po = runs["events"].latency_us, runs["poll"].latency_us
        bench.log(f"{op:<6} {row['perftest']['typical_us']:>12.1f} "
                  f"{row['perftest']['p99_us']:>8.1f} {ev.get('median', 0):>18.1f} "
                  f"{ev.get('p99', 0):>8.1f} {po.get('median', 0):>16.1f} {po.get('p99', 0):>8.1f}")
    return ok


def cycle_section(bench: Bench, shim: Any, agent: Any, topo: Any, clients_dir: Path,
                  logs: Path, cfg: Any) -> bool:
    """Standby cycles under a fail-fast and a graceful client (both quiesce on the notice),
    the workers living through the cycles as in stress; every ledger must hold."""
    from harness.run.scenario import run_round, spawn_workers
    from harness.topology import lifecycle
    from harness.workload.ledger import WorkloadSpec
    from power.plan import OnVeto, Ordering
    from power.result import TransitionRequest

    spec = bench.spec
    # long enough that both clients still have requests queued when the notice comes, so
    # each has a first successful completion after resume
    wl = WorkloadSpec(count=spec.cycle_count, rate_per_s=CYCLE_RATE, queue_depth=4).validate()
    policies = ["fail-fast", "graceful"]
    timelines = bench.out_dir / "cycle-transitions.jsonl"
    timelines.unlink(missing_ok=True)
    workers = spawn_workers(policies, wl, topo.local, agent, clients_dir, logs,
                            [f"bench-cycle-{p}" for p in policies])
    per_cycle: list[dict] = []
    ok = True
    try:
        for n in range(1, spec.cycles + 1):
            if n > 1:
                for w in workers:
                    w.new_round(wl)
            req = TransitionRequest("standby", Ordering.CLIENTS_FIRST, spec.hold_ms,
                                    OnVeto.FORCE)
            res = light(run_round(shim, agent, workers, req, probe=False))
            parts = cycle_parts(res)
            with timelines.open("a") as fh:  # each cycle's whole timeline, for a closer look
                fh.write(json.dumps(res["transition"], default=str) + "\n")
            held = res["ok"] and res["transition"]["verdict"] == "completed"
            ok &= held
            per_cycle.append({"cycle": n, "parts_ms": parts, "verdict":
                              res["transition"]["verdict"], "ledger_ok": res["ok"],
                              "counts": {c["client"]: c["counts"] for c in res["clients"]},
                              "opened": [e for c in res["clients"] for e in c["events"]
                                         if e["event"] == "opened"][-len(policies):]})
            lifecycle.restore_local_side(cfg, log=lambda m: None)
    finally:
        for w in workers:
            w.close()
    summary = {p: spread([c["parts_ms"][p] for c in per_cycle if p in c["parts_ms"]])
               for p in CYCLE_PARTS}
    bench.record("cycle", {"cycles": per_cycle, "summary": summary, "hold_ms": spec.hold_ms,
                           "policies": policies, "load": machine_load()})
    bench.log(f"\nstandby cycle: {spec.cycles} cycles, hold {spec.hold_ms} ms, clients "
              f"{' + '.join(policies)} (clients-first); ms")
    bench.log(f"{'part':<46} {'median':>8} {'min':>8} {'max':>8} {'q1':>8} {'q3':>8}")
    for p in CYCLE_PARTS:
        s = summary[p]
        if s:
            bench.log(f"{CYCLE_PART_TEXT[p]:<46} {s['median']:>8.1f} {s['min']:>8.1f} "
                      f"{s['max']:>8.1f} {s['q1']:>8.1f} {s['q3']:>8.1f}")
    bench.log("every ledger held" if ok else "a cycle FAILED: see bench.json")
    return ok


def stress_section(bench: Bench, cfg: Any) -> bool:
    """A short `rxe-power stress` (the suite's stress: graceful + queue-replay, 40
    requests at 60/s each, standby); cycles per minute over its wall time."""
    from harness.run.resultsfile import RecordKind, read_results
    from harness.run.stress import StressSpec, run_stress

    spec = StressSpec(cycles=bench.spec.stress_cycles, policies=("graceful", "queue-replay"),
                      count=40).validate()
    out = bench.out_dir / "stress"
    t0 = time.monotonic()
    code = run_stress(spec, cfg, out, lambda o, f, t: None, log=lambda m: None)
    wall = time.monotonic() - t0
    cycles = read_results(out / "results.jsonl").of_kind(RecordKind.CYCLE)
    secs = [c.get("seconds", 0.0) for c in cycles]
    rec = {"cycles": len(cycles), "failed": sum(1 for c in cycles if not c["ok"]),
           "wall_s": round(wall, 2), "cycles_per_min": round(60 * len(cycles) / wall, 2),
           "cycle_s": spread(secs), "transition_ms": spread(
               [c.get("transition_ms") or 0.0 for c in cycles]),
           "spec": spec.to_json(), "load": machine_load()}
    bench.record("stress", rec)
    bench.log(f"\nstress: {rec['cycles']} standby cycles ({rec['failed']} failed) in "
              f"{wall:.1f} s: {rec['cycles_per_min']} cycles/min; a cycle "
              f"{rec['cycle_s'].get('median', 0):.2f} s median, its transition "
              f"{rec['transition_ms'].get('median', 0):.0f} ms median")
    return code == 0


def qp_section(bench: Bench, shim: Any, agent: Any, topo: Any, clients_dir: Path,
               logs: Path, cfg: Any) -> bool:
    """One standby with spec.qps QPs over spec.qp_workers queue-replay workers."""
    from harness.run.scenario import run_round, spawn_workers
    from harness.topology import lifecycle
    from power.plan import OnVeto, Ordering
    from power.result import TransitionRequest

    spec = bench.spec
    wl = spec.qp_spec()
    names = [f"bench-qps-{i}" for i in range(spec.qp_workers)]
    t0 = time.monotonic()
    workers = spawn_workers(["queue-replay"] * spec.qp_workers, wl, topo.local, agent,
                            clients_dir, logs, names)
    open_s = time.monotonic() - t0
    try:
        req = TransitionRequest("standby", Ordering.CLIENTS_FIRST, spec.hold_ms, OnVeto.FORCE)
        t1 = time.monotonic()
        res = light(run_round(shim, agent, workers, req, probe=False))
        round_s = time.monotonic() - t1
    finally:
        for w in workers:
            w.close()
    lifecycle.restore_local_side(cfg, log=lambda m: None)
    clients = res["clients"]
    total = sum(sum(c["counts"].values()) for c in clients)
    unaccounted = sum(len(c["unaccounted"]) for c in clients)
    crashed = [c["client"] for c in clients if c["crashed"]]
    opened = [e for c in clients for e in c["events"] if e["event"] == "opened"]
    rec = {"qps": spec.qps, "workers": spec.qp_workers, "qps_per_worker": wl.qps,
           "requests": total, "unaccounted": unaccounted, "crashed": crashed,
           "verdict": res["transition"]["verdict"], "open_s": round(open_s, 2),
           "round_s": round(round_s, 2), "parts_ms": cycle_parts(res),
           "reconnect_connect_ms": spread([e["connect_ms"] for e in opened
                                           if e.get("generation", 1) > 1]),
           "counts": {c["client"]: c["counts"] for c in clients},
           "peer_counts": {c["client"]: c["peer_counts"] for c in clients},
           "workload": wl.to_json(), "load": machine_load()}
    ok = (unaccounted == 0 and not crashed and res["ok"]
          and rec["verdict"] in ("completed", "forced"))
    rec["ledger_ok"] = ok
    bench.record("qps", rec)
    parts, rc = rec["parts_ms"], rec["reconnect_connect_ms"]
    bench.log(f"\n{spec.qps} QPs: {spec.qp_workers} workers x {wl.qps} QPs, standby "
              f"{rec['verdict']}: first connect {open_s:.1f} s; shim transition "
              f"{parts.get('shim_total', 0) / 1000:.1f} s; each worker's reconnect of its "
              f"{wl.qps} QPs {rc.get('median', 0) / 1000:.1f} s median ("
              f"{rc.get('max', 0) / 1000:.1f} s max); whole (notice -> last first ok) "
              f"{parts.get('whole', 0) / 1000:.1f} s; ledger: {total} requests, "
              f"{unaccounted} unaccounted{', crashed: ' + ', '.join(crashed) if crashed else ''}")
    return ok


# --- targets ------------------------------------------------------------------------------

def targets(results: dict) -> list[dict]:
    """The issue's targets against this run's figures (absent figures: not measured)."""
    out = []
    qd = results.get("spec", {}).get("queue_depth")
    rows = {(r["size"], r["op"]): r for r in results.get("throughput", [])
            if r.get("signal_every") in (None, qd)}
    big = max((s for s, op in rows if op == "SEND"), default=None)
    small = min((s for s, op in rows if op == "SEND"), default=None)
    if big is not None:
        r = rows[(big, "SEND")]
        out.append({"target": f"harness SEND throughput >= 80% of ib_send_bw at {big} B",
                    "value": r["ratio_mib"], "goal": TARGETS["send_64k_bw_ratio"],
                    "met": (r["ratio_mib"] or 0) >= TARGETS["send_64k_bw_ratio"]})
    if small is not None:
        r = rows[(small, "SEND")]
        out.append({"target": f"harness SEND message rate >= 30% of ib_send_bw at {small} B",
                    "value": r["ratio_msg"], "goal": TARGETS["send_64_rate_ratio"],
                    "met": (r["ratio_msg"] or 0) >= TARGETS["send_64_rate_ratio"]})
    whole = results.get("cycle", {}).get("summary", {}).get("whole")
    if whole:
        in_vm = results.get("load_start", {}).get("in_vm")
        goal = TARGETS["cycle_vm_ms" if in_vm else "cycle_native_ms"]
        out.append({"target": f"standby cycle (whole, median) under {goal / 1000:g} s "
                    f"({'emulated VM' if in_vm else 'native'})", "value": whole["median"],
                    "goal": goal, "met": whole["median"] < goal})
    return out


def target_lines(rows: list[dict]) -> list[str]:
    out = ["targets:"] if rows else []
    for r in rows:
        out.append(f"  {'MET    ' if r['met'] else 'NOT MET'} {r['target']}: {r['value']} "
                   f"(goal {r['goal']})")
    return out

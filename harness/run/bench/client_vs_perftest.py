"""The harness client against perftest on the same rxe pair: throughput and latency.

Throughput: the harness client (one worker process, the one I/O path of every policy,
with its ledger and the peer agent checking every message) against `ib_send_bw`
(harness SEND_WITH_IMM) and `ib_write_bw` (harness RDMA_WRITE_WITH_IMM) at each size,
same queue depth, one QP; MB/s as perftest prints it (2^20 bytes/s) and messages/s, as
ratios harness / perftest.

Latency at queue depth 1: post -> completion of every request from the ledger (median,
p99), completions by event and by polling, next to `ib_write_lat` / `ib_send_lat`
(which busy-poll and print half a ping-pong round trip).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from harness.core.device import DeviceInfo
from harness.core.errors import BoundExceeded, RxePowerError
from harness.run.bench.bounds import Clipped, SectionBound
from harness.run.bench.failures import first_error, harness_failure, peer_errors
from harness.run.bench.perftest import PerftestRun, run_perftest, run_perftest_counted
from harness.run.bench.record import BenchRecord, machine_load
from harness.run.bench.series import percentile
from harness.run.client_worker import ClientWorker
from harness.run.scenario import PROGRESS_TIMEOUT_S
from harness.run.session import Rig
from harness.workload.ledger import Outcome, WorkloadSpec, apply_peer_view

HARNESS_RUN_TIMEOUT_S = 600.0  # one harness throughput/latency run, go -> its last outcome
WORKER_GO_TIMEOUT_S = 30.0  # the worker's reply to `go`
FINISH_REPLY_TIMEOUT_S = 30.0  # the worker's report, once it is done or has stopped
RUN_PROGRESS_POLL_S = 0.5  # how often a running client is asked how far it is
BW_TOOLS = {"SEND": "ib_send_bw", "WRITE": "ib_write_bw"}
LAT_TOOLS = {"SEND": "ib_send_lat", "WRITE": "ib_write_lat"}
LAT_SIZE = 64
MIB = 1 << 20  # perftest's "MB/sec" is 2^20 bytes per second
# outcomes that mean the fail-fast client has stopped at an error: with nothing in flight
# it waits for a resume that no bench section sends, so the run is over
STOPPED = {Outcome.COMPLETED_ERROR.value, Outcome.REJECTED_AT_POST.value,
           Outcome.FLUSHED.value}


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
    first_error: dict[str, Any] | None = None  # failures.FirstError
    peer_errors: dict[str, int] | None = None  # the peer's error completions (not flushes)
    bound: str | None = None  # the bound that fired while waiting for the run, if one did
    failure: str | None = None  # why this run is not a figure (None: it is one)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wait_until_over(w: ClientWorker, clip: Clipped) -> str | None:
    """Until the client is done, or has stopped at an error with nothing in flight (the
    fail-fast client then waits for a resume, which would hold the run to its whole
    bound), asking it every RUN_PROGRESS_POLL_S. Returns the fired bound's text, naming
    what was outstanding, or None."""
    deadline = time.monotonic() + clip.seconds
    while True:
        rep = w.request("progress", PROGRESS_TIMEOUT_S)
        if rep["done"] or (rep["outstanding"] == 0 and STOPPED & set(rep["counts"])):
            return None
        if time.monotonic() >= deadline:
            return BoundExceeded(
                f"harness client {w.name}", clip.bound_name, clip.bound_s,
                f"{rep['outstanding']} requests in flight and {rep['queued']} queued; "
                f"outcomes so far {rep['counts']}").problem
        time.sleep(RUN_PROGRESS_POLL_S)  # polling interval of the bounded wait above


def run_harness_client(rig: Rig, spec: WorkloadSpec, name: str,
                       bound: SectionBound) -> HarnessRun:
    """One worker (the real client process) runs `spec` flat out; figures from its ledger,
    every request accounted, the peer's record of every SEND/WRITE matched to it. A run
    with any error (or a bound that fired) has `failure` saying why."""
    agent = rig.agent
    with ClientWorker(name, "fail-fast", spec, rig.log_dir) as w:
        t0 = time.monotonic()
        w.start(DeviceInfo.from_endpoint(rig.topo.local), agent.sock_path, rig.clients_dir)
        open_ms = (time.monotonic() - t0) * 1000
        t1 = time.monotonic()
        w.request("go", WORKER_GO_TIMEOUT_S)
        fired = wait_until_over(w, bound.clip("HARNESS_RUN_TIMEOUT_S", HARNESS_RUN_TIMEOUT_S))
        rep = w.request("finish", FINISH_REPLY_TIMEOUT_S, timeout_s=0)
        wall = time.monotonic() - t1
        # the peer's record while the client lives: once its process is gone the agent
        # destroys its QPs after PARTNER_KEEPALIVE_TIMEOUT_S, as a target would (a guest
        # run lost QP 2 between two pages of a flat-out run's arrivals)
        arrivals: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for aq in rep["agent_qps"]:
            got = agent.arrivals(aq["qp_id"], 0, timeout_s=0)
            arrivals += got["arrivals"]
            events += got["events"]
            with contextlib.suppress(RxePowerError):
                agent.request("destroy_qp", 30.0, qp_id=aq["qp_id"])
        ledger = w.fetch_ledger(int(rep["requests"]))
    apply_peer_view(ledger, arrivals)
    ok = [(a.posted_ns, a.completed_ns) for e in ledger.entries.values() for a in e.attempts
          if a.status == "SUCCESS" and a.completed_ns is not None]
    size = spec.sizes[0]
    lat: dict[str, float] = {}
    window = 0.0
    if ok:
        window = (max(done for _, done in ok) - min(posted for posted, _ in ok)) / 1e9
        lats = [(done - posted) / 1e3 for posted, done in ok]
        lat = {"median": round(statistics.median(lats), 1),
               "p99": round(percentile(lats, 99), 1), "min": round(min(lats), 1),
               "max": round(max(lats), 1)}
    first, peer_errs = first_error(ledger), peer_errors(events)
    counts, peer_counts, unaccounted = ledger.counts(), ledger.peer_counts(), \
        len(ledger.unaccounted())
    return HarnessRun(spec.ops[0].value, size, spec.queue_depth, spec.completion,
                      spec.signal_every, spec.count,
                      round(window, 4),
                      round(len(ok) * size / window / MIB, 3) if window else 0.0,
                      round(len(ok) / window, 1) if window else 0.0, lat, counts,
                      peer_counts, unaccounted, round(open_ms, 1), round(wall, 3),
                      first.to_json() if first else None, peer_errs, fired,
                      harness_failure(spec.count, counts, peer_counts, unaccounted, first,
                                      peer_errs, fired))


def ledger_held(run: HarnessRun) -> bool:
    """Every request completed once and, for SEND/WRITE, delivered once at the peer, with
    no error anywhere and no bound fired."""
    return run.failure is None


def ledger_text(hr: HarnessRun) -> str:
    peer = ", ".join(f"{v} {k}" for k, v in hr.peer_counts.items())
    outs = ", ".join(f"{v} {k}" for k, v in hr.counts.items())
    return f"{outs}; peer: {peer}; unaccounted {hr.unaccounted}"


def throughput_row(op: str, tool: str, size: int, pt: PerftestRun,
                   hr: HarnessRun) -> dict[str, Any]:
    """One row: perftest's and the harness's figures and their ratios, or, when either
    run failed, `failed` with the cause(s) and no ratio (a failed run is not a figure)."""
    causes = {side: why for side, why in (("perftest", pt.failure), ("harness", hr.failure))
              if why is not None}
    failed = "; ".join(f"{side}: {why}" for side, why in causes.items()) or None
    pt_mib = pt_rate = 0.0
    if pt.failure is None:
        pt_mib, pt_rate = pt.figure("BW average[MB/sec]"), pt.figure("MsgRate[Mpps]") * 1e6
    ratio_mib = ratio_msg = None
    if failed is None:
        ratio_mib = round(hr.mib_per_s / pt_mib, 3) if pt_mib else None
        ratio_msg = round(hr.msg_per_s / pt_rate, 3) if pt_rate else None
    return {"size": size, "op": op, "tool": tool, "signal_every": hr.signal_every,
            "perftest": {"mib_per_s": pt_mib if pt.failure is None else None,
                         "msg_per_s": round(pt_rate, 1) if pt.failure is None else None,
                         "argv": pt.argv, "output": pt.output, "zero_runs": pt.zero_runs,
                         "uncalibrated_runs": pt.uncalibrated_runs, "failure": pt.failure},
            "harness": hr.to_json(), "ratio_mib": ratio_mib, "ratio_msg": ratio_msg,
            "ledger_ok": ledger_held(hr), "failed": failed, "failed_by": list(causes),
            "load": machine_load()}


def throughput_line(row: dict[str, Any]) -> str:
    """The table's line for a row: its figures, or FAILED and the cause instead."""
    hr, pt = row["harness"], row["perftest"]
    head = f"{row['size']:>6} {row['op']:<6} {'1/' + str(row['signal_every']):>6} "
    if row["failed"]:
        return head + f"FAILED (no figures): {row['failed']}"
    return (head + f"{pt['mib_per_s']:>9.2f} {pt['msg_per_s']:>8.0f} {hr['mib_per_s']:>9.2f} "
            f"{hr['msg_per_s']:>8.0f} {row['ratio_mib'] or 0:>6.2f} {row['ratio_msg'] or 0:>6.2f}"
            f"  {ledger_text(HarnessRun(**hr))}")


def measure_throughput(bench: BenchRecord, rig: Rig) -> bool:
    """Each size and op: perftest, then the harness client at the same queue depth.
    False when any run failed (its row says why) or the section's bound fired."""
    spec = bench.spec
    bound = spec.section_bound("throughput")
    rows: list[dict[str, Any]] = []
    ok = True
    qd = spec.queue_depth
    bench.out(f"\nthroughput: 1 QP, queue depth {qd}, one signaled completion per {qd} WRs "
              f"(perftest's CQ moderation at -t {qd}) unless the row says 1/1; MB/s = 2^20 "
              "bytes/s (as perftest prints it); ratio = harness / perftest; a run with any "
              "error is FAILED, with no figures")
    bench.out(f"{'size':>6} {'op':<6} {'signal':>6} {'perftest':>9} {'msg/s':>8} "
              f"{'harness':>9} {'msg/s':>8} {'MB/s':>6} {'msg/s':>6}  ledger")
    for size in spec.sizes:
        for op, tool in BW_TOOLS.items():
            hs = spec.throughput_spec(op, size)
            bound.check(f"{tool} and the harness {op} at {size} B, not started")
            pt = run_perftest_counted(tool, rig.topo, size, hs.count, qd, bound)
            variants = [hs]
            if size == min(spec.sizes) and op == "SEND" and qd > 1:  # what signaling costs
                variants.append(spec.throughput_spec(op, size, signal_every=1))
            for v in variants:
                name = f"bench-{op.lower()}-{size}-s{v.signal_every}"
                bound.check(f"the harness run {name}, not started")
                hr = run_harness_client(rig, v, name, bound)
                row = throughput_row(op, tool, size, pt, hr)
                ok &= row["failed"] is None
                rows.append(row)
                bench.record("throughput", rows)
                bench.out(throughput_line(row))
    return ok


def measure_latency(bench: BenchRecord, rig: Rig) -> bool:
    """Queue depth 1, LAT_SIZE bytes: perftest's latency tools, then the harness client
    with completions by event and by polling. A failed run is FAILED with its cause and
    no figures; False when any run failed or the section's bound fired."""
    spec = bench.spec
    bound = spec.section_bound("latency")
    rows: list[dict[str, Any]] = []
    ok = True
    bench.out(f"\nlatency: {LAT_SIZE} B, queue depth 1, {spec.lat_iters} requests; microseconds."
              " perftest: typical and p99 of half a ping-pong round trip (busy polling);"
              " harness: post -> completion (a full round trip: the responder's ack)")
    bench.out(f"{'op':<6} {'perftest typ':>12} {'p99':>8} {'harness events med':>18} {'p99':>8}"
              f" {'harness poll med':>16} {'p99':>8}")
    for op, tool in LAT_TOOLS.items():
        bound.check(f"{tool} and the harness {op} latency runs, not started")
        pt = run_perftest(tool, rig.topo, LAT_SIZE, spec.lat_iters, 1, bound)
        runs = {}
        for completion in ("events", "poll"):
            hs = spec.throughput_spec(op, LAT_SIZE, queue_depth=1, completion=completion,
                                      count=spec.lat_iters)
            name = f"bench-lat-{op.lower()}-{completion}"
            bound.check(f"the harness run {name}, not started")
            runs[completion] = run_harness_client(rig, hs, name, bound)
        causes = {side: why for side, why in [("perftest", pt.failure)]
                  + [(f"harness ({k})", r.failure) for k, r in runs.items()] if why is not None}
        failed = "; ".join(f"{side}: {why}" for side, why in causes.items()) or None
        ok &= failed is None
        row = {"op": op, "tool": tool, "size": LAT_SIZE,
               "perftest": {"typical_us": None if pt.failure else pt.figure("t_typical[usec]"),
                            "p99_us": None if pt.failure else pt.figure("99% percentile[usec]"),
                            "argv": pt.argv, "output": pt.output, "failure": pt.failure},
               "harness": {k: v.to_json() for k, v in runs.items()}, "failed": failed,
               "failed_by": list(causes), "load": machine_load()}
        rows.append(row)
        bench.record("latency", rows)
        if failed:
            bench.out(f"{op:<6} FAILED (no figures): {failed}")
            continue
        ev, po = runs["events"].latency_us, runs["poll"].latency_us
        bench.out(f"{op:<6} {pt.figure('t_typical[usec]'):>12.1f} "
                  f"{pt.figure('99% percentile[usec]'):>8.1f} {ev.get('median', 0):>18.1f} "
                  f"{ev.get('p99', 0):>8.1f} {po.get('median', 0):>16.1f} {po.get('p99', 0):>8.1f}")
    return ok

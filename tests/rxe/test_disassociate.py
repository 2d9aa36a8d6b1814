"""What `rdma link delete` of a held rxe device does with our disassociate build.

The holder (tests/helpers/disassociate_holder.py) is a separate process with a
Context, PD, CQ, MR and RC QPs connected to rxe1, each send queue kept full of 64 KiB
RDMA WRITEs, so the rings rxe maps into the process are in use when the device goes.
Measured with `--removal disassociate` (ci/build-rxe-disassociate.sh's module); the
session must run in that mode (rxe-power test -- --removal disassociate).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.core.printer import NULL
from harness.core.proc import python_child
from harness.system.rdma_res import res_summary
from harness.topology import devices, lifecycle
from harness.topology.config import Topology, TopologyConfig
from power import kmsg
from tests.helpers.json_child import JsonChild

pytestmark = pytest.mark.removal("disassociate")

HOLDER = "tests.helpers.disassociate_holder"  # started as our children are (python_child)
DELETE_TIMEOUT_S = 10.0  # the held delete; measured 0.10-0.30 s under TCG
HOLDER_READY_TIMEOUT_S = 90.0  # start, peer agent, connect, first window of WRITEs
HOLDER_REPORT_TIMEOUT_S = 30.0  # from the delete's end to the holder's after_fatal report
HOLDER_EXIT_TIMEOUT_S = 30.0  # from stdin closed to exit
# 3 in the suite (5 took 44 s under TCG); RXE_POWER_DISASSOCIATE_CYCLES=200 for the long run
CYCLES = int(os.environ.get("RXE_POWER_DISASSOCIATE_CYCLES", "3"))
CYCLE_BOUND_S = 15.0  # per held-delete cycle, for the test's timeout (measured ~6 s in TCG)
# the calls that reach the kernel fail with EIO once the context is disassociated
# (measured: post_recv succeeds, it only writes the receive ring mapped into the process)
EIO_CALLS = ("post_send", "req_notify_cq", "query_qp", "query_port", "query_device",
             "alloc_pd", "reg_mr", "create_cq")


@dataclass
class Cycle:
    delete_s: float
    report: dict
    closed: dict
    exit_code: int


def held_delete(cfg: TopologyConfig, qps: int) -> Cycle:
    """One holder, one delete of the local HCA while it writes; the holder closes and
    exits; the local side is restored."""
    holder = JsonChild(python_child(HOLDER, "--qps", str(qps)), "holder")
    try:
        holder.wait_for("ready", HOLDER_READY_TIMEOUT_S)
        t0 = time.monotonic()
        proc = devices.start_rdma_link_delete(cfg.local_dev)
        try:
            _, err = proc.communicate(timeout=DELETE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"rdma link delete {cfg.local_dev} still running after "
                                 f"DELETE_TIMEOUT_S={DELETE_TIMEOUT_S:g}s with the holder "
                                 f"pid {holder.pid} open: not disassociated") from None
        delete_s = time.monotonic() - t0
        assert proc.returncode == 0, f"rdma link delete failed: {err}"
        report = holder.wait_for("after_fatal", HOLDER_REPORT_TIMEOUT_S)
        holder.close_stdin()
        closed = holder.wait_for("closed", HOLDER_EXIT_TIMEOUT_S)
        code = holder.wait(HOLDER_EXIT_TIMEOUT_S)
    finally:
        holder.stop()
    problems = lifecycle.restore_local_side(cfg, out=NULL)
    assert not problems, problems
    return Cycle(delete_s, report, closed, code)


def test_held_delete_disassociates(rxe_config: TopologyConfig,
                                   rxe_topology: Topology) -> None:
    """The delete completes within DELETE_TIMEOUT_S while WRITEs are in flight; the holder
    gets DEVICE_FATAL; the calls that reach the kernel fail with EIO; polling the CQ (its
    ring is mapped into the holder) does not fail and, once drained, returns nothing; the
    holder closes
    everything and exits 0; no kernel WARNING/BUG/Oops; `rdma res` back to baseline."""
    base = res_summary()
    marker = kmsg.write_marker("test_held_delete_disassociates")
    c = held_delete(rxe_config, qps=2)
    calls = c.report["calls"]
    print(f"delete took {c.delete_s * 1000:.0f} ms; {c.report['in_flight']} WRITEs in flight; "
          f"events {c.report['events']}; wc errors {c.report['wc_errors']}; calls {calls}")
    assert "DEVICE_FATAL" in c.report["events"]
    assert c.report["in_flight"] > 0, "nothing was in flight when the device went"
    eio = {name: calls[name].get("name") for name in EIO_CALLS}
    assert all(v == "EIO" for v in eio.values()), eio
    # the CQ ring stays mapped: polling never fails; it returns what had completed before
    # the removal (if not yet reaped), then nothing: the WRITEs in flight never complete
    assert calls["poll_cq"]["ok"], calls["poll_cq"]
    assert set(calls["poll_cq"]["result"]["statuses"]) <= {"SUCCESS"}, calls["poll_cq"]
    assert calls["poll_cq_again"] == {"ok": True, "result": {"n": 0, "statuses": []}}
    assert c.closed["errors"] == [] and c.exit_code == 0, (c.closed, c.exit_code)
    scan = kmsg.scan_after(marker)
    assert scan.ok, "\n".join(kmsg.render(scan))
    assert res_summary() == base


@pytest.mark.timeout(60 + CYCLE_BOUND_S * CYCLES)
def test_held_delete_cycles(rxe_config: TopologyConfig,
                            rxe_topology: Topology) -> None:
    """CYCLES held deletes in a row (RXE_POWER_DISASSOCIATE_CYCLES, default 3): each
    completes within the bound, each holder exits 0, the kernel log stays clean and the
    kernel's RDMA resources come back to the baseline every cycle."""
    base = res_summary()
    marker = kmsg.write_marker("test_held_delete_cycles")
    times, res_off = [], []
    for i in range(CYCLES):
        c = held_delete(rxe_config, qps=1)
        assert "DEVICE_FATAL" in c.report["events"], (i, c.report)
        assert c.exit_code == 0 and not c.closed["errors"], (i, c.closed)
        times.append(c.delete_s)
        if (now := res_summary()) != base:
            res_off.append((i, now))
        if (i + 1) % 20 == 0:  # progress for long runs (RXE_POWER_DISASSOCIATE_CYCLES=200)
            print(f"cycle {i + 1}/{CYCLES}: delete median {statistics.median(times) * 1000:.0f}"
                  f" ms, max {max(times) * 1000:.0f} ms; rdma res off in {len(res_off)}",
                  flush=True)
    scan = kmsg.scan_after(marker)
    print(f"{CYCLES} held deletes: median {statistics.median(times) * 1000:.0f} ms, max "
          f"{max(times) * 1000:.0f} ms; kernel log hits {len(scan.hits)}; rdma res off "
          f"baseline in {len(res_off)} cycles")
    assert scan.ok, "\n".join(kmsg.render(scan))
    assert not res_off, res_off


OUTSIDE_EXIT_TIMEOUT_S = 5.0  # after the delete, how long the program gets to exit
OUTSIDE_CASES = [("ibv_rc_pingpong", ()), ("ib_send_bw", ()), ("ib_send_bw", ("--reversed",))]


@pytest.mark.parametrize("program, extra", OUTSIDE_CASES,
                         ids=[f"{p}{''.join(e)}" for p, e in OUTSIDE_CASES])
def test_outside_program_held_delete(rxe_config: TopologyConfig,
                                     rxe_topology: Topology, results_dir: Path,
                                     program: str, extra: tuple[str, ...],
                                     request: pytest.FixtureRequest) -> None:
    """A program that is not ours (client on rxe0, server on rxe1, traffic flowing) holds
    rxe0 at the delete: the delete completes within DELETE_TIMEOUT_S without anyone
    killing it; what the program then does (exit code, last output) is recorded."""
    from tests.rxe.test_outside_clients import outside

    marker = kmsg.write_marker(f"test_outside_program_held_delete {program}")
    log = results_dir / "logs" / f"{request.node.name}-client.log"
    with outside(program, rxe_topology, results_dir / "logs", request.node.name,
                 extra) as (srv, cli):
        t0 = time.monotonic()
        proc = devices.start_rdma_link_delete(rxe_config.local_dev)
        try:
            proc.communicate(timeout=DELETE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        delete_s = time.monotonic() - t0
        deleted = proc.returncode == 0
        try:
            code: int | None = cli.wait(OUTSIDE_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = time.monotonic() - t0
        srv_alive = srv.poll() is None
    problems = lifecycle.restore_local_side(rxe_config, out=NULL)
    text = log.read_text(errors="replace")
    print(f"{program} {' '.join(extra)}: delete {'completed' if deleted else 'did NOT complete'}"
          f" in {delete_s * 1000:.0f} ms; client exit {code} after {exit_s:.1f} s "
          f"(None: still running after OUTSIDE_EXIT_TIMEOUT_S, then terminated); server "
          f"still running: {srv_alive}; client output ends {text[-300:]!r}")
    assert deleted, f"rdma link delete with {program} holding rxe0: not within the bound"
    assert not problems, problems
    scan = kmsg.scan_after(marker)
    assert scan.ok, "\n".join(kmsg.render(scan))


def test_policies_take_device_fatal_as_the_removal_notice(power_shim, peer_agent,
                                                          rxe_topology: Topology,
                                                          results_dir: Path) -> None:
    """surprise-removal with every policy side by side, requests arriving open-loop: the
    delete completes with nobody terminated. naive takes no notice of DEVICE_FATAL and
    keeps posting: every later post fails (EIO: rejected at post), and it lives on. The
    cooperative policies stop on the first removal notice (DEVICE_FATAL, or the uverbs
    node vanishing, whichever comes first), release, and reopen the new device after
    resume (a removal notice may also be an error on its data path that came before the
    DEVICE_FATAL event was read). Every request is accounted for."""
    from harness.run.scenario import render, run_scenario
    from harness.workload.spec import Arrivals, WorkloadEnd, WorkloadSpec, resumed_cap
    from power.plan import Ordering
    from power.result import TransitionRequest, Verdict

    # requests keep arriving until a second after the transition: it meets them whatever
    # the machine's speed (CI once saw every request done before the delete came)
    spec = WorkloadSpec(count=resumed_cap(60.0, 120), rate_per_s=60.0, queue_depth=4,
                        arrivals=Arrivals.OPEN, end=WorkloadEnd.RESUMED)
    req = TransitionRequest("surprise-removal", Ordering.HCA_FIRST, hold_ms=300)
    res = run_scenario(power_shim.shim, peer_agent, rxe_topology.local, req,
                       ["naive", "fail-fast", "queue-replay", "graceful"], spec,
                       power_shim.clients_dir, results_dir / "clients")
    print("\n".join(render(res)))
    assert res.transition.verdict is Verdict.COMPLETED, res.transition.reasons
    assert not (res.transition.veto and res.transition.veto.terminated)
    assert res.ok and not any(c.crashed for c in res.clients)
    for c in res.clients:  # the removal met every client's workload: a measurement
        assert c.coverage is not None and c.coverage.crossed > 0 and not c.missed, c.missed
        assert c.coverage.arrived_away, c.coverage
    naive = res.client("naive")
    assert {"event": "async", "name": "DEVICE_FATAL"} in [
        {k: e.get(k) for k in ("event", "name")} for e in naive.events]
    assert naive.counts.get("rejected-at-post", 0) > 0
    assert naive.clean_shutdown["reconnects"] == 0
    for policy in ("fail-fast", "queue-replay", "graceful"):
        c = res.client(policy)
        notices = [e["event"] if e["event"] != "async" else e.get("name")
                   for e in c.events]
        # it let go of the device before the resume, on whichever removal notice came
        # first: DEVICE_FATAL, the uverbs node vanishing, or (measured once in a loaded
        # suite run) an error on its data path before the DEVICE_FATAL event was read
        print(policy, notices, c.clean_shutdown.get("quiesce"))
        assert "released" in notices and "resume_complete" in notices, notices
        assert notices.index("released") < notices.index("resume_complete"), notices
        assert c.clean_shutdown["reconnects"] == 1 and c.counts.get("lost", 0) == 0
        assert sum(c.counts.values()) == len(c.ledger) > 0

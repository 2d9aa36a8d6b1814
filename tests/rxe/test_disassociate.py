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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.run.stress import rdma_res
from harness.topology import devices, lifecycle
from harness.topology.config import Topology, TopologyConfig
from power import kmsg
from tests.helpers.json_child import JsonChild

pytestmark = [pytest.mark.rxe, pytest.mark.removal("disassociate")]

HOLDER = Path(__file__).parents[1] / "helpers" / "disassociate_holder.py"
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
    holder = JsonChild([sys.executable, str(HOLDER), "--qps", str(qps)], "holder")
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
    problems = lifecycle.restore_local_side(cfg, log=lambda m: None)
    assert not problems, problems
    return Cycle(delete_s, report, closed, code)


def test_held_delete_disassociates(rxe_config: TopologyConfig,
                                   rxe_topology: Topology) -> None:
    """The delete completes within DELETE_TIMEOUT_S while WRITEs are in flight; the holder
    gets DEVICE_FATAL; the calls that reach the kernel fail with EIO; polling the CQ (its
    ring is mapped into the holder) does not fail and, once drained, returns nothing; the
    holder closes
    everything and exits 0; no kernel WARNING/BUG/Oops; `rdma res` back to baseline."""
    base = rdma_res()
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
    assert rdma_res() == base


@pytest.mark.timeout(60 + CYCLE_BOUND_S * CYCLES)
def test_held_delete_cycles(rxe_config: TopologyConfig,
                            rxe_topology: Topology) -> None:
    """CYCLES held deletes in a row (RXE_POWER_DISASSOCIATE_CYCLES, default 3): each
    completes within the bound, each holder exits 0, the kernel log stays clean and the
    kernel's RDMA resources come back to the baseline every cycle."""
    base = rdma_res()
    marker = kmsg.write_marker("test_held_delete_cycles")
    times, res_off = [], []
    for i in range(CYCLES):
        c = held_delete(rxe_config, qps=1)
        assert "DEVICE_FATAL" in c.report["events"], (i, c.report)
        assert c.exit_code == 0 and not c.closed["errors"], (i, c.closed)
        times.append(c.delete_s)
        if (now := rdma_res()) != base:
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
    problems = lifecycle.restore_local_side(rxe_config, log=lambda m: None)
    text = log.read_text(errors="replace")
    print(f"{program} {' '.join(extra)}: delete {'completed' if deleted else 'did NOT complete'}"
          f" in {delete_s * 1000:.0f} ms; client exit {code} after {exit_s:.1f} s "
          f"(None: still running after OUTSIDE_EXIT_TIMEOUT_S, then terminated); server "
          f"still running: {srv_alive}; client output ends {text[-300:]!r}")
    assert deleted, f"rdma link delete with {program} holding rxe0: not within the bound"
    assert not problems, problems
    scan = kmsg.scan_after(marker)
    assert scan.ok, "\n".join(kmsg.render(scan))

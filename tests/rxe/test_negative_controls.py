"""Negative controls on real rxe: each plants one fault the harness exists to find, runs
a real scenario, and checks that its row turns `broken` or `bad` as the README says
("Reading the table"), naming the fault. Without them a detector that never fires would
look the same as a harness that finds nothing wrong.

- a request dropped from the ledger a worker hands back: broken, unaccounted (found by
  its journal, written ahead of each post, and by the peer's arrivals);
- an extra completion (the HCA hands one completion over twice): broken;
- a block of the nvme target's store corrupted after the I/O: bad, corrupted;
- an rdma_cm id with both ends on rxe1 towards the nvme target's port (the loopback the
  route guard prevents) during the transition: broken, off the wire;
- the route guard off: the loopback it prevents, shown (or measured absent).

The same controls on recorded data or pure logic: tests/unit/run/test_accounting_controls_unit.py,
test_nvme_recorded.py, test_nfs_unit.py.
"""

from __future__ import annotations

import mmap
import os

import pytest

from clients.kernel.blockio import DriverSpec
from clients.kernel.nvme_scenario import NvmeScenario, run_nvme
from clients.kernel.nvmet_target import NvmetTarget
from harness.core.proc import python_child
from harness.rdma.verbs import RcQp
from harness.run.client_worker import ClientWorker
from harness.run.lanes import parse_policy
from harness.run.lanes.kernel import kernel_rows
from harness.run.rows import RowStatus
from harness.workload.spec import Op
from power.plan import Ordering
from tests.helpers.json_child import JsonChild
from tests.helpers.kernel_needs import NFS_RDMA_MODULES, NVME_RDMA_MODULES
from tests.rxe.test_clients import SPEC, issued, rows, scenario

POLICY = "nvme-rdma:ctrl_loss_tmo=30:reconnect_delay=1:fast_io_fail_tmo=0"
NVME_SPEC = DriverSpec(count=800, depth=4, rate_per_s=40.0)  # a cap: it stops once settled
NVME_HOLD_MS = 200
PLANT_READY_TIMEOUT_S = 30.0
PLANT_STOP_TIMEOUT_S = 10.0


# --- the verbs clients' accounting -----------------------------------------------------------


def test_a_request_dropped_from_the_ledger_makes_the_row_broken(
        power_shim, peer_agent, rxe_topology, results_dir, monkeypatch) -> None:
    """The ledger graceful hands back loses its first READ (the peer cannot see a READ)
    and its first SEND: its journal, written ahead of every post, shows both issued, so
    both are put back without an outcome; the row is broken, `2 requests unaccounted`,
    and the other requests keep their outcomes."""
    reqs = SPEC.requests()
    dropped = sorted([next(r.req_id for r in reqs if r.op is Op.READ),
                      next(r.req_id for r in reqs if r.op is Op.SEND)])
    real = ClientWorker.fetch_ledger

    def dropping(self, requests):  # the mutation: the controller's copy loses two entries
        led = real(self, requests)
        for r in dropped:
            del led.entries[r]
        return led

    monkeypatch.setattr(ClientWorker, "fetch_ledger", dropping)
    res = scenario(power_shim, peer_agent, rxe_topology, results_dir, "standby",
                   Ordering.CLIENTS_FIRST, ["graceful"])
    c, row = res.client("graceful"), rows(res)["graceful"]
    print(f"row {row.status.value}: {row.findings}; unaccounted {c.unaccounted}")
    assert c.unaccounted == dropped and not c.invariant_ok, c.unaccounted
    assert c.counts.get("unaccounted") == 2 and sum(c.counts.values()) == issued(c)
    by_id = {e["req_id"]: e for e in c.ledger}
    assert all(by_id[r]["outcome"] is None and "journal" in by_id[r]["reason"]
               for r in dropped)
    assert row.status is RowStatus.BROKEN, row.findings
    assert row.findings[0] == "2 requests unaccounted", row.findings


def test_an_extra_completion_makes_the_row_broken(power_shim, peer_agent, rxe_topology,
                                                  results_dir, monkeypatch) -> None:
    """graceful's worker (a fork of this process) gets its first completion twice from
    the CQ, as an HCA that completed a work request twice would hand it over: the second
    names a slot with no request in flight. The worker counts and notes it instead of
    dropping it; every request still has exactly one outcome; the row is broken."""
    real = RcQp.poll
    duplicated: list[int] = []

    def twice(self, max_entries=16, ready=None):  # the mutation, in the worker's fork
        wcs = real(self, max_entries, ready)
        if wcs and not duplicated and max_entries > 1:
            duplicated.append(wcs[0].wr_id)
            return [wcs[0], *wcs]
        return wcs

    monkeypatch.setattr(RcQp, "poll", twice)
    res = scenario(power_shim, peer_agent, rxe_topology, results_dir, "standby",
                   Ordering.CLIENTS_FIRST, ["graceful"])
    c, row = res.client("graceful"), rows(res)["graceful"]
    extra = [e for e in c.events if e["event"] == "extra completion"]
    print(f"row {row.status.value}: {row.findings}; extra completions {extra}")
    assert c.metrics["extra_completions"] == 1 and len(extra) == 1, c.metrics
    assert extra[0]["status"] == "SUCCESS"
    assert c.invariant_ok and sum(c.counts.values()) == issued(c), c.counts
    assert row.status is RowStatus.BROKEN, row.findings
    assert row.findings == ["1 completions matched no request in flight"], row.findings


# --- the kernel clients' target and wire checks ---------------------------------------------


def nvme(power_shim, rxe_config, ordering: Ordering = Ordering.CLIENTS_FIRST):
    res = run_nvme(power_shim.shim, rxe_config, NvmeScenario(
        "standby", ordering, POLICY, NVME_HOLD_MS, NVME_SPEC, start_after_ios=20,
        size_mib=16))
    scen = {"id": f"standby/{ordering.value}/{POLICY}", "transition": "standby",
            "ordering": ordering.value, "policies": [POLICY], "mix": "mixed"}
    (row,) = kernel_rows(scen, res.to_json(), parse_policy(POLICY))
    print(f"nvme-rdma standby {ordering.value}: {res.status}; ledger {res.ledger.target} "
          f"corrupted {res.ledger.corrupted_seqs}; connections {res.connections}; off the "
          f"wire {res.off_wire}; row {row.status.value} {row.findings}")
    return res, row


@pytest.mark.timeout(180)
@pytest.mark.kernel_modules(*NVME_RDMA_MODULES)
def test_a_corrupted_block_on_the_target_makes_the_row_bad(power_shim, rxe_config,
                                                           monkeypatch) -> None:
    """After the I/O, before the target is read back, one byte of the first acknowledged
    write's block is flipped in the target's store (the null_blk disk on the peer side,
    written with O_DIRECT as any writer of the disk would): the read-back finds that write
    corrupted, the invariant fails and the row is bad, naming it, with `bad` 1 in the
    peer columns. The other acknowledged writes are intact."""
    real = NvmetTarget.read_block
    hit: list[int] = []

    def corrupt_then_read(self, index, size):  # the mutation: the store is damaged
        if not hit:
            data = bytearray(real(self, index, size))
            data[size // 2] ^= 0xFF  # a byte of the pattern, past the header
            buf = mmap.mmap(-1, size)
            buf[:] = bytes(data)
            fd = os.open(self.backing_device, os.O_WRONLY | os.O_DIRECT)
            try:
                assert os.pwritev(fd, [buf], index * size) == size
            finally:
                os.close(fd)
            hit.append(index)
        return real(self, index, size)

    monkeypatch.setattr(NvmetTarget, "read_block", corrupt_then_read)
    res, row = nvme(power_shim, rxe_config)
    lg = res.ledger
    assert hit and len(lg.corrupted_seqs) == 1 and not lg.lost_seqs, lg.corrupted_seqs
    (seq,) = lg.corrupted_seqs
    assert next(r for r in res.records if r["seq"] == seq)["block"] == hit[0]
    assert lg.target == {"intact": lg.acknowledged_writes - 1, "corrupted": 1}, lg.target
    assert not lg.invariant_ok and res.status == "bad", res.findings
    assert res.findings == ["1 acknowledged write(s) corrupted"], res.findings
    assert row.status is RowStatus.BAD and row.peer["corrupted"] == 1, row


@pytest.mark.timeout(180)
@pytest.mark.kernel_modules(*NVME_RDMA_MODULES)
def test_a_connection_around_the_wire_makes_the_kernel_row_broken(
        power_shim, rxe_config, monkeypatch) -> None:
    """While the transition runs, an rdma_cm id with both ends on rxe1 (from the peer's
    address to the target's 198.18.0.2:4420, what the nvme host's reconnect makes when its
    route falls through to `lookup local`) is planted by a process of its own: the
    scenario's samples of `rdma -j res show cm_id` see it, its off-wire check names it,
    and the row is broken. The scenario's own connection stays on rxe0."""
    real_run = power_shim.shim.run
    planted: list[dict] = []

    def run_with_a_loopback(request):  # the mutation: a connection that did not cross
        child = JsonChild(python_child("tests.helpers.cm_plant", rxe_config.peer_addr,
                                       rxe_config.peer_addr, "4420"), "cm_plant")
        try:
            planted.append(child.wait_for("ready", PLANT_READY_TIMEOUT_S))
            return real_run(request)
        finally:
            child.stop()
            assert child.wait(PLANT_STOP_TIMEOUT_S) == 0, child.lines

    monkeypatch.setattr(power_shim.shim, "run", run_with_a_loopback)
    res, row = nvme(power_shim, rxe_config, Ordering.HCA_FIRST)
    assert planted, "the loopback was not planted"
    loops = [c for c in res.off_wire if c["dev"] == rxe_config.peer_dev]
    assert loops and {(c["src"], c["dst"]) for c in loops} == {
        (rxe_config.peer_addr, rxe_config.peer_addr)}, res.off_wire
    assert {c["dev"] for c in res.connections if c["src"] == rxe_config.local_addr} == \
        {rxe_config.local_dev}, res.connections
    assert res.status == "broken" and row.status is RowStatus.BROKEN, res.findings
    assert any(f.startswith(f"connection {rxe_config.peer_addr}->{rxe_config.peer_addr} on "
                            f"{rxe_config.peer_dev} (") and "did not cross the wire" in f
               for f in res.findings), res.findings


# --- the route guard, off -----------------------------------------------------------------

GUARD_HOLD_MS = 3000  # long enough for the NFS client to reconnect while rxe0 is away
NFS_SPEC = DriverSpec(count=600, depth=4, rate_per_s=40.0)
NFS_SCENARIO_TIMEOUT_S = 150.0


@pytest.mark.timeout(NFS_SCENARIO_TIMEOUT_S)
@pytest.mark.kernel_modules(*NFS_RDMA_MODULES)
@pytest.mark.parametrize("guard", [False, True], ids=["guard-off", "guard-on"])
def test_the_route_guard_keeps_the_nfs_reconnect_on_the_wire(power_shim, rxe_config,
                                                              guard: bool) -> None:
    """The route guard's negative control: NFS over RDMA (hard mount) under standby
    hca-first with rxe0 away for GUARD_HOLD_MS. Without the guard the client reconnects
    while rxe0 is away, and its route falls through to `lookup local`: the connection is
    rxe1 -> rxe1 from the peer's own address, around the wire (measured once: 12 samples
    of it over the hold, and the server, seeing 198.18.0.2 instead of its client, failed
    163 I/Os with EACCES). The off-wire check names it and the row is broken. With the
    guard (`unreachable` for the peer's address while rxe0 is down) the client has no
    route until rxe0 is back: every connection is rxe0's, from 198.18.0.1."""
    from clients.kernel.nfs_scenario import NfsScenario, run_nfs

    res = run_nfs(power_shim.shim, rxe_config, NfsScenario(
        "standby", Ordering.HCA_FIRST, "nfs-rdma:hard", GUARD_HOLD_MS, NFS_SPEC,
        start_after_ios=20, guard=guard, size_mib=16))
    around = [c for c in res.connections if c["dev"] == rxe_config.peer_dev]
    print(f"NFS, guard {'on' if guard else 'off'}: {res.status}; connections "
          f"{res.connections}; errnos {res.ledger.errnos}; findings {res.findings}")
    if guard:
        assert not around and not res.off_wire, res.connections
        assert {(c["dev"], c["src"]) for c in res.connections} == {
            (rxe_config.local_dev, rxe_config.local_addr)}, res.connections
        assert res.status != "broken", res.findings
        return
    assert around and {(c["src"], c["dst"]) for c in around} == {
        (rxe_config.peer_addr, rxe_config.peer_addr)}, res.connections
    assert "during" in {c["phase"] for c in around}, around  # while rxe0 was away
    assert res.off_wire == around and res.status == "broken", res.findings
    assert any(f.startswith(f"connection {rxe_config.peer_addr}->{rxe_config.peer_addr} on "
                            f"{rxe_config.peer_dev} (during) did not cross the wire")
               for f in res.findings), res.findings

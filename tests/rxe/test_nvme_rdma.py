"""nvme-rdma under the shim, on real rxe: an nvmet-rdma target on rxe1 (null_blk memory
disk), a controller from rxe0's address, O_DIRECT I/O with a ledger, one transition.

Every test asserts the ledger invariant (every I/O has one outcome, every acknowledged
write is intact in the target's store read on the peer side), the outcome measured for
that transition and ordering, that every connection crossed the wire, and that nothing
of ours remains afterwards. Sizes are small (the suite's time): the I/O stops once the
controller settled, so the count is only a cap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clients.kernel.blockio import DriverSpec
from clients.kernel.nvme_hang import HELD_DELETE_TIMEOUT_S
from clients.kernel.nvme_scenario import NvmeResult, NvmeScenario, run_nvme
from clients.kernel.nvmet_target import modprobe
from harness.core.printer import STDOUT
from harness.core.state import StateFile
from harness.system import kernelobjs as ko
from harness.topology.cleanup import remove_kernel_objects
from harness.workload.block_ledger import IoOutcome
from power.plan import Ordering
from tests.helpers.kernel_needs import NVME_RDMA_MODULES

pytestmark = pytest.mark.kernel_modules(*NVME_RDMA_MODULES)

POLICY = "nvme-rdma:ctrl_loss_tmo=30:reconnect_delay=1:fast_io_fail_tmo=0"
SPEC = DriverSpec(count=800, depth=4, rate_per_s=40.0)  # a cap: it stops once settled
START_AFTER_IOS = 20
HOLD_MS = 200
SIZE_MIB = 16
CHILD_READY_TIMEOUT_S = 60.0
# a scenario whose controller holds rxe0's delete waits up to HELD_DELETE_TIMEOUT_S for the
# kernel to let go (then restores the local side): above the suite's 120 s per test
SCENARIO_TIMEOUT_S = HELD_DELETE_TIMEOUT_S + 60.0
HERE = Path(__file__).parent


def scenario(transition: str, ordering: Ordering) -> NvmeScenario:
    return NvmeScenario(transition, ordering, POLICY, HOLD_MS, SPEC,
                        start_after_ios=START_AFTER_IOS, size_mib=SIZE_MIB)


def nothing_of_ours_left() -> None:
    ours = [c for c in ko.nvme_ctrls() if ko.OUR_PREFIX in c.subsysnqn]
    assert not ours, f"nvme controllers of ours left: {ours}"
    for sub in ("nvmet/subsystems", "nullb"):
        d = ko.CONFIGFS / sub
        left = [p.name for p in d.iterdir() if ko.OUR_PREFIX in p.name] if d.is_dir() else []
        assert not left, f"{d}: ours left: {left}"
    kinds = [e["kind"] for e in StateFile.load().created if e["kind"] in ko.KINDS
             and e["kind"] != "configfs_mount"]
    assert not kinds, f"state file still lists {kinds}"


def common(res: NvmeResult) -> None:
    print(f"{res.scenario['transition']} {res.scenario['ordering']}: {res.status} "
          f"outcomes {res.ledger.outcomes} errnos {res.ledger.errnos} detect_ms "
          f"{res.detect_ms} recover_ms {res.recover_ms} settled {res.settled} "
          f"findings {res.findings}")
    if res.hang is not None:
        print("hang:", {k: v for k, v in res.hang.items() if k != "kernel"})
        print("\n".join(res.hang["kernel"]))
    lg = res.ledger
    assert not lg.unaccounted, f"unaccounted I/O: {lg.unaccounted}"
    assert lg.invariant_ok, f"lost {lg.lost_seqs} corrupted {lg.corrupted_seqs}"
    assert lg.acknowledged_writes > 0 and lg.target.get("intact") == lg.acknowledged_writes
    assert lg.ios == len(res.records) and sum(lg.outcomes.values()) == lg.ios
    assert not res.off_wire, f"connections off the wire: {res.off_wire}"
    assert {c["dev"] for c in res.connections} == {"rxe0"}, res.connections
    assert res.status != "broken", res.findings
    nothing_of_ours_left()


def held(res: NvmeResult) -> dict[str, Any]:
    """The row of a scenario whose controller held rxe0's delete: reported, bounded, and
    the local side restored (the fixture checks the topology after the test)."""
    hang = res.hang
    assert hang is not None
    assert res.status == "bad", res.findings
    assert hang["released"] and not hang["restored"], hang  # the kernel let go; restored
    assert hang["held_pids"] and hang["ctrl"] and hang["held_ms"] is not None, hang
    assert res.settled["state"] == "absent", res.settled  # the kernel's delete finished
    return hang


def states_from(res: NvmeResult, t_ns: int) -> list[str]:
    """Our controller's states from t_ns on as the sampler saw them in sysfs (its state at
    t_ns first, then each change), independent of the scenario's own account."""
    ours = {s["ctrl"] for s in res.own.ctrl_states if ko.OUR_PREFIX in s["subsysnqn"]}
    assert len(ours) == 1, res.own.ctrl_states
    mine = [s for s in res.own.ctrl_states if s["ctrl"] in ours]
    at = [s["state"] for s in mine if s["t_ns"] <= t_ns][-1:]
    return at + [s["state"] for s in mine if s["t_ns"] > t_ns]


def step(res: NvmeResult, name: str) -> dict[str, Any]:
    (st,) = [s for s in res.transition["steps"] if s["step"] == name]
    return st


def kernel_lines_after(res: NvmeResult) -> list[str]:
    """The kernel log's nvme lines after the scenario's marker, read again from the ring
    buffer (the kernel's own account, not the scenario's)."""
    from power import kmsg

    after = int(res.kernel["marker"]["after_seq"])
    return [r.message for r in kmsg.read_records() if r.seq > after
            and r.message.startswith("nvme")]


@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_standby_hca_first(power_shim, rxe_config) -> None:
    """Two behaviours were measured, told apart by the controller's states in sysfs after
    the carrier drop (the sampler, not the scenario's account) and checked each against
    the kernel's log; the one that happened is printed; anything else fails:
    - `recovered`: I/O in flight met the downed port, error recovery started (the
      controller left LIVE for resetting/connecting) and released the device, so rxe0's
      removal found nothing to delete: no hold, the controller live again afterwards;
      with fast_io_fail_tmo=0 the I/O issued meanwhile fails with EIO, nothing
      acknowledged is lost;
    - `held`: nothing met the dead port before rxe0 went (measured with an idle
      controller, once in a loaded full-suite run, and in a guard-off run): the controller
      was still LIVE, nvme_rdma_remove_one deleted it ("Removing ctrl"), and the delete's
      shutdown (a Property Set over the downed link) waited out nvme_core's admin_timeout,
      holding rxe0's delete: the row is bad with the hold, the controller gone."""
    res = run_nvme(power_shim.shim, rxe_config, scenario("standby", Ordering.HCA_FIRST))
    common(res)
    lg = res.ledger
    after = states_from(res, step(res, "port-down")["begin_ns"])
    left = next((s for s in after if s != "live"), None)
    # recovery began, then rxe0's removal deleted the controller anyway (seen once, beside
    # a CPU hog, CI 14 of 7 Dec: live, resetting, deleting, absent; the delete held rxe0's
    # for 6.07 s): checked as `held` is
    deleted_later = left in ("resetting", "connecting") and any(
        s.startswith("deleting") for s in after[after.index(left):])
    behaviour = ("recovering-then-deleted" if deleted_later else
                 "recovered" if left in ("resetting", "connecting") else
                 "held" if left is not None and left.startswith("deleting") else None)
    print(f"nvme-rdma standby hca-first: behaviour {behaviour}; states after the carrier "
          f"drop {after}")
    assert behaviour is not None, f"none of the known behaviours: states {after}"
    assert lg.count(IoOutcome.STUCK) == 0, lg.stuck
    if behaviour in ("held", "recovering-then-deleted"):
        hang = held(res)
        assert res.hang is not None and res.status == "bad"
        assert any("Removing ctrl" in line for line in hang["kernel"]), hang["kernel"]
        assert hang["ctrl_state"].startswith("deleting"), hang
        assert set(lg.errnos) <= {"EIO (Input/output error)",
                                  "ENOSPC (No space left on device)",
                                  "short (0 of 4096 bytes)"}, lg.errnos
        return
    assert res.hang is None and res.transition["verdict"] in ("completed", "forced")
    assert "live" in after[after.index(left):], after  # reconnected (the same controller)
    assert res.survived, res.own.ctrl_states
    # measured (fast_io_fail_tmo=0): the carrier drop starts error recovery at once, and
    # the I/O issued from then on fails with EIO; nothing acknowledged is lost
    assert res.detect_ms is not None and res.detect_ms < 1000, res.own.ctrl_states
    assert lg.count(IoOutcome.FAILED_TO_APP) > 0 and set(lg.errnos) == {
        "EIO (Input/output error)"}, lg.errnos
    assert res.status == "clean", res.findings


@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_standby_clients_first(power_shim, rxe_config) -> None:
    res = run_nvme(power_shim.shim, rxe_config, scenario("standby", Ordering.CLIENTS_FIRST))
    common(res)
    lg = res.ledger
    # quiesced, disconnected and reconnected: nothing fails, nothing waits
    assert lg.count(IoOutcome.FAILED_TO_APP) == 0 and lg.count(IoOutcome.STUCK) == 0, \
        res.ledger.errnos
    assert res.survived
    assert [e["event"] for e in res.client_events] == ["paused", "disconnected", "reconnected"]
    assert res.status == "clean", res.findings


@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_surprise_removal(power_shim, rxe_config) -> None:
    res = run_nvme(power_shim.shim, rxe_config,
                   scenario("surprise-removal", Ordering.HCA_FIRST))
    common(res)
    lg = res.ledger
    assert lg.count(IoOutcome.STUCK) == 0, lg.stuck
    # measured: nvme_rdma_remove_one deletes the controller, the namespace goes; writes to
    # the dead block device fail (EIO, then ENOSPC: size 0) and reads return 0 bytes
    assert not res.survived and res.settled["state"] == "absent", res.own.ctrl_states
    assert lg.count(IoOutcome.FAILED_TO_APP) > 0
    assert set(lg.errnos) <= {"EIO (Input/output error)", "ENOSPC (No space left on device)",
                              "short (0 of 4096 bytes)"}, lg.errnos


IDLE = DriverSpec(count=2, depth=1, rate_per_s=0.0)  # two writes, then nothing in flight
ADMIN_TIMEOUT_S = 5  # nvme_core's admin_timeout for that scenario (the default is 60 s)


@pytest.mark.timeout(SCENARIO_TIMEOUT_S)
def test_idle_controller_holds_the_sleep(power_shim, rxe_config) -> None:
    """An idle controller under standby hca-first holds the sleep: nothing of it meets
    the dead port before rxe0 goes, so nvme_rdma_remove_one deletes it while it is LIVE
    and the delete's shutdown (a Property Set over the downed link) waits out nvme_core's
    admin_timeout (lowered to ADMIN_TIMEOUT_S by the policy and put back after; the
    kernel's default is 60 s) before rxe0's delete can go on. No keep-alive
    (keep_alive_tmo=0) can meet the dead port first either. Measured in the guest: 5 of 5
    runs held 5.3-5.5 s (3 with the default keep-alive, 2 without). Before, this test also
    took "not held" for an answer: those runs held too, but a hold that ends within the
    shim's bounds was in no row (the delete reached rxe0's uverbs nodes only after it, so
    the shim saw no veto); the row names it now.

    Evidence: the controller's states in sysfs (LIVE when the delete began, then
    `deleting (no IO)`, then gone), the delete step's own times, the kernel log (our
    controller removed, its Property Set timed out), and the row's finding. Its two I/Os
    finished before the transition: the row is `missed` for I/O, not green."""
    # nvme_core's parameters exist once it is loaded: the host loads nvme-rdma (and so
    # nvme_core) when it connects; this test reads one before that, when run alone
    modprobe("nvme-rdma")
    before = ko.module_param_path("nvme_core.admin_timeout").read_text().strip()
    sc = NvmeScenario("standby", Ordering.HCA_FIRST,
                      f"{POLICY}:admin_timeout={ADMIN_TIMEOUT_S}:keep_alive_tmo=0", HOLD_MS,
                      IDLE, start_after_ios=IDLE.count, size_mib=SIZE_MIB)
    res = run_nvme(power_shim.shim, rxe_config, sc)
    common(res)
    assert ko.module_param_path("nvme_core.admin_timeout").read_text().strip() == before
    assert res.options["admin_timeout"] == ADMIN_TIMEOUT_S
    assert res.options["keep_alive_tmo"] == 0
    delete = step(res, "delete-device")
    held_s = (delete["end_ns"] - delete["begin_ns"]) / 1e9
    after = states_from(res, delete["begin_ns"])
    lines = kernel_lines_after(res)
    print(f"idle controller: delete of rxe0 took {held_s:.2f} s ({delete['detail']}); "
          f"states from its begin {after}; kernel: {lines}")
    assert res.hang is None, res.hang  # within the shim's bounds: no hang to wait out
    assert after[0] == "live" and after[-1] == "absent", after
    first_deleting = next((i for i, st in enumerate(after) if st.startswith("deleting")), None)
    assert first_deleting is not None, f"never deleting: states {after}"
    between = after[1:first_deleting]
    # two behaviours, each with its own evidence: deleted while LIVE (5 of 5 quiet runs),
    # or, beside a CPU hog (CI 17), a command already on the wire met the dead port first
    # ("SEND for CQE ... failed", error recovery begun: resetting) and the removal came
    # during that recovery; the delete is held just the same
    behaviour = "deleted-live" if not between else "recovering-then-deleted"
    print(f"idle controller: behaviour {behaviour}; states {after}")
    if between:
        assert set(between) <= {"resetting", "connecting"}, after
        assert any("starting error recovery" in line for line in lines), lines
    assert ADMIN_TIMEOUT_S <= held_s < ADMIN_TIMEOUT_S + 15, held_s
    assert delete["detail"]["start_s"] >= ADMIN_TIMEOUT_S and not delete["detail"]["veto"]
    assert any("Removing ctrl" in line for line in lines), lines
    assert any("Property Set error" in line for line in lines), lines
    assert res.settled["state"] == "absent" and not res.survived, res.settled
    hold = [f for f in res.findings if "reached its uverbs nodes only" in f]
    assert len(hold) == 1 and "a kernel client's removal held it" in hold[0], res.findings
    assert res.status == "missed" and res.coverage is not None and \
        res.coverage.crossed == 0, (res.status, res.coverage)


_CHILD = """
import sys, time
from clients.kernel.nvme_host import HostConfig, NvmeHost, parse_policy
from clients.kernel.nvmet_target import NvmetTarget, TargetConfig
t = NvmetTarget(TargetConfig(tag="k"))
t.setup()
h = NvmeHost(HostConfig(t.cfg.nqn, "198.18.0.2", 4420, "198.18.0.1",
                        parse_policy("nvme-rdma:fast-fail")))
h.connect()
print("ready", h.block_device, flush=True)
time.sleep(600)
"""


FOREIGN_NQN = "nqn.2026-11.test:foreign"


def _foreign_stack() -> tuple[list[Path], str]:
    """A foreign null_blk, subsystem, namespace, port (4421) and a controller connected to
    it, made by hand as another user of the machine would. Returns the configfs items
    (to remove afterwards, newest first) and the controller's name."""
    nb = ko.NULLB / "foreignb"
    nb.mkdir()
    for attr, val in (("size", "16"), ("memory_backed", "1"), ("power", "1")):
        (nb / attr).write_text(val)
    sub = ko.NVMET / "subsystems" / FOREIGN_NQN
    sub.mkdir()
    (sub / "attr_allow_any_host").write_text("1")
    ns = sub / "namespaces" / "1"
    ns.mkdir()
    dev = Path("/dev", nb.name)  # named after the configfs item (else nullb<index>)
    if not dev.exists():
        dev = Path(f"/dev/nullb{(nb / 'index').read_text().strip()}")
    (ns / "device_path").write_text(str(dev))
    (ns / "enable").write_text("1")
    port = ko.NVMET / "ports" / "77"
    port.mkdir()
    for attr, val in (("addr_trtype", "rdma"), ("addr_adrfam", "ipv4"),
                      ("addr_traddr", "198.18.0.2"), ("addr_trsvcid", "4421")):
        (port / attr).write_text(val)
    link = port / "subsystems" / FOREIGN_NQN
    link.symlink_to(sub)
    fd = os.open("/dev/nvme-fabrics", os.O_RDWR)
    try:
        os.write(fd, f"transport=rdma,traddr=198.18.0.2,trsvcid=4421,nqn={FOREIGN_NQN},"
                     "host_traddr=198.18.0.1".encode())
        reply = os.read(fd, 4096).decode()
    finally:
        os.close(fd)
    ctrl = "nvme" + reply.split("instance=")[1].split(",")[0].strip()
    return [link, port, ns, sub, nb], ctrl


def _remove_foreign(items: list[Path], ctrl: str | None) -> None:
    if ctrl and (ko.SYS_NVME / ctrl).exists():
        ko.delete_ctrl(ctrl)
    for p in items:
        if p.is_symlink():
            p.unlink()
        elif p.is_dir():
            if (p / "enable").exists():
                (p / "enable").write_text("0")
            if (p / "power").exists():
                (p / "power").write_text("0")
            p.rmdir()


def test_cleanup_after_sigkill_leaves_foreign_objects(rxe_topology) -> None:
    """A foreign target and controller exist before; our child is SIGKILLed with its
    target and controller up; cleanup removes exactly ours."""
    from clients.kernel.nvmet_target import ensure_configfs, modprobe

    for mod in ("nvmet", "nvmet-rdma", "nvme-rdma"):
        modprobe(mod)
    if not Path("/sys/module/null_blk").exists():
        modprobe("null_blk", "nr_devices=0")
    ensure_configfs(StateFile.load())
    items: list[Path] = []
    ctrl = None
    child = None
    try:
        items, ctrl = _foreign_stack()
        child = subprocess.Popen([sys.executable, "-P", "-c", _CHILD], stdout=subprocess.PIPE,
                                 text=True, cwd=HERE.parent.parent)
        line = _readline(child)
        assert line.startswith("ready"), line
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert [c for c in ko.nvme_ctrls() if ko.OUR_PREFIX in c.subsysnqn], \
            "our controller should be there after the kill"
        problems = remove_kernel_objects(out=STDOUT)
        assert not problems
        nothing_of_ours_left()
        foreign = {c.name: c.state for c in ko.nvme_ctrls()}
        assert foreign.get(ctrl) == "live", foreign
        assert all(p.exists() or p.is_symlink() for p in items)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait(10)
        _remove_foreign(items, ctrl)


def _readline(child: subprocess.Popen) -> str:
    import select

    end = time.monotonic() + CHILD_READY_TIMEOUT_S
    while time.monotonic() < end:
        r, _, _ = select.select([child.stdout], [], [], 0.5)
        if r:
            return child.stdout.readline().strip()
        if child.poll() is not None:
            return f"child exited {child.returncode}"
    return f"no line within CHILD_READY_TIMEOUT_S={CHILD_READY_TIMEOUT_S:g}s"

"""A delete that waits for a uverbs call in progress, with our disassociate build: the shim
records it as slow (which process, which call, on which file, where the delete sleeps)
and terminates nobody; the negative control, the same moment judged as stock rxe would
be (`disassociates=False`), terminates the holder.

Seen in 200-cycle stress runs (docs/shim-and-fault-models.md, "A slow delete under
disassociate is no veto"): a client destroying its QP slept in rxe's __rxe_cleanup and
the delete waited in ib_uverbs_remove_one -> synchronize_srcu for it. That call cannot be
made to sleep on purpose, so the holder here (tests/helpers/reg_mr_loop.py) is inside
another long call of the same kind: it registers a large MR over and over (ibv_reg_mr
pins every page), sized so that one registration takes at least a second.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator

import pytest

from harness.core import procfs
from harness.core.printer import NULL
from harness.core.proc import python_child
from harness.system.kstacks import process_in_kernel
from harness.topology import lifecycle
from harness.topology.config import Topology, TopologyConfig
from power import veto
from power.plan import OnVeto
from tests.helpers.json_child import JsonChild

pytestmark = pytest.mark.removal("disassociate")

HOLDER = "tests.helpers.reg_mr_loop"
SIZED_TIMEOUT_S = 120.0  # start, open the device, double the MR until a reg takes 1 s
IN_CALL_TIMEOUT_S = 30.0  # until the holder is seen inside its ioctl on the device
FAILED_TIMEOUT_S = 60.0  # from the delete to the holder's failed registration (EIO)
EXIT_TIMEOUT_S = 30.0
FRESH_CALL_S = 0.3  # a `calling` line this recent: the registration has just begun


def holds_uverbs(pid: int) -> bool:
    return any(f.startswith("/dev/infiniband/uverbs")
               for f in (procfs.fd_targets(pid) or {}).values())


def in_reg_call(pid: int) -> bool:
    """Inside its registration: seen in its ioctl on the uverbs file when it sleeps there,
    or running (a thread that is runnable, on a CPU or not, reads as `running` in
    /proc/PID/syscall, with no call: two CI runs saw the page-pinning holder only so, in
    every poll) while it holds the uverbs file and loops over reg/dereg, both ioctls."""
    return any((t.syscall == "ioctl" and t.file.startswith("/dev/infiniband/uverbs"))
               or (t.state == "R" and t.syscall == "running" and holds_uverbs(pid))
               for t in process_in_kernel(pid))


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """This test and the holder it starts share one CPU: when the test (or the shim's
    kernel view, taken in this process) looks, the holder is not on a CPU, so /proc shows
    its system call and kernel stack. A thread running on another CPU reads as `running`
    with no stack: in the TCG guest the holder, pinning pages, was never seen otherwise
    (two fresh-clone CI runs: 1924 and 1532 polls, all `R running`)."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def holder_in_call(cpu: int) -> JsonChild:
    holder = JsonChild(python_child(HOLDER), "reg_mr loop")
    os.sched_setaffinity(holder.pid, {cpu})  # (inherited already: said, not assumed)
    sized = holder.wait_for("sized", SIZED_TIMEOUT_S)
    print(f"one registration of {sized['bytes'] >> 20} MiB took {sized['took_s']} s")
    holder.wait_for("looping", SIZED_TIMEOUT_S)
    deadline = time.monotonic() + IN_CALL_TIMEOUT_S
    seen: dict[str, int] = {}  # what the polls saw the holder in, for the failure message
    while not in_reg_call(holder.pid):
        for t in process_in_kernel(holder.pid):
            key = f"{t.state} {t.syscall} {t.file or '-'}"
            seen[key] = seen.get(key, 0) + 1
        assert time.monotonic() < deadline, \
            f"the holder was never seen inside its ioctl; seen (state call file: polls): {seen}"
        time.sleep(0.01)
    fresh_call(holder)
    return holder


def fresh_call(holder: JsonChild) -> dict:
    """The holder's next `calling` line said at most FRESH_CALL_S ago: its registration
    (as long as the sizing one, over a second) has just begun, so a delete started now
    meets it in its ioctl."""
    deadline = time.monotonic() + IN_CALL_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            rec = holder.inbox.get(timeout=left)
        except queue.Empty:
            break
        if rec is None:
            break
        holder.lines.append(rec)
        if rec.get("event") == "calling" and time.monotonic() - rec["t"] < FRESH_CALL_S:
            return rec
    raise AssertionError(f"the holder began no registration we saw within "
                         f"IN_CALL_TIMEOUT_S={IN_CALL_TIMEOUT_S}: {holder.lines[-5:]}")


@pytest.mark.timeout(600)
def test_a_delete_waiting_for_a_call_is_slow_not_a_veto(rxe_config: TopologyConfig,
                                                        rxe_topology: Topology,
                                                        one_cpu: int) -> None:
    holder = holder_in_call(one_cpu)
    try:
        rep = veto.delete_device(rxe_config.local_dev, OnVeto.FORCE, disassociates=True)
        assert rep.slow and not rep.detected, rep.to_json()
        assert rep.terminated == [] and holder.proc.poll() is None
        assert rep.blocked_s > veto.VETO_DETECT_S
        calls = [c for c in rep.waited_for if c["pid"] == holder.pid]
        threads = rep.kernel_view["holders"].get(str(holder.pid), [])
        print(f"the holder as the shim saw it: {threads}")
        if calls:  # asleep in its call: named in it, with the file and where
            (call,) = calls
            assert call["syscall"] == "ioctl", call
            assert call["file"].startswith("/dev/infiniband/uverbs"), call
            assert "ib_uverbs_ioctl [ib_uverbs]" in call["stack"], call["stack"]
        else:  # pinning pages: runnable, so /proc gives no call (see in_reg_call), and the
            # shim says it saw no holder in a call rather than guess
            assert threads and all(t["state"] == "R" and t["syscall"] == "running"
                                   for t in threads), threads
            assert "with no holder in a call on the device" in rep.reason, rep.reason
        delete_stack = rep.kernel_view["delete"][0]["stack"]
        assert "ib_uverbs_remove_one [ib_uverbs]" in delete_stack, delete_stack
        print(rep.reason)
        failed = holder.wait_for("failed", FAILED_TIMEOUT_S)  # its next call: disassociated
        assert failed["name"] == "EIO", failed
        holder.close_stdin()
        assert holder.wait(EXIT_TIMEOUT_S) == 0
    finally:
        holder.stop()
        assert not lifecycle.restore_local_side(rxe_config, out=NULL)


@pytest.mark.timeout(600)
def test_the_same_moment_judged_as_stock_rxe_terminates_the_holder(
        rxe_config: TopologyConfig, rxe_topology: Topology, one_cpu: int) -> None:
    """Negative control: with `disassociates=False` (what the shim assumed of every module
    before) the holder in its call is a veto and --on-veto force terminates it."""
    holder = holder_in_call(one_cpu)
    try:
        rep = veto.delete_device(rxe_config.local_dev, OnVeto.FORCE, disassociates=False)
        assert rep.detected and not rep.slow, rep.to_json()
        assert [t["pid"] for t in rep.terminated] == [holder.pid]
        assert holder.proc.poll() is not None
    finally:
        holder.stop()
        assert not lifecycle.restore_local_side(rxe_config, out=NULL)

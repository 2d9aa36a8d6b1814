"""A delete that is still running at VETO_DETECT_S (power/veto.py): the kernel's view it
records (harness/system/kstacks.py) and what the shim does with it. Under a module that
disassociates, holders are no veto: the delete waits for the call in progress and
nobody is terminated; under stock rxe the holder is terminated (the negative control).

The kernel's view is checked on the one recorded in the guest (cycle 132 of a 200-cycle
run: tests/data/stress-disassociate-repro.json), and live on this host: a "delete" that
is a child process, and a "holder" blocked in read() on a FIFO that stands in for its
uverbs file (the parsing is the same: /proc/PID/task/TID/{syscall,stack,wchan} and the
fd's link)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.core.procfs import parse_stack
from harness.system import kstacks
from harness.system.holders import Holder
from harness.system.kstacks import ThreadInKernel, parse_syscall
from power import veto
from power.plan import OnVeto


def test_parse_stack_and_syscall() -> None:
    text = ("[<0>] __rxe_cleanup+0x13c/0x1f0 [rdma_rxe]\n"
            "[<0>] rxe_destroy_qp+0x3a/0x80 [rdma_rxe]\n"
            "[<0>] __x64_sys_ioctl+0x8d/0xd0\n")
    assert parse_stack(text) == ("__rxe_cleanup [rdma_rxe]", "rxe_destroy_qp [rdma_rxe]",
                                 "__x64_sys_ioctl")
    assert parse_syscall("16 0x6 0xc0181b01 0x7ffd 0x0 0x0 0x0 0x7ffd 0x7f", "x86_64") == \
        ("ioctl", 6)
    assert parse_syscall("running", "x86_64") == ("running", None)
    assert parse_syscall("-1 0x7ffd 0x7f", "x86_64") == ("-", None)
    assert parse_syscall("999 0x1", "x86_64") == ("syscall 999", None)
    assert parse_syscall("16 0x6", "aarch64") == ("syscall 16", None)  # numbers differ there


def test_the_recorded_blocked_delete_names_the_holders_call(data_dir: Path) -> None:
    """Recorded (guest, our rdma_rxe, cycle 132): the delete sleeps in synchronize_srcu of
    ib_uverbs_remove_one; the holder (graceful-2) is in ioctl on uverbs0, rxe's DESTROY_QP
    waiting in __rxe_cleanup for the QP's last reference."""
    v = json.loads((data_dir / "stress-disassociate-repro.json").read_text())["veto_cycle_132"]
    holders = [Holder(h["pid"], h["cmdline"], tuple(h["files"])) for h in v["holders"]]
    calls = veto.calls_in_progress(v["kernel_view"], holders)
    assert [(c["pid"], c["syscall"], c["file"], c["stack"][:2]) for c in calls] == [
        (338, "ioctl", "/dev/infiniband/uverbs0 (deleted)",
         ["__rxe_cleanup [rdma_rxe]", "rxe_destroy_qp [rdma_rxe]"])]
    report = veto.VetoReport(blocked_s=2.789, kernel_view=v["kernel_view"], waited_for=calls)
    text = veto.describe_wait(report, "rxe0")
    assert text.startswith("the delete of rxe0 waited 2.789 s in the kernel (__synchronize_srcu"
                           " <- uverbs_disassociate_api_pre [ib_uverbs] <- "
                           "ib_uverbs_remove_one [ib_uverbs]")
    assert ("for a command in progress: pid 338 (python -m clients.worker (forked from pid "
            "251) --fd 19) ioctl on /dev/infiniband/uverbs0 (deleted) in __rxe_cleanup "
            "[rdma_rxe] <- rxe_destroy_qp [rdma_rxe]") in text
    # not a holder in a call: a holder's thread elsewhere (an epoll_wait) is not named
    idle = {**v["kernel_view"], "holders": {"338": [{**v["kernel_view"]["holders"]["338"][0],
                                                       "syscall": "epoll_wait", "fd": None,
                                                       "file": ""}]}}
    assert veto.calls_in_progress(idle, holders) == []


@pytest.fixture
def blocked_holder(tmp_path: Path) -> Any:
    """A process blocked in read() on a FIFO (its 'uverbs file'), and the FIFO's path."""
    fifo = tmp_path / "uverbs-stand-in"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-P", "-c",
                             f"import os; fd = os.open({str(fifo)!r}, os.O_RDONLY | "
                             "os.O_NONBLOCK); os.set_blocking(fd, True); print('in', "
                             "flush=True); os.read(fd, 1)"], stdout=subprocess.PIPE, text=True)
    wfd = os.open(fifo, os.O_WRONLY)  # a writer that never writes: the read blocks
    assert proc.stdout is not None and proc.stdout.readline().strip() == "in"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
            t.syscall == "read" for t in kstacks.process_in_kernel(proc.pid)):
        time.sleep(0.01)
    yield proc, str(fifo)
    proc.kill()
    proc.wait()
    os.close(wfd)


def fake_delete(monkeypatch: pytest.MonkeyPatch, holder_pid: int, file: str,
                delete_s: float) -> None:
    """`rdma link delete` is a child that takes `delete_s`; the device's 'uverbs file' is
    the FIFO the holder reads."""
    monkeypatch.setattr(veto, "uverbs_files", lambda dev: {file})
    monkeypatch.setattr(veto, "start_rdma_link_delete", lambda dev: subprocess.Popen(
        ["sleep", str(delete_s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    monkeypatch.setattr(veto, "find_holders", lambda dev, files=None: [
        Holder(holder_pid, "stand-in client", (file,), kstacks_start(holder_pid))])


def kstacks_start(pid: int) -> float | None:
    from harness.core.state import process_start
    return process_start(pid)


def test_under_disassociate_a_slow_delete_waits_and_terminates_nobody(
        monkeypatch: pytest.MonkeyPatch, blocked_holder: Any) -> None:
    proc, fifo = blocked_holder
    fake_delete(monkeypatch, proc.pid, fifo, veto.VETO_DETECT_S + 0.7)
    notes: list[str] = []
    rep = veto.delete_device("rxe0", OnVeto.FORCE, note=lambda w, **d: notes.append(w),
                             disassociates=True)
    assert rep.slow and not rep.detected and rep.terminated == [] and proc.poll() is None
    assert rep.blocked_s >= 0.7
    (call,) = rep.waited_for
    assert (call["pid"], call["syscall"], call["file"]) == (proc.pid, "read", fifo)
    assert f"pid {proc.pid} (stand-in client) read on {fifo}" in rep.reason
    assert rep.reason.endswith("nothing terminated") and notes[-1] == rep.reason
    threads = rep.kernel_view["holders"][str(proc.pid)]
    assert ThreadInKernel.from_json(threads[0]).syscall == "read"


def test_under_stock_rxe_the_same_holder_is_terminated(monkeypatch: pytest.MonkeyPatch,
                                                      blocked_holder: Any) -> None:
    """Negative control: without disassociate the holder is a veto and --on-veto force
    terminates it (SIGTERM: its read() is interruptible)."""
    proc, fifo = blocked_holder
    fake_delete(monkeypatch, proc.pid, fifo, veto.VETO_DETECT_S + 0.7)
    rep = veto.delete_device("rxe0", OnVeto.FORCE, disassociates=False)
    assert rep.detected and not rep.slow
    assert [(t["pid"], t["how"]) for t in rep.terminated] == [(proc.pid, "SIGTERM")]
    assert proc.wait(5) == -15

"""The one /proc reader (harness/core/procfs.py) on recorded /proc text (tests/data/proc/,
taken from a Linux 6.x host: a process, a kernel thread, a zombie, a comm made to look
like more fields, a thread's kernel stack and system call) and on /proc trees built in a
temporary folder: every reader gives a typed result, None for what went away, or a
ProcError naming the file, and nothing else, whatever the text."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from harness.core import procfs
from harness.core.errors import ProcError, ProcFormatError, ProcUnreadable
from harness.core.procfs import ProcStat, SyscallLine
from harness.system.holders import Holder, find_holders
from harness.system.kstacks import blocked_tasks, process_in_kernel, thread_in_kernel
from harness.system.nfsobjs import processes_named

DATA = Path(__file__).resolve().parents[2] / "data" / "proc"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


# --- stat ---------------------------------------------------------------------------------------

def test_stat_of_a_process() -> None:
    st = procfs.parse_stat(recorded("stat-cat.txt"))
    assert st == ProcStat(10694, "cat", "R", 10691, 10691, 1240575, 140722677127875,
                          140722677127895)
    assert not st.gone


def test_stat_of_a_kernel_thread_and_a_zombie() -> None:
    kt = procfs.parse_stat(recorded("stat-kthreadd.txt"))
    assert (kt.pid, kt.comm, kt.state, kt.ppid, kt.start_ticks) == (2, "kthreadd", "S", 0, 25)
    assert (kt.arg_start, kt.arg_end) == (0, 0)  # no user argv
    zombie = procfs.parse_stat(recorded("stat-zombie.txt"))
    assert zombie.state == "Z" and zombie.gone


def test_a_comm_that_looks_like_fields_stays_the_comm() -> None:
    """The comm `x) Z 1 (y` (set through /proc/self/comm): a parser splitting at the first
    ')' would read state Z and parent 1."""
    st = procfs.parse_stat(recorded("stat-comm-parens.txt"))
    assert st.comm == recorded("comm-parens.txt").rstrip("\n") == "x) Z 1 (y"
    assert (st.pid, st.state, st.ppid, st.pgrp) == (10779, "R", 10777, 10777)


def test_stat_of_an_old_kernel_has_no_argv_area() -> None:
    fields = recorded("stat-cat.txt").split()
    st = procfs.parse_stat(" ".join(fields[:44]))  # the fields before arg_start (3.5+)
    assert st.start_ticks == 1240575 and st.arg_start is None and st.arg_end is None


@pytest.mark.parametrize(("text", "needle"), [
    ("", "is not `PID (COMM) STATE"),
    ("10694", "is not `PID (COMM) STATE"),
    ("10694 (cat) R 10691", "20 fields after the comm"),
    ("10694 (cat)", "20 fields after the comm"),
    (recorded("stat-cat.txt")[:70], "20 fields after the comm"),  # cut short
    (recorded("stat-cat.txt").replace(" R 10691 ", " R parent "), "ppid 'parent'"),
    (recorded("stat-cat.txt").replace(" R 10691 ", " R 10_691 "), "ppid '10_691'"),
    (recorded("stat-cat.txt").replace(" R 10691 ", " R +10691 "), "ppid '+10691'"),
    (recorded("stat-cat.txt").replace("10694 (", "x (", 1), "pid 'x'"),
    ("cat) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "is not `PID (COMM)"),
])
def test_a_malformed_stat_is_a_format_error_naming_the_file(text: str, needle: str) -> None:
    with pytest.raises(ProcFormatError, match=r"^/proc/9/stat: ") as exc:
        procfs.parse_stat(text, Path("/proc/9/stat"))
    assert needle in exc.value.problem
    assert isinstance(exc.value, ProcError) and exc.value.fix


def test_a_comm_with_a_newline() -> None:
    line = recorded("stat-cat.txt").replace("(cat)", "(a\nb) R)", 1)
    st = procfs.parse_stat(line)
    assert (st.comm, st.state, st.ppid) == ("a\nb) R", "R", 10691)


@settings(max_examples=300, deadline=None)
@given(hs.text(max_size=400) | hs.lists(hs.sampled_from(
    ["1", "-1", "(", ")", " ", "x", "0x1f", "R", "\n", "12 (a) S"]), max_size=80).map("".join))
def test_any_text_is_a_stat_or_a_format_error(text: str) -> None:
    try:
        stat = procfs.parse_stat(text)
    except ProcFormatError:
        return
    assert isinstance(stat.pid, int) and isinstance(stat.start_ticks, int)


@settings(max_examples=300, deadline=None)
@given(hs.text(max_size=200))
def test_any_text_is_a_syscall_line_or_a_format_error(text: str) -> None:
    try:
        line = procfs.parse_syscall(text)
    except ProcFormatError:
        return
    assert line.running or line.nr is None or all(isinstance(a, int) for a in line.args)


# --- syscall and stack ------------------------------------------------------------------------

def test_syscall_lines() -> None:
    assert procfs.parse_syscall(recorded("syscall-read.txt")) == SyscallLine(
        False, 0, (3, 0x7ff60ef7a000, 0x20000, 0x7ff60f00cb60, 0xffffffff, 0))
    assert procfs.parse_syscall("running\n") == SyscallLine(True, None, ())
    assert procfs.parse_syscall("-1 0x7ffd 0x7f") == SyscallLine(False, None, ())
    for bad in ("", "ioctl 0x3", "16 0xzz", "16 3-"):
        with pytest.raises(ProcFormatError):
            procfs.parse_syscall(bad)


def test_stack_lines() -> None:
    assert procfs.parse_stack(recorded("stack-wait.txt"))[:2] == (
        "poll_schedule_timeout.constprop.0", "do_select")
    assert procfs.parse_stack("[<0>] ib_uverbs_remove_one+0x4f/0xb0 [ib_uverbs]\n\ngarbage\n"
                              ) == ("ib_uverbs_remove_one [ib_uverbs]",)


# --- readers on a /proc tree -----------------------------------------------------------------

def fake_proc(root: Path, pid: int = 4242, stat: str | None = None) -> Path:
    """A /proc with one process of one thread, an fd on a deleted uverbs node and a socket."""
    base = root / str(pid)
    task = base / "task" / str(pid)
    task.mkdir(parents=True)
    (base / "fd").mkdir()
    text = stat if stat is not None else recorded("stat-cat.txt").replace("10694", str(pid), 1)
    (base / "stat").write_text(text)
    (task / "stat").write_text(text)
    (base / "cmdline").write_bytes(b"python3\0-P\0caf\xe9\0")
    (base / "comm").write_text("python3\n")
    (task / "comm").write_text("worker\n")
    (task / "wchan").write_text("do_select")
    (task / "stack").write_text(recorded("stack-wait.txt"))
    (task / "syscall").write_text(recorded("syscall-read.txt"))
    os.symlink("/dev/infiniband/uverbs0 (deleted)", base / "fd" / "3")
    os.symlink("socket:[4711]", base / "fd" / "4")
    for name in ("self", "sys", "٣"):  # not processes (the last: a non-ASCII digit)
        (root / name).mkdir()
    return root


def test_readers_on_a_tree(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    assert procfs.pids(proc) == [4242]
    assert procfs.tids(4242, proc) == [4242]
    assert procfs.read_stat(4242, proc).pid == 4242  # type: ignore[union-attr]
    assert procfs.read_task_stat(4242, 4242, proc).state == "R"  # type: ignore[union-attr]
    assert procfs.read_cmdline(4242, proc) == ("python3", "-P", "caf\ufffd")
    assert procfs.read_comm(4242, proc) == "python3"
    assert procfs.read_comm(4242, proc, tid=4242) == "worker"
    assert procfs.fd_targets(4242, proc) == {3: "/dev/infiniband/uverbs0 (deleted)",
                                             4: "socket:[4711]"}
    assert procfs.fd_target(4242, 4, proc) == "socket:[4711]"
    assert procfs.read_wchan(4242, 4242, proc) == "do_select"
    assert procfs.read_kernel_stack(4242, 4242, proc)[-1] == (  # type: ignore[index]
        "entry_SYSCALL_64_after_hwframe")
    assert procfs.read_syscall(4242, 4242, proc).nr == 0  # type: ignore[union-attr]


def test_what_went_away_reads_as_none(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    gone = [procfs.read_stat(7, proc), procfs.read_task_stat(4242, 7, proc),
            procfs.read_cmdline(7, proc), procfs.read_comm(7, proc), procfs.fd_targets(7, proc),
            procfs.fd_target(4242, 99, proc), procfs.tids(7, proc),
            procfs.read_wchan(4242, 7, proc), procfs.read_kernel_stack(4242, 7, proc),
            procfs.read_syscall(4242, 7, proc), procfs.read_stable(7, lambda: 1, proc)]
    assert gone == [None] * len(gone)
    assert procfs.pids(tmp_path / "no-proc") == []


def test_a_file_there_but_unreadable_is_an_error_with_its_errno(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    (proc / "4242" / "cmdline").unlink()
    (proc / "4242" / "cmdline").mkdir()  # EISDIR: neither gone nor readable
    with pytest.raises(ProcUnreadable) as exc:
        procfs.read_cmdline(4242, proc)
    assert exc.value.errno == errno.EISDIR and os.strerror(errno.EISDIR) in str(exc.value)
    assert "4242/cmdline" in exc.value.problem and isinstance(exc.value, ProcError)


def test_an_fd_name_that_is_not_a_number_is_a_format_error(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    os.symlink("/x", proc / "4242" / "fd" / "3a")
    with pytest.raises(ProcFormatError, match="fd '3a' is not a number"):
        procfs.fd_targets(4242, proc)


def test_read_stable_sees_a_reused_pid_and_a_zombie(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    stat = proc / "4242" / "stat"
    assert procfs.read_stable(4242, lambda: "fds", proc) == (1240575, "fds")

    def reused() -> str:  # the process ends and another takes its pid while we read
        stat.write_text(stat.read_text().replace(" 1240575 ", " 1299999 "))
        return "fds of the old one"

    assert procfs.read_stable(4242, reused, proc) is None

    def went() -> str:
        stat.unlink()
        return "half"

    assert procfs.read_stable(4242, went, proc) is None
    zombie = fake_proc(tmp_path / "z", 10739, recorded("stat-zombie.txt"))
    assert procfs.read_stable(10739, lambda: 1, zombie) is None


# --- the real /proc ---------------------------------------------------------------------------

def test_this_process_as_the_kernel_tells_it() -> None:
    st = procfs.read_stat(os.getpid())
    assert st is not None and st == procfs.read_stat("self")
    assert (st.pid, st.ppid, st.pgrp) == (os.getpid(), os.getppid(), os.getpgrp())
    assert st.arg_start is not None and st.arg_end is not None and st.arg_end > st.arg_start
    assert procfs.read_cmdline("self") == tuple(procfs.read_cmdline(os.getpid()) or ())
    r, w = os.pipe()
    try:
        targets = procfs.fd_targets("self")
        assert targets is not None and targets[r].startswith("pipe:[")
        assert targets[r] == targets[w] == procfs.fd_target(os.getpid(), w)
    finally:
        os.close(r)
        os.close(w)
    assert os.getpid() in procfs.tids(os.getpid())  # type: ignore[operator]


def test_a_reaped_child_is_gone() -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True, timeout=30)
    pid = int(child.stdout)
    # the pid could be taken again by now only after the kernel wrapped pid_max
    assert procfs.read_stat(pid) is None and procfs.fd_targets(pid) is None


# --- its callers on a /proc tree --------------------------------------------------------------

def test_holders_found_through_the_reader(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    assert find_holders("rxe0", files={"/dev/infiniband/uverbs0"}, proc=proc) == [
        Holder(4242, "python3 -P caf\ufffd", ("/dev/infiniband/uverbs0",), 1240575.0)]
    assert find_holders("rxe0", files={"/dev/infiniband/uverbs1"}, proc=proc) == []
    (proc / "4242" / "stat").unlink()  # went between its fds and its identity: no start
    assert find_holders("rxe0", files={"/dev/infiniband/uverbs0"}, proc=proc) == [
        Holder(4242, "", ("/dev/infiniband/uverbs0",), None)]
    assert processes_named("python3", proc) == [4242]
    assert processes_named("rpc.mountd", proc) == []


def test_a_thread_in_the_kernel_through_the_reader(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    t = thread_in_kernel(4242, 4242, proc, arch="x86_64")
    assert (t.comm, t.state, t.syscall, t.fd, t.file, t.wchan) == (
        "cat", "R", "read", 3, "/dev/infiniband/uverbs0 (deleted)", "do_select")
    assert t.stack[0] == "poll_schedule_timeout.constprop.0"
    assert blocked_tasks(proc) == []
    task_stat = proc / "4242" / "task" / "4242" / "stat"
    task_stat.write_text(task_stat.read_text().replace(" R ", " D ", 1))
    assert [(b["pid"], b["tid"], b["state"]) for b in blocked_tasks(proc)] == [(4242, 4242, "D")]
    task_stat.write_text("4242 (cat")  # cut short: shown as unknown, not a crash
    (proc / "4242" / "task" / "4242" / "syscall").write_text("16 0xnothex")
    t = thread_in_kernel(4242, 4242, proc, arch="x86_64")
    assert (t.state, t.comm, t.syscall, t.fd) == ("?", "", "?", None)
    assert process_in_kernel(7, proc) == [] and blocked_tasks(proc) == []

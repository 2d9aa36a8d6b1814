"""Unit tests for harness.vm: pure logic only, no VM boot, no network, any host."""

from __future__ import annotations

import json
import shlex
import struct
import sys
import time
from pathlib import Path

import pytest

from harness.core.errors import NoRxe, SettingError
from harness.vm import accel as vm_accel
from harness.vm import command_line as vm_command_line
from harness.vm import kernel as vm_kernel
from harness.vm import process as vm_process
from harness.vm import runner as vm_runner
from harness.vm import tools as vm_tools

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_vm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own RXE_POWER_VM_* settings must not leak into these tests."""
    monkeypatch.delenv(vm_kernel.KERNEL_ENV, raising=False)
    monkeypatch.delenv(vm_accel.ACCEL_ENV, raising=False)


def make_tree(tmp_path: Path, kernels: dict[str, str | None]) -> tuple[Path, Path]:
    """A fake /boot + /lib/modules. kernels: version -> rxe module file name or None."""
    boot = tmp_path / "boot"
    mods = tmp_path / "lib" / "modules"
    boot.mkdir(parents=True)
    for version, rxe_name in kernels.items():
        (boot / f"vmlinuz-{version}").write_bytes(b"not really a kernel")
        base = mods / version / "kernel" / "drivers"
        (base / "net").mkdir(parents=True)
        (base / "net" / "veth.ko").write_bytes(b"")
        if rxe_name is not None:
            (base / "infiniband" / "sw" / "rxe").mkdir(parents=True)
            (base / "infiniband" / "sw" / "rxe" / rxe_name).write_bytes(b"")
    return boot, mods


def kernel(tmp_path: Path, version: str = "6.1.0-56-amd64") -> vm_kernel.GuestKernel:
    return vm_kernel.GuestKernel(version, tmp_path / f"vmlinuz-{version}", tmp_path / version)


def request(tmp_path: Path, command: list[str], **kw: object) -> vm_runner.VmRequest:
    return vm_runner.VmRequest(
        command=command,
        rw_dirs=[tmp_path / "rw1", tmp_path / "rw two"],
        log_path=tmp_path / "log.txt",
        cwd=tmp_path / "work dir",
        **kw,  # type: ignore[arg-type]
    )


def parse_exec(argv: list[str]) -> list[str]:
    """The words of the guest shell command as the guest's sh would split them."""
    return shlex.split(argv[argv.index("--exec") + 1])


# ---------------------------------------------------------------------------
# version sort
# ---------------------------------------------------------------------------


def test_natural_version_sort_compares_numbers_as_numbers() -> None:
    got = vm_kernel.sort_versions(
        ["6.10.0-1-amd64", "6.1.0-9-amd64", "6.9.2", "6.1.0-10-amd64", "5.15.0-100-generic"]
    )
    assert got == [
        "5.15.0-100-generic",
        "6.1.0-9-amd64",
        "6.1.0-10-amd64",
        "6.9.2",
        "6.10.0-1-amd64",
    ]


def test_natural_version_key_mixed_text_and_digits_is_total() -> None:
    # would raise TypeError if ints and strs were compared directly
    got = vm_kernel.sort_versions(["6.1.0-rc1", "6.1.0-1", "6.1.0", "6.1.0-0"])
    assert sorted(got) == sorted(["6.1.0-rc1", "6.1.0-1", "6.1.0", "6.1.0-0"])
    assert got.index("6.1.0") < got.index("6.1.0-0") < got.index("6.1.0-1")


# ---------------------------------------------------------------------------
# find_guest_kernel
# ---------------------------------------------------------------------------


def test_find_guest_kernel_picks_newest_with_rxe(tmp_path: Path) -> None:
    boot, mods = make_tree(
        tmp_path,
        {
            "6.1.0-9-amd64": "rdma_rxe.ko",
            "6.1.0-10-amd64": "rdma_rxe.ko.xz",  # newest with rxe (10 > 9 naturally)
            "6.12.0-1-amd64": None,  # newer, but no rdma_rxe: ignored
        },
    )
    got = vm_kernel.find_guest_kernel(boot, mods)
    assert got == vm_kernel.GuestKernel(
        "6.1.0-10-amd64", boot / "vmlinuz-6.1.0-10-amd64", mods / "6.1.0-10-amd64"
    )


def test_find_rxe_module_any_compression_anywhere(tmp_path: Path) -> None:
    odd = tmp_path / "7.0" / "updates" / "dkms"
    odd.mkdir(parents=True)
    (odd / "rdma_rxe.ko.zst").write_bytes(b"")
    assert vm_kernel.find_rxe_module(tmp_path / "7.0") == odd / "rdma_rxe.ko.zst"
    (tmp_path / "7.1").mkdir()
    (tmp_path / "7.1" / "rdma_rxe.ko.bak").write_bytes(b"")
    assert vm_kernel.find_rxe_module(tmp_path / "7.1") is None
    assert vm_kernel.find_rxe_module(tmp_path / "missing") is None


def test_find_guest_kernel_none_with_rxe_names_the_fix(tmp_path: Path) -> None:
    boot, mods = make_tree(tmp_path, {"6.12.0-1-amd64": None, "6.8.0-45-generic": None})
    with pytest.raises(NoRxe) as info:
        vm_kernel.find_guest_kernel(boot, mods)
    msg = str(info.value)
    assert "apt-get install linux-image-amd64" in msg
    assert "linux-modules-extra-6.12.0-1-amd64" in msg  # the newest one, by name
    assert "6.8.0-45-generic" in msg  # says what it checked


def test_find_guest_kernel_empty_boot(tmp_path: Path) -> None:
    boot, mods = make_tree(tmp_path, {})
    with pytest.raises(NoRxe, match="apt-get install linux-image-amd64"):
        vm_kernel.find_guest_kernel(boot, mods)


def test_find_guest_kernel_override_wins_and_is_validated(tmp_path: Path) -> None:
    boot, mods = make_tree(tmp_path, {"6.1.0-9-amd64": "rdma_rxe.ko", "6.1.0-10-amd64": None})
    older = boot / "vmlinuz-6.1.0-9-amd64"
    assert vm_kernel.find_guest_kernel(boot, mods, override=str(older)).vmlinuz == older

    with pytest.raises(NoRxe, match="no rdma_rxe module"):
        vm_kernel.find_guest_kernel(boot, mods, override=str(boot / "vmlinuz-6.1.0-10-amd64"))
    with pytest.raises(SettingError, match="no such file"):
        vm_kernel.find_guest_kernel(boot, mods, override=str(boot / "vmlinuz-nope"))


def test_find_guest_kernel_reads_override_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot, mods = make_tree(tmp_path, {"6.1.0-9-amd64": "rdma_rxe.ko"})
    monkeypatch.setenv(vm_kernel.KERNEL_ENV, str(tmp_path / "gone"))
    with pytest.raises(SettingError, match=vm_kernel.KERNEL_ENV):
        vm_kernel.find_guest_kernel(boot, mods)


def test_read_bzimage_version_from_setup_header(tmp_path: Path) -> None:
    img = bytearray(0x400)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x20E, 0x100)  # version string at 0x100 + 0x200
    text = b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP\0"
    img[0x300 : 0x300 + len(text)] = text
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(img))
    assert vm_kernel.read_bzimage_version(path) == "6.1.0-56-amd64"
    path.write_bytes(b"\0" * 0x400)
    assert vm_kernel.read_bzimage_version(path) is None


# ---------------------------------------------------------------------------
# build_vng_argv
# ---------------------------------------------------------------------------


def test_build_vng_argv_tcg(tmp_path: Path) -> None:
    req = request(tmp_path, ["true"], cpus=3, memory="1G")
    k = kernel(tmp_path)
    argv = vm_runner.build_vng_argv(req, k, "tcg", "/venv/bin/vng")
    assert argv[:4] == ["/venv/bin/vng", "-r", str(k.vmlinuz), "--disable-kvm"]
    assert argv[argv.index("--cpus") + 1] == "3"
    assert argv[argv.index("--memory") + 1] == "1G"
    rw = [argv[i + 1] for i, a in enumerate(argv) if a == "--rwdir"]
    assert rw == [str(tmp_path / "rw1"), str(tmp_path / "rw two")]
    assert argv[-2] == "--exec"


def test_kernel_console_goes_into_the_log_and_stays_on_through_sleep(tmp_path: Path) -> None:
    """--kernel-console: vng shows the kernel's ttyS0 console (--verbose) and the kernel
    keeps it on while devices sleep (no_console_suspend); without it, neither."""
    req = vm_command_line.request_from_argv(["--kernel-console", "--", "true"], tmp_path)
    assert req.kernel_console
    argv = vm_runner.build_vng_argv(req, kernel(tmp_path), "tcg", "/v/vng")
    assert "--verbose" in argv and argv[argv.index("--append") + 1] == "no_console_suspend"
    plain = vm_runner.build_vng_argv(request(tmp_path, ["true"]), kernel(tmp_path), "tcg",
                                     "/v/vng")
    assert "--verbose" not in plain and "--append" not in plain


def test_build_vng_argv_kvm_has_no_disable_kvm(tmp_path: Path) -> None:
    argv = vm_runner.build_vng_argv(request(tmp_path, ["true"]), kernel(tmp_path), "kvm", "/v/vng")
    assert "--disable-kvm" not in argv
    with pytest.raises(SettingError):
        vm_runner.build_vng_argv(request(tmp_path, ["true"]), kernel(tmp_path), "hvf", "/v/vng")


def test_build_vng_argv_quoting_survives_shlex(tmp_path: Path) -> None:
    cmd = ["sh", "-c", """echo "it's a $HOME `x`" ; exit 3""", "arg with  spaces", ""]
    req = request(tmp_path, cmd, env={"RXE_POWER_MODE": "native", "ODD": "a b'c\"d $x"})
    words = parse_exec(vm_runner.build_vng_argv(req, kernel(tmp_path), "tcg", "/venv/bin/vng"))
    assert words[:4] == ["cd", str(tmp_path / "work dir"), "&&", "env"]
    tail = vm_runner.EXIT_MARK_WORD_COUNT  # then the exit mark (its tag with this boot's token)
    assert words[-tail:] == [";", "rc=$?", ";", "printf", "%s%s\\n",
                             vm_runner.exit_tag(req.exit_token), "$rc", ">&2", ";", "exit",
                             "$rc"]
    assert words[-tail - len(cmd):-tail] == cmd
    assigns = words[4:-tail - len(cmd)]
    assert assigns == [
        f"PATH=/venv/bin:{vm_runner.GUEST_SYSTEM_PATH}",
        "PYTHONUNBUFFERED=1",  # the guest's output streams line by line
        "RXE_POWER_MODE=native",
        "ODD=a b'c\"d $x",
    ]


def test_build_vng_argv_rejects_bad_env_name(tmp_path: Path) -> None:
    req = request(tmp_path, ["true"], env={"1BAD; rm -rf /": "x"})
    with pytest.raises(SettingError, match="not a shell identifier"):
        vm_runner.build_vng_argv(req, kernel(tmp_path), "tcg", "/v/vng")


def test_request_from_argv_defaults_and_dashdash(tmp_path: Path) -> None:
    req = vm_command_line.request_from_argv(
        ["--timeout-s", "8", "--", "sh", "-c", "a b; exit 3"], tmp_path
    )
    assert req.command == ["sh", "-c", "a b; exit 3"]
    assert req.timeout_s == 8.0
    assert req.rw_dirs == [tmp_path]
    assert req.log_path == tmp_path / "results" / "vm-console.log"
    with pytest.raises(SystemExit):
        vm_command_line.request_from_argv(["--timeout-s", "0", "--", "true"], tmp_path)


def test_vm_result_to_json_is_json(tmp_path: Path) -> None:
    res = vm_runner.VmResult(
        3, "tcg", "6.1.0-56-amd64", 17.25, False, tmp_path / "l", ["vng", "-r"]
    )
    data = json.loads(json.dumps(res.to_json()))
    assert data["exit_code"] == 3 and data["log_path"] == str(tmp_path / "l")


# ---------------------------------------------------------------------------
# static busybox check (vng's rule: an ELF without a program interpreter)
# ---------------------------------------------------------------------------


def elf64(phdr_types: list[int]) -> bytes:
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 32, 64)  # e_phoff
    struct.pack_into("<HH", ehdr, 54, 56, len(phdr_types))  # e_phentsize, e_phnum
    phdrs = b"".join(struct.pack("<I", t) + bytes(52) for t in phdr_types)
    return bytes(ehdr) + phdrs


def test_is_static_elf(tmp_path: Path) -> None:
    static, dynamic, script = tmp_path / "s", tmp_path / "d", tmp_path / "x"
    static.write_bytes(elf64([1, 1, 2]))  # LOAD, LOAD, DYNAMIC (static-pie)
    dynamic.write_bytes(elf64([6, 3, 1]))  # PHDR, INTERP, LOAD
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    assert vm_tools.is_static_elf(static)
    assert not vm_tools.is_static_elf(dynamic)
    assert not vm_tools.is_static_elf(script)


# ---------------------------------------------------------------------------
# the runner (a local sh, not a VM): log, exit codes, the waiter's timeout
# ---------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


needs_posix = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc, sh")


@needs_posix
def test_run_logged_exit_code_and_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "deep" / "log.txt"
    out = vm_process.run_logged(
        ["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        log_path=log,
        timeout_s=30,
        header=["command: test"],
    )
    assert (out.exit_code, out.timed_out) == (3, False)
    text = log.read_text()
    assert text.startswith("# command: test\n")
    assert "hello\n" in text and "oops\n" in text
    assert "exit code 3" in text
    assert "hello" in capsys.readouterr().out


@needs_posix
def test_run_logged_timeout_kills_the_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    start = time.monotonic()
    out = vm_process.run_logged(
        # a child that ignores SIGTERM, and a grandchild holding the pipe open
        ["sh", "-c", f"trap '' TERM; sleep 60 & echo $! > {marker}; wait"],
        log_path=tmp_path / "log.txt",
        timeout_s=0.5,
        kill_grace_s=0.5,
    )
    assert out.timed_out and out.exit_code == vm_process.TIMEOUT_EXIT_CODE
    assert time.monotonic() - start < 10
    grandchild = int(marker.read_text())
    assert not alive(grandchild)
    assert "TIMED OUT" in (tmp_path / "log.txt").read_text()


@needs_posix
def test_run_logged_timeout_terminates_leaves_first(tmp_path: Path) -> None:
    # qemu's stand-in is the leaf `sleep`; its parent must live to reap it (no zombie
    # orphaned to init), as vng and virtme-run do when qemu exits.
    log = tmp_path / "log.txt"
    out = vm_process.run_logged(
        ["sh", "-c", "sleep 60 & wait; echo parent-reaped-child"],
        log_path=log,
        timeout_s=0.5,
        kill_grace_s=5,
    )
    assert out.timed_out and out.exit_code == vm_process.TIMEOUT_EXIT_CODE
    assert "parent-reaped-child" in log.read_text()
    assert out.duration_s < 4  # did not need the SIGKILL fallback


@needs_posix
@pytest.mark.parametrize("mark", [True, False], ids=["marked", "unmarked"])
def test_a_guest_that_does_not_power_off_after_its_command_is_ended(tmp_path: Path,
                                                                    mark: bool) -> None:
    """The guest's command printed its exit mark and the "guest" (a shell standing in for
    vng, whose kernel hangs in its device shutdown) stays: it is ended at the poweroff
    bound with the command's own code. Negative control: the same guest without the mark
    runs to the whole bound and times out. A line that only looks like the mark (another
    token) does not count."""
    tag = vm_runner.exit_tag("0123abcd")
    line = f"printf '%s7\\n' '{tag}' >&2;" if mark else ""
    start = time.monotonic()
    out = vm_process.run_logged(
        ["sh", "-c", f"echo '{vm_runner.exit_tag('ffff0000')}5'; {line} sleep 60"],
        log_path=tmp_path / "log.txt", timeout_s=6.0, kill_grace_s=0.5,
        exit_mark=vm_process.ExitMark(tag), poweroff_timeout_s=1.0)
    took = time.monotonic() - start
    if mark:
        assert (out.exit_code, out.poweroff_hung, out.timed_out) == (7, True, False)
        assert took < 5.0
        assert "did not power off" in (tmp_path / "log.txt").read_text()
    else:
        assert (out.exit_code, out.poweroff_hung, out.timed_out) == (
            vm_process.TIMEOUT_EXIT_CODE, False, True)

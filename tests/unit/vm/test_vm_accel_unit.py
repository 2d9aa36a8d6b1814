"""Unit tests for harness.vm's accelerator: the KVM probe's verdict and the choice with its
cache (the rest: test_vm_unit.py). Pure logic only, no VM boot, no network, any host."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.core.errors import RxePowerError
from harness.vm import accel as vm_accel
from harness.vm import kernel as vm_kernel

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_vm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own RXE_POWER_VM_* settings must not leak into these tests."""
    monkeypatch.delenv(vm_kernel.KERNEL_ENV, raising=False)
    monkeypatch.delenv(vm_accel.ACCEL_ENV, raising=False)


def kernel(tmp_path: Path, version: str = "6.1.0-56-amd64") -> vm_kernel.GuestKernel:
    return vm_kernel.GuestKernel(version, tmp_path / f"vmlinuz-{version}", tmp_path / version)


# ---------------------------------------------------------------------------
# KVM probe verdict
# ---------------------------------------------------------------------------

BOOT_OK = (
    "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\n"
    "[    0.301000] Run /init as init process\n"
    "[    1.342963] Kernel panic - not syncing: VFS: Unable to mount root fs on "
    "unknown-block(0,0)\n"
)


def test_parse_probe_output_works() -> None:
    ok, reason = vm_accel.parse_probe_output(BOOT_OK, 0)
    assert ok and "using kvm" in reason
    ok, _ = vm_accel.parse_probe_output(BOOT_OK, None)  # stopped early at the panic
    assert ok


def test_parse_probe_output_hung_no_output() -> None:
    ok, reason = vm_accel.parse_probe_output("", None)
    assert not ok
    assert reason == "kvm probe printed nothing in 10 s (qemu hung); using tcg"


def test_parse_probe_output_aborted() -> None:
    text = (
        "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x...\n"
        "qemu-system-x86_64: ../target/i386/kvm/kvm.c:2893: kvm_buf_set_msrs: "
        "Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n"
    )
    ok, reason = vm_accel.parse_probe_output(text, 134)
    assert not ok
    assert reason.startswith("qemu -accel kvm exited 134: ")
    assert "Assertion" in reason and reason.endswith("using tcg")
    _, by_signal = vm_accel.parse_probe_output(text, -6)  # Popen's view of SIGABRT
    assert "exited 134 (SIGABRT)" in by_signal


def test_parse_probe_output_banner_then_stall_is_not_working() -> None:
    ok, reason = vm_accel.parse_probe_output(BOOT_OK.splitlines()[0] + "\n", None, timeout_s=7)
    assert not ok and "7 s" in reason


# ---------------------------------------------------------------------------
# accelerator choice and its cache
# ---------------------------------------------------------------------------


class FakeProbe:
    def __init__(self, works: bool) -> None:
        self.works = works
        self.calls = 0

    def __call__(self, k: vm_kernel.GuestKernel, qemu: Path, timeout_s: float) -> tuple[bool, str]:
        self.calls += 1
        return self.works, "fake probe verdict"


def fake_host(tmp_path: Path) -> tuple[Path, Path]:
    dev_kvm = tmp_path / "kvm"
    dev_kvm.write_bytes(b"")
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_bytes(b"")
    return dev_kvm, qemu


def test_accel_cache_corrupt_file_is_ignored_and_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev_kvm, qemu = fake_host(tmp_path)
    cache = tmp_path / "run" / "accel.json"
    cache.parent.mkdir()
    cache.write_text("{not json")
    probe = FakeProbe(works=False)
    k = kernel(tmp_path)

    first = vm_accel.choose_accel(k, qemu=qemu, dev_kvm=dev_kvm, cache_path=cache, probe=probe)
    assert first == vm_accel.AccelChoice("tcg", "fake probe verdict")
    assert probe.calls == 1
    assert "corrupt" in capsys.readouterr().err
    data = json.loads(cache.read_text())  # rewritten as valid JSON
    assert data["entries"][vm_accel.accel_cache_key(k, qemu)]["accel"] == "tcg"

    second = vm_accel.choose_accel(k, qemu=qemu, dev_kvm=dev_kvm, cache_path=cache, probe=probe)
    assert probe.calls == 1  # served from the cache
    assert second.accel == "tcg" and "cached" in second.reason


def test_accel_cache_wrong_shape_is_corrupt(tmp_path: Path) -> None:
    cache = tmp_path / "accel.json"
    cache.write_text(json.dumps({"format": 1, "entries": {"k": {"accel": "warp", "reason": ""}}}))
    assert vm_accel.load_accel_cache(cache) == {}
    assert vm_accel.load_accel_cache(tmp_path / "absent.json") == {}


def test_accel_cache_key_changes_with_kernel_and_qemu(tmp_path: Path) -> None:
    _, qemu = fake_host(tmp_path)
    k1, k2 = kernel(tmp_path, "6.1.0-1"), kernel(tmp_path, "6.1.0-2")
    before = vm_accel.accel_cache_key(k1, qemu)
    assert before != vm_accel.accel_cache_key(k2, qemu)
    st = qemu.stat()
    os.utime(qemu, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert vm_accel.accel_cache_key(k1, qemu) != before


def test_choose_accel_forced_and_no_dev_kvm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev_kvm, qemu = fake_host(tmp_path)
    probe = FakeProbe(works=True)
    k = kernel(tmp_path)
    cache = tmp_path / "c.json"

    monkeypatch.setenv(vm_accel.ACCEL_ENV, "KVM")
    choice = vm_accel.choose_accel(k, qemu=qemu, dev_kvm=dev_kvm, cache_path=cache, probe=probe)
    assert choice.accel == "kvm"
    monkeypatch.setenv(vm_accel.ACCEL_ENV, "fast")
    with pytest.raises(RxePowerError, match=vm_accel.ACCEL_ENV):
        vm_accel.choose_accel(k, qemu=qemu, dev_kvm=dev_kvm, cache_path=cache, probe=probe)
    monkeypatch.delenv(vm_accel.ACCEL_ENV)

    got = vm_accel.choose_accel(
        k, qemu=qemu, dev_kvm=tmp_path / "nokvm", cache_path=cache, probe=probe
    )
    assert got.accel == "tcg" and "does not exist" in got.reason
    assert probe.calls == 0

    choice = vm_accel.choose_accel(k, qemu=qemu, dev_kvm=dev_kvm, cache_path=cache, probe=probe)
    assert choice.accel == "kvm"
    assert probe.calls == 1



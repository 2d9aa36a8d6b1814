"""Unit tests for harness.doctor: every check with fakes, on any host, no root, no rxe."""

from __future__ import annotations

import argparse
import errno
import functools
import importlib.metadata
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.cli import doctor
from harness.cli.doctor import Finding, Ran, Status
from harness.core.errors import NoRxe, SettingError, TopologyError
from harness.core.printer import STDOUT
from harness.core.proc import python_child
from harness.core.state import StateFile
from harness.topology.config import Endpoint, Topology, TopologyConfig
from harness.vm import accel as vm_accel
from harness.vm import kernel as vm_kernel
from harness.vm import tools as vm_tools


@pytest.fixture(autouse=True)
def _no_host_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own RXE_POWER_* settings must not leak into these tests."""
    for name in ("RXE_POWER_MODE", vm_kernel.KERNEL_ENV, vm_accel.ACCEL_ENV, "RXE_POWER_LOCAL_DEV",
                 "RXE_POWER_PEER_DEV", "RXE_POWER_LOCAL_NETDEV", "RXE_POWER_PEER_NETDEV",
                 "RXE_POWER_LOCAL_ADDR", "RXE_POWER_PEER_ADDR"):
        monkeypatch.delenv(name, raising=False)


def no_which(name: str) -> str | None:
    return None


def which_in(path: str):
    return lambda name: f"{path}/{name}"


class FakeRun:
    """A `run` callable: answers by argv[1:] prefix and records what it was asked."""

    def __init__(self, answers: dict[tuple[str, ...], Ran | BaseException]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float) -> Ran:
        self.calls.append((list(argv), timeout_s))
        for prefix, answer in self.answers.items():
            if tuple(argv[1:1 + len(prefix)]) == prefix:
                if isinstance(answer, BaseException):
                    raise answer
                return answer
        raise AssertionError(f"unexpected command {argv}")


# --- root, native, VM tools, guest kernel -----------------------------------------------


def test_root_ok_and_fail() -> None:
    assert doctor.check_root(lambda: 0).status is Status.OK
    f = doctor.check_root(lambda: 1000)
    assert f.status is Status.FAIL and "uid 1000" in f.detail and "sudo" in f.fix


def test_native_available_or_not() -> None:
    assert doctor.check_native(lambda: (True, "rdma_rxe is loaded")).status is Status.OK
    f = doctor.check_native(lambda: (False, "the running kernel X has no rdma_rxe module"))
    assert f.status is Status.WARN and "linux-modules-extra" in f.fix and "--mode vm" in f.fix


def test_qemu_missing_is_fail_with_package_name() -> None:
    f = doctor.check_qemu(no_which)
    assert f.status is Status.FAIL and f.fix == "apt-get install qemu-system-x86"
    ok = doctor.check_qemu(which_in("/usr/bin"))
    assert ok.status is Status.OK and "/usr/bin/qemu-system-x86_64" in ok.detail


def test_vm_tools_missing_vng_carries_the_fix() -> None:
    def find() -> vm_tools.VmTools:
        raise NoRxe("virtme-ng's `vng` is neither next to python nor on PATH",
                    vm_tools.VM_TOOLS_FIX)

    f = doctor.check_vm_tools(find)
    assert f.status is Status.FAIL and "vng" in f.detail and "pip install virtme-ng" in f.fix
    tools = vm_tools.VmTools(Path("/v/bin/vng"), Path("/usr/bin/qemu"), Path("/bin/busybox"))
    assert doctor.check_vm_tools(lambda: tools).status is Status.OK


def make_boot(tmp_path: Path, version: str, rxe: bool) -> tuple[Path, Path]:
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    (boot / f"vmlinuz-{version}").write_bytes(b"kernel")
    rxe_dir = mods / version / vm_kernel.RXE_MODULE_SUBDIR
    rxe_dir.mkdir(parents=True)
    if rxe:
        (rxe_dir / "rdma_rxe.ko.xz").write_bytes(b"")
    return boot, mods


def test_guest_kernel_without_rxe_is_fail(tmp_path: Path) -> None:
    boot, mods = make_boot(tmp_path, "6.1.0-9-amd64", rxe=False)
    f, k = doctor.check_guest_kernel(functools.partial(vm_kernel.find_guest_kernel, boot, mods))
    assert k is None and f.status is Status.FAIL
    assert "rdma_rxe" in f.detail and "linux-image-amd64" in f.fix


def test_guest_kernel_with_rxe_is_ok(tmp_path: Path) -> None:
    boot, mods = make_boot(tmp_path, "6.1.0-9-amd64", rxe=True)
    f, k = doctor.check_guest_kernel(functools.partial(vm_kernel.find_guest_kernel, boot, mods))
    assert f.status is Status.OK and k is not None and k.version == "6.1.0-9-amd64"


# --- kvm --------------------------------------------------------------------------------


@pytest.fixture
def kq(tmp_path: Path) -> tuple[vm_kernel.GuestKernel, str]:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_bytes(b"")
    kernel = vm_kernel.GuestKernel("6.1.0-9-amd64", tmp_path / "vmlinuz", tmp_path / "mods")
    return kernel, str(qemu)


def test_kvm_not_checked_without_kernel_or_qemu(tmp_path: Path) -> None:
    assert doctor.check_kvm(None, "/usr/bin/qemu").status is Status.WARN


def test_kvm_without_dev_kvm_means_tcg(tmp_path: Path, kq) -> None:
    f = doctor.check_kvm(*kq, dev_kvm=tmp_path / "nokvm", cache_path=tmp_path / "a.json",
                         environ={})
    assert f.status is Status.WARN and "tcg" in f.detail


def test_kvm_cache_verdicts(tmp_path: Path, kq) -> None:
    kernel, qemu = kq
    dev, cache = tmp_path / "kvm", tmp_path / "accel.json"
    dev.write_bytes(b"")
    f = doctor.check_kvm(kernel, qemu, dev_kvm=dev, cache_path=cache, environ={})
    assert f.status is Status.OK and "not probed" in f.detail
    key = vm_accel.accel_cache_key(kernel, Path(qemu))
    vm_accel.save_accel_cache(cache, {key: {"accel": "tcg", "reason": "qemu hung; using tcg"}})
    f = doctor.check_kvm(kernel, qemu, dev_kvm=dev, cache_path=cache, environ={})
    assert f.status is Status.WARN and "qemu hung" in f.detail and f"rm {cache}" in f.fix
    vm_accel.save_accel_cache(cache, {key: {"accel": "kvm", "reason": "booted"}})
    f = doctor.check_kvm(kernel, qemu, dev_kvm=dev, cache_path=cache, environ={})
    assert f.status is Status.OK and "kvm" in f.detail


def test_kvm_probe_and_forced_go_through_choose_accel(tmp_path: Path, kq) -> None:
    seen: list[dict] = []

    def choose(kernel: vm_kernel.GuestKernel, **kw: object) -> vm_accel.AccelChoice:
        seen.append(kw)
        return vm_accel.AccelChoice("tcg", "forced by environment variable RXE_POWER_VM_ACCEL")

    cache = tmp_path / "accel.json"
    f = doctor.check_kvm(*kq, cache_path=cache, environ={vm_accel.ACCEL_ENV: "tcg"}, choose=choose)
    assert f.status is Status.WARN and vm_accel.ACCEL_ENV in f.fix
    assert seen[0]["cache_path"] == cache
    doctor.check_kvm(*kq, cache_path=cache, environ={}, probe=True, choose=choose)
    assert len(seen) == 2

    def bad(kernel: vm_kernel.GuestKernel, **kw: object) -> vm_accel.AccelChoice:
        raise SettingError("bad value for the VM accelerator", "set it to kvm or tcg")

    f = doctor.check_kvm(*kq, environ={}, probe=True, choose=bad)
    assert f.status is Status.FAIL and f.fix == "set it to kvm or tcg"


# --- rdma -------------------------------------------------------------------------------


LINKS = json.dumps([{"ifname": "rxe0", "port": 1, "state": "ACTIVE", "physical_state": "LINK_UP",
                     "netdev": "rxpw0", "netdev_index": 7}])


def test_rdma_missing_is_fail() -> None:
    f = doctor.check_rdma(True, no_which)
    assert f.status is Status.FAIL and f.fix == "apt-get install iproute2"


def test_rdma_json_parsed() -> None:
    run = FakeRun({("-j", "link", "show"): Ran(0, LINKS, "")})
    f = doctor.check_rdma(True, which_in("/usr/bin"), run)
    assert f.status is Status.OK and "rxe0/1 ACTIVE" in f.detail
    assert run.calls[0][0] == ["/usr/bin/rdma", "-j", "link", "show"]
    f = doctor.check_rdma(True, which_in("/usr/bin"), FakeRun({(): Ran(0, "", "")}))
    assert f.status is Status.OK and "no RDMA links" in f.detail


@pytest.mark.parametrize("out", ["not json", '[{"port": 1}]', '"a string"'])
def test_rdma_bad_json_is_fail(out: str) -> None:
    f = doctor.check_rdma(True, which_in("/usr/bin"), FakeRun({(): Ran(0, out, "")}))
    assert f.status is Status.FAIL and "iproute2" in f.fix


def test_rdma_without_netlink_depends_on_native() -> None:
    run = FakeRun({(): Ran(1, "", "Failed to open NETLINK_RDMA socket\n")})
    f = doctor.check_rdma(False, which_in("/usr/bin"), run)
    assert f.status is Status.OK and "NETLINK_RDMA" in f.detail
    f = doctor.check_rdma(True, which_in("/usr/bin"), run)
    assert f.status is Status.WARN and "modprobe rdma_rxe" in f.fix


def test_rdma_oserror_carries_errno_and_timeout_is_fail() -> None:
    run = FakeRun({(): PermissionError(errno.EACCES, "Permission denied")})
    f = doctor.check_rdma(True, which_in("/usr/bin"), run)
    assert f.status is Status.FAIL and "EACCES" in f.detail and "Permission denied" in f.detail
    f = doctor.check_rdma(True, which_in("/usr/bin"), FakeRun({(): Ran(None, "", "")}))
    assert f.status is Status.FAIL and "did not finish" in f.detail


# --- pyverbs and packages ---------------------------------------------------------------


def probe_out(version: str | None) -> str:
    return json.dumps({"version": version, "file": "/usr/lib/python3/dist-packages/pyverbs"})


def test_pyverbs_version_from_module() -> None:
    run = FakeRun({("-P",): Ran(0, probe_out("50.0"), "")})
    f = doctor.check_pyverbs(run, no_which)
    assert f.status is Status.OK and "pyverbs 50.0" in f.detail
    argv, timeout = run.calls[0]
    assert argv == python_child(doctor.PYVERBS_PROBE) and timeout == doctor.DOCTOR_IMPORT_TIMEOUT_S


def test_pyverbs_version_from_dpkg() -> None:
    run = FakeRun({("-P",): Ran(0, "noise\n" + probe_out(None), ""),
                   ("-W",): Ran(0, "44.0-2", "")})
    f = doctor.check_pyverbs(run, which_in("/usr/bin"))
    assert f.status is Status.OK and "44.0-2 (python3-pyverbs)" in f.detail
    assert run.calls[1][0] == ["/usr/bin/dpkg-query", "-W", "-f=${Version}", "python3-pyverbs"]
    f = doctor.check_pyverbs(FakeRun({("-P",): Ran(0, probe_out(None), "")}), no_which)
    assert f.status is Status.OK and "version unknown" in f.detail


@pytest.mark.parametrize(("ran", "words"), [
    (Ran(1, "", "ModuleNotFoundError: No module named 'pyverbs'\n"), "No module named"),
    (Ran(None, "", ""), "DOCTOR_IMPORT_TIMEOUT_S"),
    (Ran(0, "garbage", ""), "garbage"),
])
def test_pyverbs_failures(ran: Ran, words: str) -> None:
    f = doctor.check_pyverbs(FakeRun({("-P",): ran}), no_which)
    assert f.status is Status.FAIL and words in f.detail
    assert "python3-pyverbs" in f.fix and "--system-site-packages" in f.fix


def test_pyverbs_python_missing_carries_errno() -> None:
    run = FakeRun({("-P",): FileNotFoundError(errno.ENOENT, "No such file or directory")})
    f = doctor.check_pyverbs(run, no_which)
    assert f.status is Status.FAIL and "ENOENT 2" in f.detail


def missing(dist: str) -> str:
    raise importlib.metadata.PackageNotFoundError(dist)


def test_packages_missing() -> None:
    f = doctor.check_package("psutil", Status.FAIL, "the harness", "/venv/python", missing)
    assert f.status is Status.FAIL and "/venv/python -m pip install -e '.[test]'" in f.fix
    f = doctor.check_package("matplotlib", Status.WARN, "rxe-power report", "py", missing)
    assert f.status is Status.WARN and "py -m pip install -e '.[test]'" in f.fix
    f = doctor.check_package("pytest", Status.FAIL, "tests", "py", lambda d: "8.3.1")
    assert f.status is Status.OK and f.detail == "pytest 8.3.1"


def test_package_table_covers_the_brief() -> None:
    table = {d: Status(s) for d, s, _ in doctor.PACKAGES}
    assert table == {"psutil": Status.FAIL, "pytest": Status.FAIL,
                     "pytest-timeout": Status.FAIL, "matplotlib": Status.WARN,
                     "rich": Status.WARN}


# --- topology and state file ------------------------------------------------------------


def endpoint(dev: str, state: str) -> Endpoint:
    return Endpoint(dev, 1, f"n{dev}", 3, "198.18.0.1", "::ffff:c612:1", 1, state)


def test_topology() -> None:
    assert doctor.check_topology(False, True).status is Status.OK
    assert doctor.check_topology(True, False).status is Status.WARN

    def absent(cfg: TopologyConfig) -> Topology:
        raise TopologyError("RDMA device 'rxe0' not found (have: none)", "build it")

    f = doctor.check_topology(True, True, absent)
    assert f.status is Status.WARN and f.detail.startswith("not set up")
    assert "rxe-power setup" in f.fix
    up = Topology(endpoint("rxe0", "ACTIVE"), endpoint("rxe1", "ACTIVE"))
    f = doctor.check_topology(True, True, lambda cfg: up)
    assert f.status is Status.OK and "rxe0 ACTIVE" in f.detail and "rxe1 ACTIVE" in f.detail
    half = Topology(endpoint("rxe0", "DOWN"), endpoint("rxe1", "ACTIVE"))
    f = doctor.check_topology(True, True, lambda cfg: half)
    assert f.status is Status.WARN and f.fix == "rxe-power recover"


def write_state(path: Path) -> None:
    st = StateFile(path)
    st.created = [{"kind": "netdev", "name": "rxpw0", "peer": "rxpw0s"},
                  {"kind": "rule", "args": ["pref", "1"]},
                  {"kind": "rdma_link", "name": "rxe0", "netdev": "rxpw0"}]
    st.save()


def test_state_file(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    f = doctor.check_state_file(path, set, set)
    assert f.status is Status.OK and "no " in f.detail
    write_state(path)
    f = doctor.check_state_file(path, set, set)
    assert f.status is Status.WARN and "leftover" in f.detail and f.fix == "rxe-power teardown"
    f = doctor.check_state_file(path, lambda: {"rxpw0", "rxpw0s"}, lambda: {"rxe0"})
    assert f.status is Status.OK
    f = doctor.check_state_file(path, lambda: {"rxpw0", "rxpw0s"}, set)
    assert f.status is Status.WARN and "rxe0" in f.detail and "teardown" in f.fix
    path.write_text("{not json")
    f = doctor.check_state_file(path, set, set)
    assert f.status is Status.WARN and "corrupt" in f.detail and f"rm {path}" in f.fix


# --- mode, run_checks, rendering, command -----------------------------------------------


def test_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    f = doctor.check_mode(True, "rdma_rxe is loaded", False, "no qemu")
    assert f.status is Status.OK and "mode native" in f.detail
    f = doctor.check_mode(False, "no module", True, "guest kernel 6.1")
    assert f.status is Status.OK and "mode vm" in f.detail
    f = doctor.check_mode(False, "no module", False, "no qemu")
    assert f.status is Status.FAIL and "neither" in f.detail
    f = doctor.check_mode(True, "loaded", False, "no qemu", requested="vm")
    assert f.status is Status.FAIL and "mode vm" in f.detail
    monkeypatch.setenv("RXE_POWER_MODE", "bogus")
    f = doctor.check_mode(True, "loaded", True, "ok")
    assert f.status is Status.FAIL and "RXE_POWER_MODE" in f.detail


def stub_checks(monkeypatch: pytest.MonkeyPatch, native: bool, qemu: Status) -> None:
    def ok(name: str):
        return lambda *a, **k: Finding(name, Status.OK, "fine")

    for fn in ("check_root", "check_vm_tools", "check_kvm", "check_rdma", "check_pyverbs",
               "check_topology", "check_state_file"):
        monkeypatch.setattr(doctor, fn, ok(fn))
    monkeypatch.setattr(doctor, "check_package", lambda d, *a: Finding(d, Status.OK, "fine"))
    monkeypatch.setattr(doctor, "check_guest_kernel", lambda: (Finding("k", Status.OK, "k"), None))
    monkeypatch.setattr(doctor, "check_native", lambda: Finding(
        "native rxe", Status.OK if native else Status.WARN, "why", ""))
    monkeypatch.setattr(doctor, "check_qemu", lambda: Finding("qemu", qemu, "no qemu", "apt"))


def test_vm_failures_only_warn_when_native_works(monkeypatch: pytest.MonkeyPatch) -> None:
    stub_checks(monkeypatch, native=True, qemu=Status.FAIL)
    found = {f.name: f for f in doctor.run_checks()}
    assert found["qemu"].status is Status.WARN and "only --mode vm" in found["qemu"].detail
    assert found["mode"].status is Status.OK
    assert doctor.exit_code(list(found.values())) == 0
    found = {f.name: f for f in doctor.run_checks(mode="vm")}
    assert found["qemu"].status is Status.FAIL and found["mode"].status is Status.FAIL


def test_neither_path_is_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    stub_checks(monkeypatch, native=False, qemu=Status.FAIL)
    found = {f.name: f for f in doctor.run_checks()}
    assert found["qemu"].status is Status.FAIL
    assert found["mode"].status is Status.FAIL and "neither" in found["mode"].detail


def test_render_and_exit_code() -> None:
    fs = [Finding("root", Status.OK, "running as root"),
          Finding("qemu", Status.FAIL, "qemu-system-x86_64 is not on PATH", "apt-get install q"),
          Finding("matplotlib", Status.WARN, "not installed", "pip install matplotlib")]
    lines = doctor.render(fs)
    assert len(lines) == len(fs) + 1
    assert lines[0] == "ok    root        running as root"
    assert lines[1].startswith("FAIL  qemu        ") and lines[1].endswith("fix: apt-get install q")
    assert lines[2].startswith("warn  matplotlib  ")
    assert lines[-1] == "doctor: 1 FAIL, 1 warn, 1 ok"
    assert doctor.exit_code(fs) == 1 and doctor.exit_code([fs[0], fs[2]]) == 0
    assert doctor.render([Finding("x", Status.OK, "d", "unused fix")])[0] == "ok    x  d"


def test_cmd_doctor_json_and_exit(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    fs = [Finding("root", Status.FAIL, "uid 1000", "sudo")]
    monkeypatch.setattr(doctor, "run_checks", lambda probe, mode: fs)
    rc = doctor.cmd_doctor(argparse.Namespace(json=True, probe_kvm=False, doctor_mode=None),
                           STDOUT)
    assert rc == 1
    assert json.loads(capsys.readouterr().out) == [
        {"name": "root", "status": "FAIL", "detail": "uid 1000", "fix": "sudo"}]


def test_add_parser_registers_doctor() -> None:
    ap = argparse.ArgumentParser()
    doctor.add_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["doctor", "--json", "--probe-kvm", "--mode", "vm"])
    assert args.func is doctor.cmd_doctor and args.json and args.probe_kvm
    assert args.doctor_mode == "vm" and not hasattr(args, "mode")
    args = ap.parse_args(["doctor"])
    assert not args.json and not args.probe_kvm and args.doctor_mode is None


def test_run_cmd_is_bounded() -> None:
    r = doctor.run_cmd([sys.executable, "-c", "import time; time.sleep(30)"], 0.3)
    assert r.returncode is None
    r = doctor.run_cmd([sys.executable, "-c", "print('hi')"], 30)
    assert (r.returncode, r.stdout) == (0, "hi\n")
    with pytest.raises(FileNotFoundError):
        doctor.run_cmd(["/nonexistent/rdma"], 1)


def test_real_host(capsys) -> None:
    """cmd_doctor on this host, for real (never boots a VM without --probe-kvm)."""
    for as_json in (False, True):
        rc = doctor.cmd_doctor(argparse.Namespace(json=as_json, probe_kvm=False,
                                                  doctor_mode=None), STDOUT)
        out = capsys.readouterr().out
        if as_json:
            found = json.loads(out)
            assert {f["status"] for f in found} <= {"ok", "warn", "FAIL"}
            assert rc == (1 if any(f["status"] == "FAIL" for f in found) else 0)
            assert [f["name"] for f in found][-1] == "mode"
        else:
            lines = out.splitlines()
            assert lines[-1].startswith("doctor: ")
            assert all(ln.split()[0] in ("ok", "warn", "FAIL") for ln in lines[:-1])

"""`rxe-power doctor`: check what the harness needs; say how to fix what is missing.

One Finding (ok / warn / FAIL, detail, fix) per check. The checks take their inputs
(paths, a `which`, a `run`, finder functions) as parameters with real defaults, so
tests/unit/cli/test_doctor_unit.py runs each on any host. Nothing here boots a VM unless
`--probe-kvm` is given. Exit code: 0 without a FAIL, 1 with one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

from harness.cli.launch import Subcommands, native_rxe_available
from harness.core import settings
from harness.core.errors import BoundExceeded, OsCallError, RxePowerError
from harness.core.printer import Printer
from harness.core.proc import python_child, run_bounded
from harness.core.settings import Mode, resolve
from harness.core.state import RUN_KINDS, STATE_PATH, StateFile, alive
from harness.system import command, inventory, rdma_netlink
from harness.topology import devices
from harness.topology.config import Topology, TopologyConfig
from harness.vm import accel as vm_accel
from harness.vm import kernel as vm_kernel
from harness.vm import tools as vm_tools

DOCTOR_IMPORT_TIMEOUT_S = 20.0  # `import pyverbs` in a child; a broken install must not hang us
DOCTOR_CMD_TIMEOUT_S = 10.0  # rdma, dpkg-query

NATIVE_FIX = ("install the module for this kernel (Ubuntu: apt-get install "
              "linux-modules-extra-$(uname -r)), or use the VM path (--mode vm; auto picks it)")
PYVERBS_FIX = ("apt-get install python3-pyverbs, and make the venv from the system python "
               "with its site packages: /usr/bin/python3 -m venv --system-site-packages .venv")
PYVERBS_PROBE = "harness.cli.pyverbs_probe"
# (distribution, status when missing, what needs it)
PACKAGES = (("psutil", "FAIL", "the harness"), ("pytest", "FAIL", "rxe-power test"),
            ("pytest-timeout", "FAIL", "rxe-power test"),
            ("matplotlib", "warn", "rxe-power report"),
            ("rich", "warn", "the progress bar of rxe-power stress"))


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {**asdict(self), "status": str(self.status)}


def ok(name: str, detail: str) -> Finding:
    return Finding(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str) -> Finding:
    return Finding(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Finding:
    return Finding(name, Status.FAIL, detail, fix)


@dataclass(frozen=True)
class Ran:
    returncode: int | None  # None: killed at its timeout
    stdout: str
    stderr: str


Which = Callable[[str], str | None]
Runner = Callable[[Sequence[str], float], Ran]


def run_cmd(argv: Sequence[str], timeout_s: float) -> Ran:
    """Run with a bound; OSError (e.g. ENOENT) propagates for the caller to report."""
    try:
        p = run_bounded(argv, timeout_s, step=" ".join(argv), bound_name="timeout_s",
                        outstanding=f"{argv[0]} had not exited")
    except BoundExceeded:
        return Ran(None, "", "")
    return Ran(p.returncode, p.stdout, p.stderr)


def _os_detail(what: str, exc: OSError) -> str:
    return OsCallError(what, exc.errno or 0).problem  # "what: [ENOENT 2] No such file ..."


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


# --- checks -----------------------------------------------------------------------------


def check_root(geteuid: Callable[[], int] = os.geteuid) -> Finding:
    if (uid := geteuid()) == 0:
        return ok("root", "running as root")
    return fail("root", f"running as uid {uid}; setup, run and test add veths, routing rules "
                "and rdma links", "run as root: sudo .venv/bin/rxe-power ...")


def native_probe() -> tuple[bool, str]:

    return native_rxe_available()


def check_native(probe: Callable[[], tuple[bool, str]] = native_probe) -> Finding:
    good, why = probe()
    return ok("native rxe", why) if good else warn("native rxe", why, NATIVE_FIX)


def check_qemu(which: Which = shutil.which) -> Finding:
    if path := which(vm_tools.QEMU_BINARY):
        return ok("qemu", f"{vm_tools.QEMU_BINARY} at {path}")
    return fail("qemu", f"{vm_tools.QEMU_BINARY} is not on PATH", "apt-get install qemu-system-x86")


def check_vm_tools(find: Callable[[], vm_tools.VmTools] = vm_tools.find_vm_tools) -> Finding:
    try:
        tools = find()
    except RxePowerError as exc:
        return fail("virtme-ng", exc.problem, exc.fix)
    return ok("virtme-ng", f"vng at {tools.vng}, static busybox at {tools.busybox}")


def check_guest_kernel(find: Callable[[], vm_kernel.GuestKernel] = vm_kernel.find_guest_kernel,
                       ) -> tuple[Finding, vm_kernel.GuestKernel | None]:
    """The kernel the VM would boot; also returned, for the kvm check."""
    try:
        k = find()
    except RxePowerError as exc:
        return fail("guest kernel", exc.problem, exc.fix), None
    return ok("guest kernel", f"{k.version} ({k.vmlinuz}) has rdma_rxe"), k


def _accel_finding(accel: str, reason: str, cache: Path) -> Finding:
    if accel == "kvm":
        return ok("kvm", f"VM runs use kvm: {reason}")
    fix = (f"unset {vm_accel.ACCEL_ENV} to let rxe-power probe kvm" if reason.startswith("forced")
           else f"nothing required (tcg works, slower); to retry kvm: rm {cache}")
    return warn("kvm", f"VM runs use tcg (slower): {reason}", fix)


def check_kvm(kernel: vm_kernel.GuestKernel | None, qemu: str | None, *,
              dev_kvm: Path = vm_accel.DEV_KVM,
              cache_path: Path | None = None, environ: Mapping[str, str] | None = None,
              probe: bool = False,
              choose: Callable[..., vm_accel.AccelChoice] = vm_accel.choose_accel,
              ) -> Finding:
    """The accelerator VM runs get: from the cache, or (probe=True) choose_accel itself."""
    if kernel is None or qemu is None:
        return warn("kvm", "not checked: needs qemu and a guest kernel", "fix those first")
    cache = cache_path if cache_path is not None else vm_accel.default_accel_cache_path()
    if probe or settings.vm_accel_override(environ):
        try:  # with RXE_POWER_VM_ACCEL set, choose_accel boots nothing
            choice = choose(kernel, qemu=Path(qemu), dev_kvm=dev_kvm, cache_path=cache)
        except RxePowerError as exc:
            return fail("kvm", exc.problem, exc.fix)
        return _accel_finding(choice.accel, choice.reason, cache)
    if not dev_kvm.exists():
        return warn("kvm", f"{dev_kvm} does not exist: VM runs use tcg (slower)",
                    "nothing required; for speed, enable KVM (nested virtualisation)")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return warn("kvm", f"{dev_kvm} is not read-writable by uid {os.geteuid()}: VM runs use "
                    "tcg", "run as root, or join group kvm")
    hit = vm_accel.load_accel_cache(cache).get(vm_accel.accel_cache_key(kernel, Path(qemu)))
    if hit is None:
        return ok("kvm", f"{dev_kvm} present; kvm not probed since boot (the first VM run "
                  "probes it, or: rxe-power doctor --probe-kvm)")
    return _accel_finding(hit["accel"], f"{hit['reason']} [cached in {cache}]", cache)


def check_rdma(native_ok: bool = True, which: Which = shutil.which,
               run: Runner = run_cmd) -> Finding:
    """`rdma -j link show` parsed as JSON; without native rxe it may fail (no RDMA netlink)."""
    if (path := which("rdma")) is None:
        return fail("rdma tool", "`rdma` is not on PATH", "apt-get install iproute2")
    try:
        r = run([path, "-j", "link", "show"], DOCTOR_CMD_TIMEOUT_S)
    except OSError as exc:
        return fail("rdma tool", _os_detail(f"cannot run {path}", exc),
                    "apt-get install --reinstall iproute2")
    if r.returncode is None:
        return fail("rdma tool", f"`rdma -j link show` did not finish within "
                    f"{DOCTOR_CMD_TIMEOUT_S:g} s", "look for a blocked device delete (dmesg)")
    if r.returncode != 0 and not native_ok:
        return ok("rdma tool", f"{path} is there; `rdma -j link show` exited {r.returncode} "
                  f"({_last_line(r.stderr)}): expected, this kernel has no RDMA; the VM's has")
    if r.returncode != 0:
        return warn("rdma tool", f"`rdma -j link show` exited {r.returncode}: "
                    f"{_last_line(r.stderr)}", "modprobe rdma_rxe (rxe-power setup does it)")
    try:
        links = rdma_netlink.parse_rdma_links(
            command.parse_json_list(r.stdout, "rdma -j link show"))
    except RxePowerError as exc:
        return fail("rdma tool", exc.problem, exc.fix)
    except (KeyError, TypeError, ValueError) as exc:
        return fail("rdma tool", f"`rdma -j link show` JSON lacks {exc}", "update iproute2")
    have = ", ".join(f"{lk.ifname}/{lk.port} {lk.state}" for lk in links) or "no RDMA links"
    return ok("rdma tool", f"{path}: {have}")


def dpkg_version(package: str, which: Which = shutil.which, run: Runner = run_cmd) -> str | None:
    if (tool := which("dpkg-query")) is None:
        return None
    try:
        r = run([tool, "-W", "-f=${Version}", package], DOCTOR_CMD_TIMEOUT_S)
    except OSError:
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def check_pyverbs(run: Runner = run_cmd, which: Which = shutil.which) -> Finding:
    """`import pyverbs` in a child of ours (harness.cli.pyverbs_probe: -P, never from the
    working directory) bounded by DOCTOR_IMPORT_TIMEOUT_S."""
    python = sys.executable
    try:
        r = run(python_child(PYVERBS_PROBE), DOCTOR_IMPORT_TIMEOUT_S)
    except OSError as exc:
        return fail("pyverbs", _os_detail(f"cannot run {python}", exc), PYVERBS_FIX)
    if r.returncode is None:
        return fail("pyverbs", f"`import pyverbs` did not finish within DOCTOR_IMPORT_TIMEOUT_S="
                    f"{DOCTOR_IMPORT_TIMEOUT_S:g} s", PYVERBS_FIX)
    if r.returncode != 0:
        return fail("pyverbs", f"{python} cannot import pyverbs: {_last_line(r.stderr)}",
                    PYVERBS_FIX)
    try:
        info = json.loads(_last_line(r.stdout))
        version, where = info["version"], info["file"]
    except (ValueError, KeyError, TypeError):
        return fail("pyverbs", f"the import probe printed {_last_line(r.stdout)!r}", PYVERBS_FIX)
    if version is None and (deb := dpkg_version("python3-pyverbs", which, run)):
        version = f"{deb} (python3-pyverbs)"
    return ok("pyverbs", f"pyverbs {version or '(version unknown)'} from {where}")


def check_package(dist: str, missing: Status, used_by: str, python: str = sys.executable,
                  version: Callable[[str], str] = importlib.metadata.version) -> Finding:
    try:
        return ok(dist, f"{dist} {version(dist)}")
    except importlib.metadata.PackageNotFoundError:
        return Finding(dist, missing, f"not installed for {python} (needed by {used_by})",
                       f"{python} -m pip install -e '.[test]' (from the clone)")


def check_topology(native_ok: bool, is_root: bool,
                   discover: Callable[[TopologyConfig], Topology] | None = None,
                   ) -> Finding:
    if not native_ok:
        return ok("topology", "not checked: no native rxe (each VM run builds its own)")
    if not is_root:
        return warn("topology", "not checked: needs root", "run doctor as root")
    try:
        topo = (discover or devices.discover)(TopologyConfig.from_settings())
    except RxePowerError as exc:
        return warn("topology", f"not set up ({exc.problem})",
                    "rxe-power setup builds it; tests build it themselves")
    except OSError as exc:
        return warn("topology", _os_detail("not set up: reading it failed", exc),
                    "rxe-power setup builds it; tests build it themselves")
    detail = ", ".join(f"{e.dev} {e.state} on {e.netdev} {e.addr}" for e in (topo.local, topo.peer))
    if topo.local.state == topo.peer.state == "ACTIVE":
        return ok("topology", detail)
    return warn("topology", f"{detail}: a port is not ACTIVE", "rxe-power recover")


def _netdev_names() -> set[str]:
    return {lk.ifname for lk in inventory.ip_links()}


def _rdma_names() -> set[str]:
    try:
        return {lk.ifname for lk in inventory.rdma_links()}
    except RxePowerError:  # no RDMA netlink in this kernel: no rdma devices either
        return set()


def check_state_file(path: Path | None = None, netdevs: Callable[[], set[str]] = _netdev_names,
                     rdma_devs: Callable[[], set[str]] = _rdma_names) -> Finding:
    """A topology state file whose devices are gone is a leftover for `rxe-power teardown`."""
    path = path if path is not None else STATE_PATH
    if not path.exists():
        return ok("state file", f"no {path} (nothing of ours to remove)")
    try:
        state = StateFile.load(path)
        present = netdevs() | rdma_devs()
    except RxePowerError as exc:
        return warn("state file", exc.problem, exc.fix)
    except OSError as exc:
        return warn("state file", _os_detail(f"cannot check {path}", exc), "rxe-power teardown")
    runs = [e for e in state.created if e.get("kind") in RUN_KINDS]
    live = sorted({int(e["owner"]["pid"]) for e in runs if alive(e.get("owner"))})
    dead = [e for e in runs if not alive(e.get("owner"))]
    if dead:
        return warn("state file", f"{path}: {len(dead)} process/folder entries of dead runs "
                    "are left", "rxe-power cleanup")
    names = [n for e in state.topology_entries() if e.get("kind") in ("netdev", "rdma_link")
             for n in (e.get("name"), e.get("peer")) if n]
    if not state.topology_entries() and live:  # a live run (e.g. a VM run's guest): no topology
        return ok("state file", f"{path}: the live rxe-power run (pid "
                  f"{', '.join(map(str, live))}) records its own processes; no topology")
    gone = [n for n in names if n not in present]
    if names and not gone:
        return ok("state file", f"{path}: our {', '.join(names)} are present")
    if gone and len(gone) < len(names):
        return warn("state file", f"{path}: of ours, {', '.join(gone)} are gone",
                    "rxe-power teardown, then rxe-power setup")
    return warn("state file", f"leftover {path}: none of the {len(state.created)} objects it "
                "lists has a device left", "rxe-power teardown")


def check_mode(native_ok: bool, native_why: str, vm_ok: bool, vm_why: str,
               requested: str | None = None) -> Finding:
    """Which mode `rxe-power run/test` would use, and whether that path works."""
    try:
        setting = resolve("rxe-mode", requested)
    except RxePowerError as exc:
        return fail("mode", exc.problem, exc.fix)
    mode = setting.value
    if mode is Mode.AUTO:
        mode = Mode.NATIVE if native_ok else Mode.VM
    good, why = (native_ok, native_why) if mode is Mode.NATIVE else (vm_ok, vm_why)
    said = f"mode {mode} ({setting.value} from {setting.source}): {why}"
    if good:
        return ok("mode", f"rxe-power run/test would use {said}")
    if not native_ok and not vm_ok:
        return fail("mode", f"neither path is usable: {native_why}; VM: {vm_why}",
                    f"{NATIVE_FIX}; or fix the VM findings marked FAIL above")
    return fail("mode", f"{said}: not usable", NATIVE_FIX if mode is Mode.NATIVE else
                "fix the VM findings marked FAIL above, or use --mode auto")


# --- all of them ------------------------------------------------------------------------


def check_kernel_clients(modules_dir: Path | None) -> Finding:
    """nvme-rdma, nvmet-rdma, null_blk, nfsd, rpcrdma, nfsv4 in the kernel the run uses;
    nvme-cli, fio, rpc.mountd, mount.nfs."""
    from clients.kernel.requirements import missing

    gaps = missing(modules_dir)
    if not gaps:
        return ok("kernel clients", f"nvme-rdma, nvmet-rdma, null_blk, nfsd, rpcrdma, nfsv4 "
                  f"in {modules_dir}; nvme-cli, fio, rpc.mountd, mount.nfs")
    return warn("kernel clients", "; ".join(w for w, _ in gaps),
                "; ".join(dict.fromkeys(f for _, f in gaps)))


def run_checks(probe_kvm: bool = False, mode: str | None = None) -> list[Finding]:
    native = check_native()
    native_ok = native.status is Status.OK
    kernel_f, kernel = check_guest_kernel()
    vm_fs = [check_qemu(), check_vm_tools(), kernel_f,
             check_kvm(kernel, shutil.which(vm_tools.QEMU_BINARY), probe=probe_kvm)]
    failed = [f for f in vm_fs if f.status is Status.FAIL]
    vm_why = failed[0].detail if failed or kernel is None else f"guest kernel {kernel.version}"
    try:
        vm_needed = not native_ok or resolve("rxe-mode", mode).value is Mode.VM
    except RxePowerError:
        vm_needed = True
    if not vm_needed:  # native works: a broken VM path only matters for --mode vm
        vm_fs = [replace(f, status=Status.WARN, detail=f"{f.detail} (only --mode vm needs it)")
                 if f.status is Status.FAIL else f for f in vm_fs]
    return [check_root(), native, *vm_fs, check_rdma(native_ok), check_pyverbs(),
            *(check_package(d, Status(s), u) for d, s, u in PACKAGES),
            check_topology(native_ok, os.geteuid() == 0), check_state_file(),
            check_kernel_clients(Path("/lib/modules", os.uname().release) if native_ok
                                 else kernel.modules_dir if kernel else None),
            check_mode(native_ok, native.detail, not failed, vm_why, mode)]


def render(findings: Sequence[Finding]) -> list[str]:
    """One line per finding (status, name, detail, and the fix if not ok), then a summary."""
    width = max((len(f.name) for f in findings), default=0)
    lines = [f"{f.status!s:<4}  {f.name:<{width}}  {f.detail}"
             + (f"; fix: {f.fix}" if f.fix and f.status is not Status.OK else "")
             for f in findings]
    n = {s: sum(f.status is s for f in findings) for s in Status}
    return [*lines, f"doctor: {n[Status.FAIL]} FAIL, {n[Status.WARN]} warn, {n[Status.OK]} ok"]


def exit_code(findings: Sequence[Finding]) -> int:
    return 1 if any(f.status is Status.FAIL for f in findings) else 0


def cmd_doctor(args: argparse.Namespace, out: Printer) -> int:
    findings = run_checks(getattr(args, "probe_kvm", False), getattr(args, "doctor_mode", None))
    if getattr(args, "json", False):
        out(json.dumps([f.to_json() for f in findings], indent=1))
    else:
        out("\n".join(render(findings)))
    return exit_code(findings)


def add_parser(subparsers: Subcommands) -> argparse.ArgumentParser:
    p = subparsers.add_parser("doctor", help="check what the harness needs; say how to fix it")
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.add_argument("--probe-kvm", action="store_true", help="boot the short KVM probe if its "
                   f"verdict is not cached yet (at most {vm_accel.KVM_PROBE_TIMEOUT_S:g} s)")
    # dest is not `mode`: cli.main resolves args.mode itself and would exit 2 on a bad
    # RXE_POWER_MODE, which doctor must report as a finding instead
    p.add_argument("--mode", dest="doctor_mode", default=None,
                   help="judge this mode (auto, native or vm) instead of RXE_POWER_MODE")
    p.set_defaults(func=cmd_doctor)
    return p

"""Run a command inside a distribution kernel that has rdma_rxe, booted in QEMU by virtme-ng.

The host kernel may have no RDMA at all. Then the harness boots the newest installed
distribution kernel that ships ``rdma_rxe.ko`` (Debian: linux-image-amd64) with
virtme-ng (``vng``), which shares the host root file system read-only with the guest,
and runs one shell command in it. The guest command's exit code is propagated.

Shaped like the KUnit tool's runner: a request dataclass, a result dataclass, a runner
that prints the exact command, enforces its timeout from a waiter thread and keeps a
console log, and ``main(argv)``::

    python -m harness.vm [--timeout-s N] [--rwdir DIR]... [--log PATH] -- CMD...

QEMU's accelerator is chosen once per host boot: KVM is used only if a short probe
boot of the guest kernel under KVM reaches the kernel's expected "cannot mount root"
panic. KVM is known to hang (no output at all) or abort ("failed to set MSR 0x10a")
on some hosts, so software emulation (TCG) is the fallback. The verdict is cached in
``/run/rxe-power/accel.json`` (tmpfs, so it is forgotten at reboot).

Environment:
    RXE_POWER_VM_KERNEL  path to a vmlinuz to boot instead of the newest one in /boot
    RXE_POWER_VM_ACCEL   "kvm" or "tcg": skip the probe and use this accelerator
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from harness.core.errors import BoundExceeded, NoRxe, RxePowerError, SettingError
from harness.core.proc import STOP_GRACE_S, stop_child
from harness.core.settings import (
    VM_ACCEL_ENV,
    VM_KERNEL_ENV,
    parse_positive_float,
    runtime_dir,
    vm_accel_override,
    vm_kernel_override,
)
from harness.core.state import track, untrack

# ---------------------------------------------------------------------------
# Bounds, names and paths
# ---------------------------------------------------------------------------

VM_RUN_TIMEOUT_S = 1500.0  # whole guest command, boot included (TCG boot is ~15 s)
KVM_PROBE_TIMEOUT_S = 10.0  # probe boot under KVM; ~1 s when KVM works, ~4 s under TCG
GROUP_GONE_BOUND_S = 2.0  # how long to wait for SIGKILLed group members to vanish
READER_DRAIN_BOUND_S = 5.0  # how long to wait for the output pipe to close after exit

TIMEOUT_EXIT_CODE = 124  # as coreutils timeout(1)
HARNESS_ERROR_EXIT_CODE = 125  # the runner itself failed (as timeout(1) does)

KERNEL_ENV = VM_KERNEL_ENV
ACCEL_ENV = VM_ACCEL_ENV
ACCELS = ("kvm", "tcg")

DEFAULT_BOOT_DIR = Path("/boot")
DEFAULT_MODULES_ROOT = Path("/lib/modules")
DEV_KVM = Path("/dev/kvm")
ACCEL_CACHE_PATH = Path("/run/rxe-power/accel.json")
ACCEL_CACHE_FORMAT = 1

QEMU_BINARY = "qemu-system-x86_64"  # vng's own choice on an x86_64 host
BUSYBOX_NAMES = ("busybox-static", "busybox.static", "busybox")  # vng's search order
RXE_MODULE_NAMES = tuple(f"rdma_rxe.ko{sfx}" for sfx in ("", ".xz", ".zst", ".gz"))
RXE_MODULE_SUBDIR = Path("kernel/drivers/infiniband/sw/rxe")
GUEST_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

LINUX_VERSION_MARK = "Linux version"
PANIC_MARK = "Kernel panic"

VM_TOOLS_FIX = (
    "apt-get install virtme-ng deps: qemu-system-x86 busybox-static; "
    "pip install virtme-ng (into this project's venv)"
)
KERNEL_FIX = (
    "install a distribution kernel that ships rdma_rxe: on Debian "
    "`apt-get install linux-image-amd64`; on Ubuntu "
    "`apt-get install linux-image-generic linux-modules-extra-$(ver)`"
)

_BIN_DIRS = ("bin", "sbin")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VERSION_CHUNK = re.compile(r"\d+|\D+")


def _say(msg: str) -> None:
    print(f"rxe-power vm: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Guest kernel
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestKernel:
    version: str
    vmlinuz: Path
    modules_dir: Path


def natural_version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing digit runs as numbers: 6.1.0-10 > 6.1.0-9, 6.10 > 6.9."""
    return tuple(
        (1, int(chunk), "") if chunk.isdigit() else (0, 0, chunk)
        for chunk in _VERSION_CHUNK.findall(version)
    )


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Versions in natural order, oldest first."""
    return sorted(versions, key=natural_version_key)


def find_rxe_module(modules_dir: Path) -> Path | None:
    """The rdma_rxe module file (any compression) anywhere below `modules_dir`, or None."""
    if not modules_dir.is_dir():
        return None
    for name in RXE_MODULE_NAMES:  # the usual place first: no tree walk
        candidate = modules_dir / RXE_MODULE_SUBDIR / name
        if candidate.is_file():
            return candidate
    for root, _dirs, files in os.walk(modules_dir):  # does not follow build/ symlinks
        for name in RXE_MODULE_NAMES:
            if name in files:
                return Path(root) / name
    return None


def read_bzimage_version(path: Path) -> str | None:
    """The version string an x86 bzImage carries in its setup header, or None."""
    try:
        with path.open("rb") as f:
            head = f.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            (offset,) = struct.unpack_from("<H", head, 0x20E)
            f.seek(offset + 0x200)
            raw = f.read(256)
    except OSError:
        return None
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
    return text.split()[0] if text else None


def _override_kernel(raw: str, modules_root: Path, source: str) -> GuestKernel:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise SettingError(
            f"{source}={raw!r}: no such file",
            f"point {KERNEL_ENV} at a vmlinuz-<version> file, or unset it to use the "
            f"newest kernel in {DEFAULT_BOOT_DIR} that has rdma_rxe",
        )
    if not os.access(path, os.R_OK):
        raise SettingError(
            f"{source}={raw!r} is not readable by uid {os.geteuid()}",
            f"sudo chmod 0644 {path} (Ubuntu installs kernels 0600), or run as root",
        )
    if path.name.startswith("vmlinuz-"):
        version = path.name.removeprefix("vmlinuz-")
    else:
        version = read_bzimage_version(path) or ""
    if not version:
        raise SettingError(
            f"{source}={raw!r}: cannot tell the kernel version (name is not "
            "vmlinuz-<version> and the file has no bzImage version string)",
            f"point {KERNEL_ENV} at a file named vmlinuz-<version>",
        )
    modules_dir = modules_root / version
    if find_rxe_module(modules_dir) is None:
        raise NoRxe(
            f"{source}={raw!r}: kernel {version} has no rdma_rxe module under {modules_dir}",
            f"unset {KERNEL_ENV}, or {KERNEL_FIX.replace('$(ver)', version)}",
        )
    return GuestKernel(version, path, modules_dir)


def find_guest_kernel(
    boot_dir: Path = DEFAULT_BOOT_DIR,
    modules_root: Path = DEFAULT_MODULES_ROOT,
    override: str | None = None,
) -> GuestKernel:
    """The newest `boot_dir/vmlinuz-<ver>` whose `modules_root/<ver>` has rdma_rxe.

    `override` (default: environment RXE_POWER_VM_KERNEL) names a vmlinuz to use
    instead; it is validated the same way.
    """
    source = "argument override"
    if override is None:
        override = vm_kernel_override()
        source = f"environment variable {KERNEL_ENV}"
    if override is not None:
        return _override_kernel(override, modules_root, source)

    images = {
        p.name.removeprefix("vmlinuz-"): p
        for p in (boot_dir.glob("vmlinuz-*") if boot_dir.is_dir() else [])
        if p.is_file()
    }
    without_rxe: list[str] = []
    unreadable: list[Path] = []
    for version in reversed(sort_versions(images)):
        modules_dir = modules_root / version
        if find_rxe_module(modules_dir) is None:
            without_rxe.append(version)
        elif not os.access(images[version], os.R_OK):
            unreadable.append(images[version])
        else:
            return GuestKernel(version, images[version], modules_dir)

    if unreadable:
        raise NoRxe(
            f"kernel images with rdma_rxe exist but are not readable by uid {os.geteuid()}: "
            + ", ".join(str(p) for p in unreadable),
            f"sudo chmod 0644 {unreadable[0]} (Ubuntu installs kernels 0600), or run as root",
        )
    if without_rxe:
        newest = without_rxe[0]
        raise NoRxe(
            f"no kernel in {boot_dir} has an rdma_rxe module in {modules_root} "
            f"(checked: {', '.join(without_rxe)})",
            f"{KERNEL_FIX.replace('$(ver)', newest)}; or set {KERNEL_ENV} to a vmlinuz",
        )
    raise NoRxe(
        f"no vmlinuz-* kernel image in {boot_dir} to boot in the VM",
        f"{KERNEL_FIX}; or set {KERNEL_ENV} to a vmlinuz",
    )


# ---------------------------------------------------------------------------
# Host tools: vng, qemu, static busybox
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VmTools:
    vng: Path
    qemu: Path
    busybox: Path

    @property
    def bin_dir(self) -> Path:
        """vng's directory (the project venv's bin): goes first on PATH, host and guest."""
        return self.vng.parent


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (static or static-pie).

    This is what vng tests with `file -L` ("statically linked" / "static-pie linked").
    """
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
                return False
            end = "<" if ident[5] == 1 else ">"
            if ident[4] == 2:  # ELF64
                (phoff,) = struct.unpack_from(end + "Q", ident, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
            else:  # ELF32
                (phoff,) = struct.unpack_from(end + "I", ident, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 42)
            if phnum == 0 or phentsize < 4:
                return False
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return False
    pt_interp = 3
    for i in range(min(phnum, len(table) // phentsize)):
        (p_type,) = struct.unpack_from(end + "I", table, i * phentsize)
        if p_type == pt_interp:
            return False
    return True


def _which_exe(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def find_vm_tools() -> VmTools:
    """vng (next to this Python, else on PATH), qemu and a static busybox, or NoRxe."""
    vng = _which_exe(Path(sys.executable).parent / "vng")
    if vng is None:
        found = shutil.which("vng")
        vng = Path(found) if found else None
    if vng is None:
        raise NoRxe(
            f"virtme-ng's `vng` is neither next to {sys.executable} nor on PATH",
            VM_TOOLS_FIX,
        )
    if _which_exe(vng.parent / "virtme-run") is None and shutil.which("virtme-run") is None:
        raise NoRxe(
            f"`virtme-run` (which {vng} runs) is neither in {vng.parent} nor on PATH",
            VM_TOOLS_FIX,
        )
    qemu = shutil.which(QEMU_BINARY)
    if qemu is None:
        raise NoRxe(f"{QEMU_BINARY} is not on PATH", VM_TOOLS_FIX)
    busybox: Path | None = None
    for name in BUSYBOX_NAMES:  # PATH first, then the fixed dirs, as vng does
        hit = shutil.which(name)
        candidates = [Path(hit)] if hit else []
        candidates += [Path(p, d, name) for p in ("/usr/local", "/usr", "/") for d in _BIN_DIRS]
        busybox = next((c for c in candidates if c.is_file()), None)
        if busybox is not None:
            break
    if busybox is None:
        raise NoRxe("no busybox found (vng builds its initramfs with it)", VM_TOOLS_FIX)
    if not is_static_elf(busybox):
        raise NoRxe(
            f"{busybox} is not statically linked; vng fails with "
            "'a statically linked busybox could not be found'",
            VM_TOOLS_FIX,
        )
    return VmTools(vng=vng, qemu=Path(qemu), busybox=busybox)


# ---------------------------------------------------------------------------
# Accelerator choice
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{128 - code} ({name})"
    return str(code)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def parse_probe_output(
    text: str, exit_code: int | None, *, timeout_s: float = KVM_PROBE_TIMEOUT_S
) -> tuple[bool, str]:
    """Verdict on the KVM probe boot: (kvm works, reason).

    `text` is qemu's merged stdout+stderr (the guest's serial console included);
    `exit_code` is qemu's exit status, or None if the probe stopped it (hung, or
    stopped early once the guest reached its expected panic).

    KVM works when the guest kernel printed its banner and then got as far as the
    expected "VFS: Unable to mount root fs" panic (or qemu exited 0, which with
    -no-reboot and panic=-1 means it did). A guest that printed its banner but
    stalled before the panic for the whole bound does not count as working.
    """
    booted = LINUX_VERSION_MARK in text
    panicked = PANIC_MARK in text
    last = _last_line(text)
    if booted and (panicked or exit_code == 0):
        return True, "kvm probe booted the guest kernel to its expected root-fs panic; using kvm"
    if booted and exit_code is None:
        return False, (
            f"kvm probe: guest kernel started but did not reach its expected panic within "
            f"{timeout_s:g} s (stalled); using tcg"
        )
    if booted:
        return False, (
            f"qemu -accel kvm exited {_describe_exit(exit_code or 0)} after the guest kernel "
            f"started: {last}; using tcg"
        )
    if exit_code is None:
        if last:
            return False, (
                f"kvm probe printed no guest output in {timeout_s:g} s (qemu hung; its last "
                f"line: {last}); using tcg"
            )
        return False, f"kvm probe printed nothing in {timeout_s:g} s (qemu hung); using tcg"
    return False, (
        f"qemu -accel kvm exited {_describe_exit(exit_code)}: {last or 'no output'}; using tcg"
    )


def kvm_probe_argv(kernel: GuestKernel, qemu: Path) -> list[str]:
    """A minimal boot under KVM that panics at once for want of a root fs.

    `-cpu host` as vng itself uses with KVM: host CPU passthrough is what trips the
    MSR failures seen on some hosts, so the probe must include it.
    """
    return [
        str(qemu), "-accel", "kvm", "-cpu", "host,topoext=on",
        "-m", "256", "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-kernel", str(kernel.vmlinuz),
        "-append", "console=ttyS0 panic=-1 root=/dev/nonexist",
    ]


def probe_kvm(
    kernel: GuestKernel, qemu: Path, timeout_s: float = KVM_PROBE_TIMEOUT_S
) -> tuple[bool, str]:
    """Boot `kernel` under KVM for at most `timeout_s`; stop as soon as the verdict is in."""
    argv = kvm_probe_argv(kernel, qemu)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"cannot run {qemu} for the kvm probe ({exc}); using tcg"
    chunks: list[str] = []
    decided = threading.Event()  # set on the guest's panic or at end of output
    eof = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            chunks.append(line)
            if PANIC_MARK in line:
                decided.set()
        eof.set()
        decided.set()

    reader = threading.Thread(target=read, name="kvm-probe-reader", daemon=True)
    reader.start()
    exit_code: int | None = None
    try:
        decided.wait(timeout_s)
        if eof.is_set():
            try:
                exit_code = proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                exit_code = None
    finally:
        if proc.poll() is None:  # hung, or still printing its panic: it has told us enough
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_stragglers(proc.pid)
        reader.join(READER_DRAIN_BOUND_S)
        if proc.stdout is not None:
            proc.stdout.close()
    return parse_probe_output("".join(chunks), exit_code, timeout_s=timeout_s)


def default_accel_cache_path() -> Path:
    """/run/rxe-power/accel.json for root; else under $XDG_RUNTIME_DIR (also per boot)."""
    if os.geteuid() != 0 and (runtime := runtime_dir()) is not None:
        return runtime / "rxe-power" / "accel.json"
    return ACCEL_CACHE_PATH


def accel_cache_key(kernel: GuestKernel, qemu: Path) -> str:
    """Kernel version + qemu binary + its mtime: a qemu upgrade re-probes."""
    try:
        mtime_ns = qemu.stat().st_mtime_ns
    except OSError:
        mtime_ns = 0
    return f"{kernel.version}|{qemu}|{mtime_ns}"


def load_accel_cache(path: Path) -> dict[str, dict[str, str]]:
    """The cached verdicts; {} when absent. A corrupt file is reported and ignored."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        _say(f"cannot read accel cache {path} ({exc}); ignoring it")
        return {}
    try:
        data: Any = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != ACCEL_CACHE_FORMAT:
            raise ValueError(f"not a format-{ACCEL_CACHE_FORMAT} rxe-power accel cache")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise ValueError("'entries' is not an object")
        for key, entry in entries.items():
            if not (
                isinstance(entry, dict)
                and entry.get("accel") in ACCELS
                and isinstance(entry.get("reason"), str)
            ):
                raise ValueError(f"bad entry for {key!r}")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        _say(f"accel cache {path} is corrupt ({exc}); ignoring it, it will be rewritten")
        return {}
    return entries


def save_accel_cache(path: Path, entries: dict[str, dict[str, str]]) -> None:
    """Write atomically (rename), so a concurrent reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=".accel.", delete=False
        ) as tmp:
            json.dump({"format": ACCEL_CACHE_FORMAT, "entries": entries}, tmp, indent=1)
            tmp.write("\n")
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, path)
    except OSError as exc:
        _say(
            f"cannot write accel cache {path} ({exc}); the kvm probe will run again next "
            f"time (fix: run as root, or set {ACCEL_ENV}=kvm|tcg to skip the probe)"
        )


def _parse_accel(raw: str, source: str) -> str:
    value = raw.strip().lower()
    if value not in ACCELS:
        raise SettingError(
            f"bad value for the VM accelerator from {source}: {raw!r} is not kvm or tcg",
            f"set {ACCEL_ENV} to kvm or tcg, or unset it to probe",
        )
    return value


def choose_accel(
    kernel: GuestKernel,
    forced: str | None = None,
    *,
    qemu: Path | None = None,
    dev_kvm: Path = DEV_KVM,
    cache_path: Path | None = None,
    probe: Callable[[GuestKernel, Path, float], tuple[bool, str]] = probe_kvm,
    probe_timeout_s: float = KVM_PROBE_TIMEOUT_S,
) -> AccelChoice:
    """KVM if it demonstrably boots `kernel`, else TCG; the probe verdict is cached.

    `forced` (default: environment RXE_POWER_VM_ACCEL) skips the probe.
    """
    source = "argument forced"
    if forced is None:
        forced = vm_accel_override()
        source = f"environment variable {ACCEL_ENV}"
    if forced is not None:
        accel = _parse_accel(forced, source)
        return AccelChoice(accel, f"forced by {source}")

    if not dev_kvm.exists():
        return AccelChoice("tcg", f"{dev_kvm} does not exist (no KVM on this host); using tcg")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return AccelChoice(
            "tcg",
            f"{dev_kvm} is not read-writable by uid {os.geteuid()} (add the user to group "
            "kvm); using tcg",
        )
    if qemu is None:
        found = shutil.which(QEMU_BINARY)
        if found is None:
            raise NoRxe(f"{QEMU_BINARY} is not on PATH", VM_TOOLS_FIX)
        qemu = Path(found)

    path = cache_path if cache_path is not None else default_accel_cache_path()
    key = accel_cache_key(kernel, qemu)
    entries = load_accel_cache(path)
    hit = entries.get(key)
    if hit is not None:
        return AccelChoice(hit["accel"], f"{hit['reason']} [cached in {path}]")

    _say(f"probing KVM with kernel {kernel.version} (at most {probe_timeout_s:g} s, once per boot)")
    works, reason = probe(kernel, qemu, probe_timeout_s)
    accel = "kvm" if works else "tcg"
    entries[key] = {
        "accel": accel,
        "reason": reason,
        "probed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    save_accel_cache(path, entries)
    return AccelChoice(accel, reason)


# ---------------------------------------------------------------------------
# Process-group runner with a waiter thread and a console log
# ---------------------------------------------------------------------------


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_tree(pgid: int) -> dict[int, int]:
    """Live (non-zombie) processes in process group `pgid`: {pid: parent pid}, from /proc."""
    tree: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp ... after "pid (comm) "
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            tree[int(entry.name)] = int(fields[1])
    return tree


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    return sorted(_group_tree(pgid))


def _terminate_leaves(pgid: int) -> None:
    """SIGTERM the group's leaf processes (qemu), not their parents (vng, virtme-run).

    Each parent then sees its child exit, reaps it and exits in turn, so nothing is
    orphaned as a zombie for init to collect. Signalling the whole group at once kills
    vng and virtme-run before they reap qemu.
    """
    tree = _group_tree(pgid)
    parents = set(tree.values())
    leaves = [pid for pid in tree if pid not in parents and pid != pgid] or [pgid]
    for pid in leaves:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


def _kill_stragglers(pgid: int) -> None:
    """SIGKILL what is left of the group (e.g. qemu after vng died) and wait it out."""
    _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + GROUP_GONE_BOUND_S
    while (left := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    if left:
        _say(f"processes {left} of group {pgid} survived SIGKILL for {GROUP_GONE_BOUND_S:g} s")


@dataclass
class RunOutcome:
    exit_code: int
    timed_out: bool
    duration_s: float


def run_logged(
    argv: list[str],
    *,
    log_path: Path,
    timeout_s: float,
    header: Iterable[str] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    kill_grace_s: float = STOP_GRACE_S,
    echo: IO[str] | None = None,
) -> RunOutcome:
    """Run `argv` in its own session; copy its merged output to `echo` and `log_path`.

    A waiter thread enforces `timeout_s`: SIGTERM to the group's leaf processes (so
    each parent reaps its child), then SIGKILL to the whole process group if the leader
    is still alive after `kill_grace_s`; then SIGKILL to any stragglers. A timeout gives
    exit code 124; death by signal N gives 128+N.
    """
    out = echo if echo is not None else sys.stdout
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8", errors="replace", buffering=1) as log:
        for line in header:
            log.write(f"# {line}\n")
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        track(proc, f"vm ({Path(argv[0]).name})", group=True)  # cleanup ends its group
        timed_out = threading.Event()

        def wait() -> None:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out.set()
                stop_child(proc, 0.0, grace_s=kill_grace_s, group=True,
                           terminate=lambda ref: _terminate_leaves(ref.pid))
            _kill_stragglers(proc.pid)

        def pump() -> None:
            assert proc.stdout is not None
            echoing = True
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").replace("\r\n", "\n")
                with contextlib.suppress(ValueError):  # log closed after the drain bound
                    log.write(line)
                if echoing:
                    try:
                        out.write(line)
                        out.flush()
                    except (OSError, ValueError):  # our stdout went away; keep logging
                        echoing = False

        waiter = threading.Thread(target=wait, name="vm-waiter", daemon=True)
        reader = threading.Thread(target=pump, name="vm-reader", daemon=True)
        reader.start()
        waiter.start()
        try:
            waiter.join()
        except BaseException:  # Ctrl-C: do not leave a VM behind
            _signal_group(proc.pid, signal.SIGKILL)
            raise
        duration = time.monotonic() - start
        untrack(proc.pid)
        reader.join(READER_DRAIN_BOUND_S)
        if proc.stdout is not None and not reader.is_alive():
            proc.stdout.close()
        code = proc.returncode
        if timed_out.is_set():
            exit_code = TIMEOUT_EXIT_CODE
        elif code < 0:
            exit_code = 128 - code
        else:
            exit_code = code
        log.write(
            f"# finished: {'TIMED OUT, ' if timed_out.is_set() else ''}exit code {exit_code} "
            f"after {duration:.1f} s\n"
        )
    return RunOutcome(exit_code, timed_out.is_set(), duration)


# ---------------------------------------------------------------------------
# The VM run
# ---------------------------------------------------------------------------


@dataclass
class VmRequest:
    command: list[str]
    rw_dirs: list[Path]
    log_path: Path
    timeout_s: float = VM_RUN_TIMEOUT_S
    cpus: int = 2
    memory: str = "2G"
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = field(default_factory=Path.cwd)


@dataclass
class VmResult:
    exit_code: int
    accel: str
    kernel_version: str
    duration_s: float
    timed_out: bool
    log_path: Path
    vng_argv: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "accel": self.accel,
            "kernel_version": self.kernel_version,
            "duration_s": round(self.duration_s, 3),
            "timed_out": self.timed_out,
            "log_path": str(self.log_path),
            "vng_argv": list(self.vng_argv),
        }


def guest_env(req: VmRequest, bin_dir: Path) -> dict[str, str]:
    """The guest command's environment additions: PATH (venv bin first), then req.env."""
    env = {"PATH": f"{bin_dir}:{GUEST_SYSTEM_PATH}", "PYTHONUNBUFFERED": "1", **req.env}
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise SettingError(
                f"guest environment variable name {name!r} is not a shell identifier",
                "use names of letters, digits and _ that do not start with a digit",
            )
        if "\0" in value:
            raise SettingError(
                f"guest environment variable {name} contains a NUL byte", "remove it"
            )
    return env


def guest_shell_command(req: VmRequest, bin_dir: Path) -> str:
    """`cd <cwd> && exec env K=V ... <command>`, every word shell-quoted."""
    if not req.command:
        raise SettingError("empty guest command", "give the command to run after `--`")
    assignments = [shlex.quote(f"{k}={v}") for k, v in guest_env(req, bin_dir).items()]
    return " ".join(
        ["cd", shlex.quote(str(req.cwd)), "&&", "exec", "env", *assignments,
         shlex.join(req.command)]
    )


def build_vng_argv(req: VmRequest, kernel: GuestKernel, accel: str, vng: str) -> list[str]:
    """The vng command line for `req`. `vng`'s directory is also the guest PATH's head."""
    if accel not in ACCELS:
        raise SettingError(f"accelerator {accel!r} is not kvm or tcg", "pass kvm or tcg")
    argv = [vng, "-r", str(kernel.vmlinuz)]
    if accel == "tcg":
        argv.append("--disable-kvm")
    argv += ["--cpus", str(req.cpus), "--memory", req.memory]
    for d in req.rw_dirs:
        argv += ["--rwdir", str(d)]
    argv += ["--exec", guest_shell_command(req, Path(vng).parent)]
    return argv


def _host_env(bin_dir: Path) -> dict[str, str]:
    """This environment with vng's directory first on PATH (vng runs `virtme-run`)."""
    env = dict(os.environ)
    parts = [p for p in env.get("PATH", "").split(":") if p and p != str(bin_dir)]
    env["PATH"] = ":".join([str(bin_dir), *parts])
    return env


def _validate_request(req: VmRequest) -> None:
    if not req.timeout_s > 0:
        raise SettingError(f"timeout_s={req.timeout_s!r} must be > 0", "pass a positive timeout")
    if not req.cwd.is_dir():
        raise SettingError(f"working directory {req.cwd} does not exist", "run from a directory")
    for d in req.rw_dirs:
        if not d.is_dir():
            raise SettingError(
                f"--rwdir {d} is not a directory", "create it first, or drop the --rwdir"
            )


def run_in_vm(
    req: VmRequest,
    *,
    kernel: GuestKernel | None = None,
    accel: AccelChoice | None = None,
    tools: VmTools | None = None,
) -> VmResult:
    """Boot the guest kernel with vng and run `req.command` in it; never raises on timeout."""
    req.cwd = req.cwd.absolute()
    req.rw_dirs = [d.absolute() for d in req.rw_dirs]
    req.log_path = req.log_path if req.log_path.is_absolute() else req.cwd / req.log_path
    _validate_request(req)
    tools = tools or find_vm_tools()
    kernel = kernel or find_guest_kernel()
    accel = accel or choose_accel(kernel, qemu=tools.qemu)
    argv = build_vng_argv(req, kernel, accel.accel, str(tools.vng))
    _say(f"kernel {kernel.version}, accel {accel.accel} ({accel.reason})")
    _say(f"command (with {tools.bin_dir} first on PATH): {shlex.join(argv)}")
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    header = [
        "rxe-power vm console log",
        f"started: {started}",
        f"kernel: {kernel.version} ({kernel.vmlinuz})",
        f"accel: {accel.accel} ({accel.reason})",
        f"command: {shlex.join(argv)}",
        f"guest command: {shlex.join(req.command)}",
        f"timeout_s: {req.timeout_s:g}",
    ]
    outcome = run_logged(
        argv,
        log_path=req.log_path,
        timeout_s=req.timeout_s,
        header=header,
        env=_host_env(tools.bin_dir),
        cwd=req.cwd,
    )
    if outcome.timed_out:
        _say(
            f"timed out: the VM ran {outcome.duration_s:.1f} s of its {req.timeout_s:g} s "
            f"bound and was killed (exit code {TIMEOUT_EXIT_CODE}); console log: {req.log_path}"
        )
    return VmResult(
        exit_code=outcome.exit_code,
        accel=accel.accel,
        kernel_version=kernel.version,
        duration_s=outcome.duration_s,
        timed_out=outcome.timed_out,
        log_path=req.log_path,
        vng_argv=argv,
    )


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _positive_float(raw: str) -> float:
    try:
        return parse_positive_float(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.vm",
        description="Run CMD as root in a QEMU guest that boots a kernel with rdma_rxe "
        "(virtme-ng). Exits with CMD's exit code; 124 on timeout; 125 if the VM could "
        "not be started.",
    )
    p.add_argument("--timeout-s", type=_positive_float, default=VM_RUN_TIMEOUT_S,
                   help=f"bound on the whole run, boot included (default {VM_RUN_TIMEOUT_S:g})")
    p.add_argument("--rwdir", type=Path, action="append", default=None, metavar="DIR",
                   help="host dir the guest may write (repeatable; default: the cwd)")
    p.add_argument("--log", type=Path, default=None, metavar="PATH",
                   help="console log (default: results/vm-console.log under the cwd)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    return p


def request_from_argv(argv: list[str], cwd: Path | None = None) -> VmRequest:
    """Parse the command line into a VmRequest (argparse exits 2 on a usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no command given: python -m harness.vm [options] -- CMD...")
    here = cwd if cwd is not None else Path.cwd()
    return VmRequest(
        command=command,
        rw_dirs=args.rwdir if args.rwdir else [here],
        log_path=args.log if args.log is not None else here / "results" / "vm-console.log",
        timeout_s=args.timeout_s,
        cwd=here,
    )


def main(argv: list[str] | None = None) -> int:
    req = request_from_argv(sys.argv[1:] if argv is None else argv)
    try:
        result = run_in_vm(req)
    except RxePowerError as exc:
        _say(str(exc))
        return HARNESS_ERROR_EXIT_CODE
    if result.timed_out:
        _say(str(BoundExceeded("the guest command in the VM", "--timeout-s", req.timeout_s,
                               f"the guest command {shlex.join(req.command)}; console log "
                               f"{result.log_path}")))
    else:
        _say(
            f"guest exited {result.exit_code} after {result.duration_s:.1f} s "
            f"(accel {result.accel}); console log: {result.log_path}"
        )
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())

"""QEMU's accelerator: KVM only if a short probe boot under KVM reaches the guest
kernel's expected "cannot mount root" panic, else software emulation (TCG).

KVM is known to hang (no output at all) or abort ("failed to set MSR 0x10a") on some
hosts, so TCG is the fallback. The verdict is cached in ``/run/rxe-power/accel.json``
(tmpfs, so it is forgotten at reboot).

Environment:
    RXE_POWER_VM_ACCEL   "kvm" or "tcg": skip the probe and use this accelerator
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import NoRxe, SettingError
from harness.core.proc import STOP_GRACE_S
from harness.core.settings import VM_ACCEL_ENV, runtime_dir, vm_accel_override
from harness.vm.kernel import GuestKernel
from harness.vm.messages import say
from harness.vm.process import READER_DRAIN_BOUND_S, kill_stragglers, signal_group
from harness.vm.tools import QEMU_BINARY, VM_TOOLS_FIX

KVM_PROBE_TIMEOUT_S = 10.0  # probe boot under KVM; ~1 s when KVM works, ~4 s under TCG
ACCEL_ENV = VM_ACCEL_ENV
ACCELS = ("kvm", "tcg")
DEV_KVM = Path("/dev/kvm")
ACCEL_CACHE_PATH = Path("/run/rxe-power/accel.json")
ACCEL_CACHE_FORMAT = 1
LINUX_VERSION_MARK = "Linux version"
PANIC_MARK = "Kernel panic"


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
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_stragglers(proc.pid)
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
        say(f"cannot read accel cache {path} ({exc}); ignoring it")
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
        say(f"accel cache {path} is corrupt ({exc}); ignoring it, it will be rewritten")
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
        say(
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

    say(f"probing KVM with kernel {kernel.version} (at most {probe_timeout_s:g} s, once per boot)")
    works, reason = probe(kernel, qemu, probe_timeout_s)
    accel = "kvm" if works else "tcg"
    entries[key] = {
        "accel": accel,
        "reason": reason,
        "probed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    save_accel_cache(path, entries)
    return AccelChoice(accel, reason)

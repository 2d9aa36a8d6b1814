"""Collecting a run's provenance (harness.system.provenance) from the system it runs on.

    vm_facts_json(accel, reason)       # the VM runner: the guest's RXE_POWER_VM_FACTS
    prov = collect()                   # once per run, in the process that runs the topology

Everything is read from fields: dpkg-query's formatted output, /proc/sys/kernel/tainted,
/proc/meminfo, `modinfo -F`/`-n`, /sys/module/rdma_rxe, our build's stamp, `git
rev-parse`/`status --porcelain`. A piece that cannot be read is None in the record and
named in its `problems` (with the errno or the command's message): collecting never stops
a run. `Sources` says where each piece is read; tests give recorded copies.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.settings import Mode, PeerPlacement, RemovalMode, resolve
from harness.system import command, rxe_module
from harness.system.command import CmdResult
from harness.system.elf_notes import build_id_note, note_build_id
from harness.system.provenance import (
    Accel,
    FaultModel,
    KernelFacts,
    LaunchFacts,
    Machine,
    Packages,
    PeerHost,
    Provenance,
    ProvenanceError,
    RxeModule,
    SourceTree,
    VmFacts,
)
from harness.system.rxe_module import Loaded

PROBE_TIMEOUT_S = 20.0  # one dpkg-query, modinfo or git call (under TCG, over 9p)
MAX_MODULE_BYTES = 64 << 20  # an rdma_rxe.ko is ~0.25 MB (stripped) to ~10 MB (debug info)
REPO = Path(__file__).resolve().parents[2]
USER_PACKAGES = ("rdma-core", "ibverbs-providers", "perftest")
DPKG_FORMAT = "${Package}\\t${Version}\\t${db:Status-Abbrev}\\n"


def _live_run(argv: list[str]) -> CmdResult:
    return command.run(argv, timeout_s=PROBE_TIMEOUT_S, check=False)


@dataclass(frozen=True)
class Sources:
    """Where the collection reads (the live system by default)."""

    run: Callable[[list[str]], CmdResult] = _live_run
    tainted: Path = Path("/proc/sys/kernel/tainted")
    meminfo: Path = Path("/proc/meminfo")
    loadavg: Path = Path("/proc/loadavg")
    sys_module: Path = rxe_module.SYS_MODULE
    cache_root: Path = rxe_module.CACHE_ROOT
    repo: Path = REPO
    release: str = field(default_factory=lambda: os.uname().release)
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)


class _Problems(list[str]):
    def add(self, what: str, exc: BaseException | str) -> None:
        text = exc.problem if isinstance(exc, RxePowerError) else str(exc)
        self.append(f"{what}: {text}"[:500])


def _read(path: Path, problems: _Problems) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        problems.add(str(path), f"[errno {exc.errno}] {os.strerror(exc.errno or 0)}")
        return None


def _run(src: Sources, argv: list[str], problems: _Problems) -> CmdResult | None:
    try:
        return src.run(argv)
    except RxePowerError as exc:
        problems.add(" ".join(argv[:3]), exc)
        return None


# --- parsers of recorded output ---------------------------------------------------------------


def parse_dpkg(stdout: str) -> dict[str, str | None]:
    """dpkg-query -W -f DPKG_FORMAT: package -> its version when installed (status ii),
    None when dpkg knows it but it is not installed. Packages dpkg does not know at all
    are absent (dpkg-query names them on stderr and exits 1)."""
    out: dict[str, str | None] = {}
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or not parts[0]:
            continue
        name, version, status = parts
        out[name] = version if status.startswith("ii") and version else None
    return out


def parse_tainted(text: str) -> int:
    """/proc/sys/kernel/tainted: one decimal integer."""
    value = int(text.strip())
    if value < 0:
        raise ValueError(f"{text.strip()!r} is negative")
    return value


def parse_meminfo_mib(text: str, field: str = "MemTotal") -> int | None:
    """A field of /proc/meminfo (MemTotal, MemAvailable ...), in MiB."""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == field:
            words = rest.split()
            if len(words) == 2 and words[1] == "kB" and words[0].isdigit():
                return int(words[0]) // 1024
    return None


def parse_stamp(text: str) -> tuple[str, str] | None:
    """Our build's stamp (ci/build-rxe-disassociate.sh): "<source package version>
    <patch sum>"."""
    words = text.split()
    return (words[0], words[1]) if len(words) == 2 else None


def kernel_packages(release: str) -> tuple[str, ...]:
    """The packages that may hold a kernel image of `release` (Debian, then Ubuntu)."""
    return (f"linux-image-{release}", f"linux-image-{release}-unsigned",
            f"linux-image-unsigned-{release}")


def stock_module_packages(release: str) -> tuple[str, ...]:
    """The packages that may hold the stock rdma_rxe.ko (Ubuntu keeps it in
    linux-modules-extra; Debian in the image package)."""
    return (f"linux-modules-extra-{release}", f"linux-modules-{release}",
            *kernel_packages(release))


def first_installed(versions: Mapping[str, str | None],
                    names: tuple[str, ...]) -> tuple[str | None, str | None]:
    for name in names:
        if versions.get(name):
            return name, versions[name]
    return None, None


# --- the pieces -------------------------------------------------------------------------------


def dpkg_versions(src: Sources, problems: _Problems) -> dict[str, str | None]:
    names = [*USER_PACKAGES, *stock_module_packages(src.release)]
    res = _run(src, ["dpkg-query", "-W", "-f", DPKG_FORMAT, *names], problems)
    if res is None:
        return {}
    if res.returncode not in (0, 1):  # 1: some names unknown (the others are printed)
        problems.add("dpkg-query", f"exit {res.returncode}: {res.stderr.strip()[:200]}")
    return parse_dpkg(res.stdout)


def read_module_file(path: Path) -> bytes:
    """A .ko file, whole (bounded: MAX_MODULE_BYTES)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size > MAX_MODULE_BYTES:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))  # not a module
        return f.read(MAX_MODULE_BYTES + 1)


def _loaded_note(src: Sources, problems: _Problems) -> bytes | None:
    """The loaded module's GNU build-id note (root may read it; absent: none)."""
    path = src.sys_module / "notes" / ".note.gnu.build-id"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.add(str(path), f"[errno {exc.errno}] {os.strerror(exc.errno or 0)}")
        return None


def _modinfo(src: Sources, args: list[str], problems: _Problems) -> str | None:
    res = _run(src, ["modinfo", *args], problems)
    if res is None:
        return None
    if res.returncode != 0:
        problems.add(f"modinfo {' '.join(args)}", f"exit {res.returncode}: "
                     f"{res.stderr.strip()[:200]}")
        return None
    return res.stdout.strip() or None


def module_facts(src: Sources, versions: Mapping[str, str | None],
                 problems: _Problems) -> RxeModule:
    """The loaded rdma_rxe, the file it came from (ours: the cached build; stock: the one
    modinfo names for this kernel), that file's sha256, whether it is the loaded one and
    where its source came from."""
    try:
        facts = rxe_module.module_facts(src.sys_module)
    except RxePowerError as exc:
        problems.add("rdma_rxe in sysfs", exc)
        facts = rxe_module.ModuleFacts(False, None, None, "")
    ours = rxe_module.our_build_path(src.release, src.cache_root)
    ours_src = _modinfo(src, ["-F", "srcversion", str(ours)], problems) \
        if ours.is_file() else None
    kind = rxe_module.classify(facts, ours_src)
    if kind is Loaded.NONE:
        return RxeModule(kind, None, None, None, None, None, None, None, None, None, "")
    patch = source_package = source_version = None
    if kind is Loaded.OURS:
        path: Path | None = ours
        file_src = ours_src
        stamp = _read(ours.parent / "stamp", problems)
        parsed = parse_stamp(stamp) if stamp is not None else None
        if stamp is not None and parsed is None:
            problems.add(str(ours.parent / "stamp"), f"not '<version> <patch>': {stamp!r}")
        series = ".".join(src.release.split(".")[:2])
        source_package = f"linux-source-{series}"
        source_version, patch = parsed if parsed else (None, None)
    elif kind is Loaded.STOCK:
        name = _modinfo(src, ["-n", rxe_module.MODULE], problems)
        path = Path(name) if name else None
        file_src = _modinfo(src, ["-F", "srcversion", name], problems) if name else None
        source_package, source_version = first_installed(
            versions, stock_module_packages(src.release))
    else:  # someone else's out-of-tree build: no file of ours to name
        path, file_src = None, None
        problems.add("rdma_rxe", f"the loaded module is not ours nor the distribution's "
                     f"(version {facts.version!r}, taint {facts.taint!r}): no file to hash")
    digest = file_note = None
    if path is not None:
        try:
            data = read_module_file(path)
            digest, file_note = hashlib.sha256(data).hexdigest(), build_id_note(data)
        except OSError as exc:
            problems.add(f"sha256 of {path}", f"[errno {exc.errno}] "
                         f"{os.strerror(exc.errno or 0)}")
    loaded_note = _loaded_note(src, problems)
    # the file is the loaded module: same GNU build-id (every module has one), else same
    # srcversion (a module with MODULE_VERSION has one; Debian's in-tree rdma_rxe has not)
    if loaded_note is not None and file_note is not None:
        matches: bool | None = loaded_note == file_note
    else:
        matches = (file_src == facts.srcversion) if file_src and facts.srcversion else None
    return RxeModule(kind, str(path) if path else None, digest, matches,
                     note_build_id(loaded_note) if loaded_note else None, facts.srcversion,
                     facts.version, source_package, source_version, patch, facts.taint)


def kernel_facts(src: Sources, versions: Mapping[str, str | None],
                 problems: _Problems) -> KernelFacts:
    package, version = first_installed(versions, kernel_packages(src.release))
    if package is None:
        problems.add("kernel package", f"none of {', '.join(kernel_packages(src.release))} "
                     "is installed")
    text = _read(src.tainted, problems)
    tainted = -1
    if text is not None:
        try:
            tainted = parse_tainted(text)
        except ValueError as exc:
            problems.add(str(src.tainted), str(exc))
    return KernelFacts(src.release, package, version, tainted)


def machine_facts(src: Sources, problems: _Problems) -> Machine:
    text = _read(src.meminfo, problems)
    load = _read(src.loadavg, problems)
    return Machine(src.cpus, parse_meminfo_mib(text) if text is not None else None,
                   src.release, parse_loadavg_1m(load) if load is not None else None)


def parse_loadavg_1m(text: str) -> float | None:
    """The first field of /proc/loadavg ("0.52 0.40 0.31 1/123 4567"); None if malformed."""
    try:
        value = float(text.split(maxsplit=1)[0])
    except (ValueError, IndexError):
        return None
    return value if 0 <= value < 1e6 else None


def tree_facts(src: Sources) -> SourceTree:
    """The rxe-power tree's commit and whether it has changes (git; fsmonitor off, no
    optional locks: the tree may be read-only, as in the guest)."""
    git = ["git", "-C", str(src.repo), "--no-optional-locks", "-c", "core.fsmonitor=false"]
    problems = _Problems()
    head = _run(src, [*git, "rev-parse", "--verify", "HEAD"], problems)
    if head is None or head.returncode != 0:
        why = "; ".join(problems) or (head.stderr.strip()[:300] if head else "")
        return SourceTree(None, None, f"git rev-parse HEAD in {src.repo}: {why}")
    commit = head.stdout.strip()
    status = _run(src, [*git, "status", "--porcelain=v1", "--untracked-files=normal"], problems)
    if status is None or status.returncode != 0:
        why = "; ".join(problems) or (status.stderr.strip()[:300] if status else "")
        return SourceTree(commit, None, f"git status in {src.repo}: {why}")
    return SourceTree(commit, bool(status.stdout.strip()), "")


# --- what the VM runner hands over (provenance.VmFacts; the CLI's LaunchFacts: harness.cli) ---


def vm_facts_json(accel: str, reason: str, src: Sources | None = None) -> dict[str, Any]:
    """What the VM runner puts in the guest's RXE_POWER_VM_FACTS."""
    host = machine_facts(src or Sources(), _Problems())
    return {"accel": Accel(accel).value, "accel_reason": reason,
            "host": {"cpus": host.cpus, "memory_mib": host.memory_mib, "kernel": host.kernel,
                     "load_1m": host.load_1m}}


# --- the whole record ---------------------------------------------------------------------


def _handed(read: Callable[[], dict[str, Any] | None], parse: Callable[[object], Any],
            what: str, problems: _Problems) -> Any:
    try:
        raw = read()
        return None if raw is None else parse(raw)
    except RxePowerError as exc:  # SettingError (not JSON) or ProvenanceError (shape)
        problems.add(what, exc)
        return None


def collect(src: Sources | None = None, environ: Mapping[str, str] | None = None, *,
            faults: tuple[FaultModel, ...] = (), peer_host: PeerHost | None = None,
            ) -> Provenance:
    """The provenance of a run on this kernel, now (call it once the module is loaded).
    `faults`: the fault models of the run's transitions (power.plan's Transition.fault_model;
    empty for a run that makes none, such as `check`). `peer_host`: the peer's own kernel,
    when the run's peer has one (the placement is then the launch's: guest)."""
    src = src or Sources()
    problems = _Problems()
    launch: LaunchFacts | None = _handed(lambda: settings.launch_facts(environ),
                                         LaunchFacts.from_json, settings.LAUNCH_ENV, problems)
    in_vm = settings.in_vm(environ)
    vm: VmFacts | None = _handed(lambda: settings.vm_facts(environ), VmFacts.from_json,
                                 settings.VM_FACTS_ENV, problems) if in_vm else None
    mode = Mode.VM if in_vm else Mode.NATIVE
    if launch is not None and launch.mode is mode:
        mode_reason = launch.mode_reason
    elif in_vm:
        mode_reason = "in the guest the VM runner booted (the host's reason was not handed over)"
    else:
        mode_reason = "this kernel, run without rxe-power's launch (a test session or the API)"
    if in_vm:
        accel, accel_reason = ((vm.accel, vm.accel_reason) if vm is not None else
                               (Accel.UNKNOWN, "the VM runner did not say"))
    else:
        accel, accel_reason = Accel.NONE, "native: no QEMU of ours"
    versions = dpkg_versions(src, problems)
    if launch is not None and launch.removal is not None:  # the CLI chose it (its invocation)
        removal_requested, removal_source = launch.removal, "the command's invocation"
    else:  # a test session's own (its --removal, RXE_POWER_REMOVAL, ini, default)
        try:
            requested = resolve("removal", environ=environ)
            removal_requested, removal_source = requested.value, requested.source
        except RxePowerError as exc:
            problems.add("the requested removal mode", exc)
            removal_requested, removal_source = RemovalMode.BLOCK, "unreadable"
    module = module_facts(src, versions, problems)
    return Provenance(
        mode, mode_reason, accel, accel_reason, machine_facts(src, problems),
        vm.host if vm is not None else None, kernel_facts(src, versions, problems), module,
        rxe_module.removal_of(module.kind), removal_requested,
        (launch.removal_reason if launch is not None and launch.removal_reason else
         f"from {removal_source}"),
        Packages(*(versions.get(p) for p in USER_PACKAGES)),
        launch.tree if launch is not None else tree_facts(src),
        PeerPlacement.GUEST if peer_host is not None else PeerPlacement.SAME_KERNEL,
        tuple(dict.fromkeys(faults)), tuple(problems),
        launch.command_line if launch is not None else "",
        launch.peer_reason if launch is not None and launch.peer_reason else "not said",
        peer_host)


__all__ = ["LaunchFacts", "ProvenanceError", "Sources", "VmFacts", "collect", "tree_facts",
           "vm_facts_json"]

"""What produced a results file: the run's provenance, typed.

    prov = provenance_collect.collect()    # once per run, where the topology runs
    header["provenance"] = prov.to_json()  # results.jsonl's header, bench.json, run.json ...
    Provenance.from_json(d)                # ProvenanceError naming the field that is wrong

Comparing and showing them: harness.system.provenance_text.

A results file says which kernel and rdma_rxe made it (the guest's, in VM mode: the
collection runs in the process that runs the topology), which removal mode the module
gave, native or VM (the host's choice and reason, handed to the guest in RXE_POWER_LAUNCH
with the source tree, and the VM runner's accelerator in RXE_POWER_VM_FACTS), the user
space that drove it (rdma-core, perftest), the machine, where the peer HCA sits and
which fault model the transitions follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, TypeVar

from harness.core.errors import RxePowerError
from harness.core.settings import LAUNCH_ENV, VM_FACTS_ENV, Mode, PeerPlacement, RemovalMode
from harness.system.rxe_module import Loaded

# 5: peer_host. 4: faults a list (was one). 3: peer_reason. 2: module.build_id. All still
# read: 1 (before build_id) with build_id None, 1 and 2 with peer_reason "".
PROVENANCE_SCHEMA = 5
READABLE_PROVENANCE_SCHEMAS = (1, 2, 3, 4, 5)
MAX_TEXT = 2000  # a reason or problem longer than this is cut (a header stays small)
E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")

# /proc/sys/kernel/tainted: bit -> the letter the kernel prints (Documentation/admin-guide/
# tainted-kernels.rst); TAINT_FLAGS (rxe_module) names the letters a module carries
KERNEL_TAINT_BITS = "PFSRMBUDAWCIOELKXTN"


class Accel(StrEnum):
    """What ran the kernel of the run."""

    KVM = "kvm"  # a guest under QEMU with KVM
    TCG = "tcg"  # a guest under QEMU's software emulation
    NONE = "none"  # native: no QEMU of ours between the run and the machine
    UNKNOWN = "unknown"  # a guest whose runner did not say (RXE_POWER_VM_FACTS missing)


class FaultModel(StrEnum):
    """What a transition does to the device."""

    # the shim deletes and re-adds rxe0 from user space (`rdma link delete/add`, carrier
    # off/on); no process or device is frozen, the kernel keeps running throughout
    USERSPACE_REMOVAL = "userspace-removal"
    # the mlx5 order: a real suspend of the local kernel (pm_test at `devices`) in which our
    # rdma_rxe's sleep callbacks unregister rxe0 in the device-suspend phase (user space
    # and freezable kernel threads frozen, kernel ULPs' remove() inside the suspend) and
    # register it again at resume (harness.system.sleep_support)
    MLX5_ORDER = "mlx5-order"
    # a real suspend of the local kernel (pm_test) with rxe untouched: the ib_device and
    # its QPs stay, its users are frozen and thawed
    KERNEL_SUSPEND = "kernel-suspend"


class ProvenanceError(RxePowerError):
    """A provenance record of the wrong shape (names the field)."""


@dataclass(frozen=True)
class Machine:
    cpus: int
    memory_mib: int | None  # MemTotal of /proc/meminfo (None: unreadable)
    kernel: str = ""  # the release it runs (the host's, for the host of a VM)
    load_1m: float | None = None  # /proc/loadavg's 1-minute load when the run started
    #                               (None: unreadable, or a file written before it was kept)


@dataclass(frozen=True)
class SourceTree:
    commit: str | None  # `git rev-parse HEAD` of the rxe-power tree
    dirty: bool | None  # tracked files changed or untracked files present
    problem: str = ""  # why commit or dirty is unknown


@dataclass(frozen=True)
class KernelFacts:
    release: str
    package: str | None  # the Debian/Ubuntu package of its image
    package_version: str | None
    tainted: int  # /proc/sys/kernel/tainted when the run started (-1: unreadable)

    @property
    def taint_flags(self) -> str:
        return taint_letters(self.tainted)


@dataclass(frozen=True)
class RxeModule:
    kind: Loaded  # none, stock, ours (the cached disassociate build) or other
    path: str | None  # the .ko whose sha256 is given
    sha256: str | None
    file_matches_loaded: bool | None  # the file's GNU build-id (or srcversion) is the loaded's
    build_id: str | None  # the loaded module's GNU build-id (/sys/module/rdma_rxe/notes)
    srcversion: str | None  # the loaded module's (/sys/module/rdma_rxe/srcversion)
    version: str | None  # its MODULE_VERSION (ours: rxe-power-disassociate-<variant>)
    source_package: str | None  # ours: linux-source-X.Y; stock: the package holding it
    source_version: str | None
    patch: str | None  # ours: the build's stamp of ci/rxe_disassociate_patch.py
    taint: str  # /sys/module/rdma_rxe/taint, e.g. "OE"


@dataclass(frozen=True)
class Packages:
    """dpkg-query's versions (None: not installed)."""

    rdma_core: str | None
    ibverbs_providers: str | None  # holds the rxe provider (librxe)
    perftest: str | None


@dataclass(frozen=True)
class PeerHost:
    """The peer's own kernel (the peer guest's service's hello), and the local boot id."""

    kernel: str  # its release
    boot_id: str  # /proc/sys/kernel/random/boot_id there
    local_boot_id: str  # and here
    device: str  # the peer HCA, e.g. rxe1
    vcpus: int | None = None  # the peer guest's size, as booted (None: not said)
    memory: str | None = None


@dataclass(frozen=True)
class Provenance:
    mode: Mode  # native or vm (never auto)
    mode_reason: str
    accel: Accel
    accel_reason: str
    machine: Machine  # where the topology ran (the guest in VM mode)
    host: Machine | None  # VM mode: the machine that ran QEMU
    kernel: KernelFacts
    module: RxeModule
    removal: RemovalMode | None  # what the loaded module gives (None: not ours nor stock)
    removal_requested: RemovalMode
    removal_reason: str
    packages: Packages
    tree: SourceTree
    peer: PeerPlacement
    faults: tuple[FaultModel, ...]  # the fault models of the run's transitions, in order
    problems: tuple[str, ...] = ()  # what could not be read, and why
    command_line: str = ""  # the rxe-power command as given on the host ("" : not the CLI)
    peer_reason: str = ""  # why the peer sits where `peer` says ("": a file written before)
    peer_host: PeerHost | None = None  # the peer's kernel when not this one (schema 5)
    schema: int = PROVENANCE_SCHEMA

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _to_json(self)
        return out

    @classmethod
    def from_json(cls, d: object) -> Provenance:
        r = JsonReader(d, "provenance")
        schema = r.integer("schema")
        if schema not in READABLE_PROVENANCE_SCHEMAS:
            raise ProvenanceError(f"provenance schema {schema}; this rxe-power reads "
                                  f"{', '.join(map(str, READABLE_PROVENANCE_SCHEMAS))}",
                                  "read it with the rxe-power that wrote it")
        mode = r.enum("mode", Mode)
        if mode is Mode.AUTO:
            raise ProvenanceError("provenance.mode is auto", "a run is native or vm")
        host = r.get("host")
        return cls(mode, r.text("mode_reason"), r.enum("accel", Accel), r.text("accel_reason"),
                   _machine(r.get("machine"), "provenance.machine"),
                   None if host is None else _machine(host, "provenance.host"),
                   _kernel(r.sub("kernel")), _module(r.sub("module"), schema),
                   r.opt("removal", lambda v, w: _enum(v, RemovalMode, w)),
                   r.enum("removal_requested", RemovalMode), r.text("removal_reason"),
                   _packages(r.sub("packages")), _tree(r.sub("tree")),
                   r.enum("peer", PeerPlacement), _faults(r, schema),
                   tuple(_list_of_str(r.get("problems"), "provenance.problems")),
                   r.text("command_line"), r.text("peer_reason") if schema >= 3 else "",
                   _peer_host(r.get("peer_host")) if schema >= 5 else None, schema)


def _peer_host(d: object) -> PeerHost | None:
    r = None if d is None else JsonReader(d, "provenance.peer_host")
    return None if r is None else PeerHost(r.text("kernel"), r.text("boot_id"),
                                           r.text("local_boot_id"), r.text("device"),
                                           r.opt_int("vcpus"), r.opt_str("memory"))


def _faults(r: JsonReader, schema: int) -> tuple[FaultModel, ...]:
    """Schema 4 lists the run's fault models; before, one model was recorded for the run."""
    if schema < 4:
        return (r.enum("faults", FaultModel),)
    value = r.get("faults")
    if not isinstance(value, list):
        raise ProvenanceError(f"provenance.faults is not a list: {str(value)[:60]!r}",
                              "a results file written by rxe-power")
    return tuple(_enum(v, FaultModel, "provenance.faults") for v in value)


def taint_letters(tainted: int) -> str:
    """The kernel's taint letters of a /proc/sys/kernel/tainted value ("?" when unknown)."""
    if tainted < 0:
        return "?"
    letters = "".join(c for i, c in enumerate(KERNEL_TAINT_BITS) if tainted >> i & 1)
    unnamed = tainted >> len(KERNEL_TAINT_BITS)
    return letters + (f"+{unnamed << len(KERNEL_TAINT_BITS):#x}" if unnamed else "")


@dataclass(frozen=True)
class LaunchFacts:
    """The CLI's decisions before the run (harness.cli.invocation's; RXE_POWER_LAUNCH in the
    process that runs it)."""

    mode: Mode
    mode_reason: str
    tree: SourceTree
    command_line: str = ""
    removal_reason: str = ""
    removal: RemovalMode | None = None  # None: the command left it to the test suite's
    peer_reason: str = ""  # why the peer sits where it does (harness.cli.peer_option)
    peer: PeerPlacement = PeerPlacement.SAME_KERNEL  # where it sits

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "mode_reason": self.mode_reason,
                "tree": {"commit": self.tree.commit, "dirty": self.tree.dirty,
                         "problem": self.tree.problem},
                "command_line": self.command_line, "removal_reason": self.removal_reason,
                "removal": self.removal.value if self.removal else None,
                "peer_reason": self.peer_reason, "peer": self.peer.value}

    @classmethod
    def from_json(cls, d: object) -> LaunchFacts:
        r = JsonReader(d, LAUNCH_ENV)
        t = r.sub("tree")
        removal = r.d.get("removal")  # absent in a record of before it was handed over
        return cls(r.enum("mode", Mode), r.text("mode_reason"),
                   SourceTree(t.opt_str("commit"), t.opt_bool("dirty"), t.text("problem")),
                   r.text("command_line"), r.text("removal_reason"),
                   None if removal is None else r.enum("removal", RemovalMode),
                   r.text("peer_reason") if "peer_reason" in r.d else "",
                   r.enum("peer", PeerPlacement) if "peer" in r.d else PeerPlacement.SAME_KERNEL)


@dataclass(frozen=True)
class VmFacts:
    """The VM runner's accelerator and the host that ran QEMU (RXE_POWER_VM_FACTS)."""

    accel: Accel
    accel_reason: str
    host: Machine

    @classmethod
    def from_json(cls, d: object) -> VmFacts:
        r = JsonReader(d, VM_FACTS_ENV)
        h = r.sub("host")
        return cls(r.enum("accel", Accel), r.text("accel_reason"),
                   Machine(h.integer("cpus"), h.opt_int("memory_mib"), h.text("kernel"),
                           _load(h)))


# --- JSON -----------------------------------------------------------------------------------


def _to_json(obj: object) -> Any:
    if isinstance(obj, StrEnum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [_to_json(x) for x in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_json(getattr(obj, f.name)) for f in fields(obj)}  # type: ignore[arg-type]
    return obj


class JsonReader:
    """Typed access to one JSON object, naming `where` in every error."""

    def __init__(self, d: object, where: str) -> None:
        if not isinstance(d, dict):
            raise ProvenanceError(f"{where} is not a JSON object", "a results file of "
                                  "rxe-power carries an object there")
        self.d: dict[str, Any] = d
        self.where = where

    def get(self, key: str) -> Any:
        if key not in self.d:
            raise ProvenanceError(f"{self.where}.{key} is missing", "a results file of "
                                  "rxe-power carries every field")
        return self.d[key]

    def sub(self, key: str) -> JsonReader:
        return JsonReader(self.get(key), f"{self.where}.{key}")

    def text(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str):
            raise ProvenanceError(f"{self.where}.{key} is not a string", "")
        return v[:MAX_TEXT]

    def integer(self, key: str) -> int:
        v = self.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ProvenanceError(f"{self.where}.{key} is not an integer", "")
        return v

    def enum(self, key: str, kind: type[E]) -> E:
        return _enum(self.get(key), kind, f"{self.where}.{key}")

    def opt(self, key: str, parse: Callable[[Any, str], T]) -> T | None:
        v = self.get(key)
        return None if v is None else parse(v, f"{self.where}.{key}")

    def opt_str(self, key: str) -> str | None:
        return self.opt(key, _text)

    def opt_int(self, key: str) -> int | None:
        return self.opt(key, _count)

    def opt_bool(self, key: str) -> bool | None:
        return self.opt(key, _flag)


def _enum(v: object, kind: type[E], where: str) -> E:
    try:
        if not isinstance(v, str):
            raise ValueError(v)
        return kind(v)
    except ValueError:
        raise ProvenanceError(f"{where} is {v!r}, not one of "
                              f"{', '.join(m.value for m in kind)}",
                              "read it with the rxe-power that wrote it") from None


def _text(v: object, where: str) -> str:
    if not isinstance(v, str):
        raise ProvenanceError(f"{where} is not a string", "")
    return v[:MAX_TEXT]


def _count(v: object, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ProvenanceError(f"{where} is not a count (an integer >= 0)", "")
    return v


def _flag(v: object, where: str) -> bool:
    if not isinstance(v, bool):
        raise ProvenanceError(f"{where} is not true or false", "")
    return v


def _list_of_str(v: object, where: str) -> list[str]:
    if not isinstance(v, list):
        raise ProvenanceError(f"{where} is not a list", "")
    return [_text(x, f"{where}[{i}]") for i, x in enumerate(v)]


def _machine(d: object, where: str) -> Machine:
    r = JsonReader(d, where)
    cpus = r.integer("cpus")
    if cpus < 1:
        raise ProvenanceError(f"{where}.cpus is {cpus}", "")
    return Machine(cpus, r.opt_int("memory_mib"), r.text("kernel"), _load(r))


def _load(r: JsonReader) -> float | None:
    """A machine's load_1m: absent (written before it was kept) or null reads None."""
    v = r.d.get("load_1m")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e6:
        raise ProvenanceError(f"{r.where}.load_1m is not a load average (a number >= 0)", "")
    return float(v)


def _kernel(r: JsonReader) -> KernelFacts:
    return KernelFacts(r.text("release"), r.opt_str("package"), r.opt_str("package_version"),
                       r.integer("tainted"))


def _module(r: JsonReader, schema: int) -> RxeModule:
    return RxeModule(r.enum("kind", Loaded), r.opt_str("path"), r.opt_str("sha256"),
                     r.opt_bool("file_matches_loaded"),
                     r.opt_str("build_id") if schema >= 2 else None, r.opt_str("srcversion"),
                     r.opt_str("version"), r.opt_str("source_package"),
                     r.opt_str("source_version"), r.opt_str("patch"), r.text("taint"))


def _packages(r: JsonReader) -> Packages:
    return Packages(r.opt_str("rdma_core"), r.opt_str("ibverbs_providers"),
                    r.opt_str("perftest"))


def _tree(r: JsonReader) -> SourceTree:
    return SourceTree(r.opt_str("commit"), r.opt_bool("dirty"), r.text("problem"))

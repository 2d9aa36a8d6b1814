"""Which rdma_rxe is loaded, and loading the one a removal mode needs.

Two removal modes (`--removal`):

- `disassociate`: our rdma_rxe.ko, built by ci/build-rxe-disassociate.sh from the
  kernel's own source with a `disassociate_ucontext` callback. Deleting a held device
  completes at once; each holder gets IBV_EVENT_DEVICE_FATAL and EIO from later verbs
  calls: what a real HCA (mlx5, mlx4, irdma, hns) does when it goes away. Its variant
  `pm` also has the mlx5 order's system-sleep callbacks, which do nothing until a
  transition names a device in their parameter (harness.system.sleep_support).
- `block`: the distribution's rdma_rxe. Deleting a held device blocks until every
  holder closes it (ib_uverbs_remove_one waits), today's behaviour.

Which module is loaded is decided from fields, never from log text: our build carries
MODULE_VERSION "rxe-power-disassociate-<variant>" (/sys/module/rdma_rxe/version) and so
a srcversion, compared with the cached .ko's; the stock module has neither version
nor the out-of-tree taint flag 'O' (/sys/module/rdma_rxe/taint). Loading ours taints
the kernel ('O' out of tree, 'E' unsigned): expected, reported once, not a failure.

Swapping modules unloads rdma_rxe, which would delete every rxe device with it: it is
done only when no software RDMA device (one without a parent bus device in sysfs, as
rxe's) exists. This runs inside the kernel that will use the module (the guest in VM
mode), before the topology is built. Standard library only.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import platform
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from harness.core.errors import NoRxe, OsCallError, RxePowerError
from harness.core.settings import RemovalMode, parse_removal
from harness.system import command

__all__ = [
    "Loaded",
    "ModuleFacts",
    "RemovalMode",
    "Step",
    "classify",
    "current_removal",
    "default_removal",
    "ensure",
    "module_facts",
    "parse_removal",
    "plan",
]

MODULE = "rdma_rxe"
SYS_MODULE = Path("/sys/module") / MODULE
SYS_INFINIBAND = Path("/sys/class/infiniband")
CACHE_ROOT = Path("/var/lib/rxe-power/rxe-disassociate")
BUILD_SCRIPT = "ci/build-rxe-disassociate.sh"
VERSION_PREFIX = "rxe-power-disassociate-"  # as ci/rxe_disassociate_patch.py writes it
OURS_VARIANT = "pm"  # `full` and the sleep callbacks (inert unless armed): one module
MODPROBE_TIMEOUT_S = 30.0
MODINFO_TIMEOUT_S = 10.0
TAINT_FLAGS = {"O": "out-of-tree module", "E": "unsigned module", "P": "proprietary module",
               "F": "force-loaded", "C": "staging driver"}
# finit_module(2) and delete_module(2): called directly so a failure carries its errno
SYSCALLS = {"x86_64": (313, 176), "aarch64": (273, 106)}
O_NONBLOCK = os.O_NONBLOCK


class Loaded(StrEnum):
    NONE = "none"  # rdma_rxe not loaded
    STOCK = "stock"  # the distribution's module
    OURS = "ours"  # our disassociate build, the one in the cache
    OTHER = "other"  # out of tree but not our current build (an old or other variant)


@dataclass(frozen=True)
class ModuleFacts:
    """What sysfs says about the loaded rdma_rxe (all None/"" when it is not loaded)."""

    loaded: bool
    version: str | None  # /sys/module/rdma_rxe/version
    srcversion: str | None  # /sys/module/rdma_rxe/srcversion
    taint: str  # /sys/module/rdma_rxe/taint, e.g. "OE"


@dataclass(frozen=True)
class OurBuild:
    """The cached module for this kernel (ci/build-rxe-disassociate.sh's output)."""

    path: Path
    srcversion: str | None


class Step(StrEnum):
    UNLOAD = "unload"
    LOAD_OURS = "load ours"
    LOAD_STOCK = "load stock"


def classify(facts: ModuleFacts, ours_srcversion: str | None) -> Loaded:
    if not facts.loaded:
        return Loaded.NONE
    if facts.version and facts.version.startswith(VERSION_PREFIX):
        if (facts.version == VERSION_PREFIX + OURS_VARIANT and ours_srcversion
                and facts.srcversion == ours_srcversion):
            return Loaded.OURS
        return Loaded.OTHER
    if "O" in facts.taint:
        return Loaded.OTHER
    return Loaded.STOCK


def plan(want: RemovalMode, loaded: Loaded) -> list[Step]:
    """The steps from what is loaded to what `want` needs (empty: nothing to do)."""
    target = Loaded.OURS if want is RemovalMode.DISASSOCIATE else Loaded.STOCK
    if loaded is target:
        return []
    load = Step.LOAD_OURS if target is Loaded.OURS else Step.LOAD_STOCK
    return [load] if loaded is Loaded.NONE else [Step.UNLOAD, load]


def describe_taint(taint: str) -> str:
    if not taint:
        return "no taint"
    names = ", ".join(TAINT_FLAGS.get(c, c) for c in taint)
    return f"taint {taint} ({names})"


def removal_of(loaded: Loaded) -> RemovalMode | None:
    return {Loaded.OURS: RemovalMode.DISASSOCIATE, Loaded.STOCK: RemovalMode.BLOCK}.get(loaded)


# --- reading the system ---------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OsCallError(f"cannot read {path}", exc.errno or 0,
                          "run as root on a kernel with sysfs mounted") from exc


def module_facts(sys_module: Path = SYS_MODULE) -> ModuleFacts:
    if not sys_module.is_dir():
        return ModuleFacts(False, None, None, "")
    return ModuleFacts(True, _read(sys_module / "version"), _read(sys_module / "srcversion"),
                       _read(sys_module / "taint") or "")


def software_rdma_devices(sysfs: Path = SYS_INFINIBAND) -> list[str]:
    """RDMA devices without a parent bus device (rxe, siw): the ones an rdma_rxe unload
    would delete, or might."""
    if not sysfs.is_dir():
        return []
    return sorted(d.name for d in sysfs.iterdir() if not (d / "device").exists())


def _modinfo(field: str, target: str) -> str | None:
    try:
        res = subprocess.run(["modinfo", "-F", field, target], capture_output=True, text=True,
                             timeout=MODINFO_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as exc:
        raise OsCallError("cannot run modinfo", exc.errno or errno_mod.ENOENT,
                          "apt-get install kmod") from exc
    except subprocess.TimeoutExpired:
        raise RxePowerError(f"modinfo {target} did not finish within MODINFO_TIMEOUT_S="
                            f"{MODINFO_TIMEOUT_S:g}s", "check the module file") from None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def safe_path(path: Path) -> bool:
    """Owned by root and not group/world-writable, and so is every folder above it."""
    p = path
    while True:
        try:
            st = p.lstat()
        except OSError:
            return False
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
        if p == p.parent:
            return True
        p = p.parent


def our_build_path(release: str, cache_root: Path = CACHE_ROOT) -> Path:
    """Where ci/build-rxe-disassociate.sh caches our module (variant OURS_VARIANT)."""
    return cache_root / release / OURS_VARIANT / "rdma_rxe.ko"


def our_build(release: str | None = None, cache_root: Path = CACHE_ROOT) -> OurBuild | None:
    """Our cached module for this kernel, None when it was not built. Raises when the
    cached file is there but not safe to load as root."""
    release = release or os.uname().release
    path = our_build_path(release, cache_root)
    if not path.is_file():
        return None
    if not safe_path(path):
        raise RxePowerError(f"{path} (or a folder above it) is not root-owned or is "
                            "group/world-writable: refusing to load it",
                            f"remove {path.parent} as root and run {BUILD_SCRIPT} again")
    return OurBuild(path, _modinfo("srcversion", str(path)))


def missing_build_error(release: str) -> RxePowerError:
    return RxePowerError(
        f"--removal disassociate needs our rdma_rxe.ko for kernel {release}, and "
        f"{our_build_path(release)} does not exist",
        f"on the machine (the VM host in VM mode), as root: {BUILD_SCRIPT} {release} "
        "(ci/bootstrap.sh runs it); or use --removal block")


# --- changing it ----------------------------------------------------------------------------


def _syscall(name: str, *args: object, module: str = MODULE) -> None:
    nums = SYSCALLS.get(platform.machine())
    if nums is None:
        raise RxePowerError(f"{name}: no syscall number known for {platform.machine()}",
                            f"add it to SYSCALLS in {__name__}, or use --removal block")
    libc = ctypes.CDLL(None, use_errno=True)
    num = nums[0] if name == "finit_module" else nums[1]
    if libc.syscall(num, *args) != 0:
        err = ctypes.get_errno()
        fix = {errno_mod.EEXIST: "rdma_rxe is already loaded; unload it first",
               errno_mod.EBUSY: "a process or device still uses rdma_rxe; close it",
               errno_mod.EWOULDBLOCK: "a process or device still uses rdma_rxe; close it",
               errno_mod.EPERM: "run as root (and without module signature enforcement)",
               errno_mod.ENOEXEC: f"the module is not for this kernel: run {BUILD_SCRIPT}",
               }.get(err, "see the kernel log (dmesg)")
        raise OsCallError(f"{name}({module})", err, fix)


def _modprobe(*args: str) -> None:
    argv = ["modprobe", *args]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=MODPROBE_TIMEOUT_S,
                             stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as exc:
        raise OsCallError("cannot run modprobe", exc.errno or errno_mod.ENOENT,
                          "apt-get install kmod") from exc
    except subprocess.TimeoutExpired:
        raise RxePowerError(f"`{' '.join(argv)}` did not finish within MODPROBE_TIMEOUT_S="
                            f"{MODPROBE_TIMEOUT_S:g}s", "see the kernel log (dmesg)") from None
    if res.returncode != 0:
        raise RxePowerError(f"`{' '.join(argv)}` failed (exit {res.returncode}): "
                            f"{res.stderr.strip()}",
                            "install the kernel's modules (Debian: linux-image-amd64; Ubuntu: "
                            "linux-modules-extra-$(uname -r)) or use the VM mode")


def _unload() -> None:
    devices = software_rdma_devices()
    if devices:
        raise RxePowerError(
            f"switching rdma_rxe needs it unloaded, which would delete the software RDMA "
            f"devices {', '.join(devices)} (unloading rxe deletes its devices)",
            "tear the topology down first (rxe-power teardown; `rdma link delete` what is "
            "not ours), or run with the --removal mode the loaded module gives")
    _syscall("delete_module", MODULE.encode(), O_NONBLOCK)


def unload_module(module: str) -> None:
    """Unload a module of ours by name (not rdma_rxe: see _unload)."""
    _syscall("delete_module", module.encode(), O_NONBLOCK, module=module)


def _load_ours(build: OurBuild) -> None:
    load_module_file(build.path, MODULE)


def load_module_file(path: Path, module: str, params: str = "") -> None:
    """Load a module file of ours (its dependencies through modprobe first) with
    `params` ("name=value ..."); errors carry the errno and name the module."""
    deps = _modinfo("depends", str(path)) or ""
    for dep in filter(None, deps.split(",")):
        _modprobe(dep)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OsCallError(f"cannot open {path}", exc.errno or 0,
                          f"run {BUILD_SCRIPT} again as root") from exc
    try:
        _syscall("finit_module", fd, params.encode(), 0, module=module)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ModuleReport:
    removal: RemovalMode
    loaded: Loaded
    facts: ModuleFacts
    steps: tuple[Step, ...]
    path: str | None

    def line(self) -> str:
        what = (f"our disassociate build ({self.path})" if self.loaded is Loaded.OURS
                else "the distribution's module")
        did = f"; did: {', '.join(self.steps)}" if self.steps else ""
        taint = describe_taint(self.facts.taint)
        expected = " (expected for our build, not a failure)" if self.facts.taint else ""
        return f"removal mode {self.removal}: rdma_rxe is {what}, {taint}{expected}{did}"

    def to_json(self) -> dict[str, object]:
        return {"removal": str(self.removal), "loaded": str(self.loaded),
                "taint": self.facts.taint, "version": self.facts.version,
                "steps": [str(s) for s in self.steps], "path": self.path}


def current_removal() -> RemovalMode | None:
    """The mode the loaded module gives (None: not loaded, or not a module we know)."""
    build = our_build()
    return removal_of(classify(module_facts(), build.srcversion if build else None))


def default_removal(release: str | None = None) -> RemovalMode:
    """disassociate where our module can be had for this kernel, else block."""
    try:
        return RemovalMode.DISASSOCIATE if our_build(release) else RemovalMode.BLOCK
    except RxePowerError:
        return RemovalMode.BLOCK


def ensure(want: RemovalMode) -> ModuleReport:
    """Load the rdma_rxe that `want` needs (unloading the other one when no software RDMA
    device exists). Run as root, in the kernel that will use it, before the topology."""
    release = os.uname().release
    build = our_build(release)
    if want is RemovalMode.DISASSOCIATE and build is None:
        raise missing_build_error(release)
    ours_src = build.srcversion if build else None
    steps = plan(want, classify(module_facts(), ours_src))
    for step in steps:
        if step is Step.UNLOAD:
            _unload()
        elif step is Step.LOAD_OURS:
            assert build is not None
            _load_ours(build)
        else:
            _modprobe(MODULE)
    facts = module_facts()
    loaded = classify(facts, ours_src)
    if removal_of(loaded) is not want:
        raise RxePowerError(f"after {', '.join(steps) or 'nothing'}, rdma_rxe is {loaded} "
                            f"(version {facts.version!r}, taint {facts.taint!r}), not what "
                            f"--removal {want} needs", f"see the kernel log; {BUILD_SCRIPT}")
    return ModuleReport(want, loaded, facts, tuple(steps),
                        str(build.path) if build and loaded is Loaded.OURS else None)


def rxe_module_loaded() -> bool:
    """Is some rdma_rxe (stock or ours) loaded in the running kernel?"""
    return SYS_MODULE.is_dir()


def load_rxe_module() -> None:
    """Load the distribution's rdma_rxe when none is loaded (the topology needs one;
    which variant, stock or ours, is `ensure`'s business)."""
    if rxe_module_loaded():
        return
    res = command.run(["modprobe", MODULE], check=False)
    if res.returncode != 0 or not rxe_module_loaded():
        release = os.uname().release
        raise NoRxe(
            f"the running kernel {release} cannot load {MODULE}: "
            f"{res.stderr.strip() or 'no module'}",
            "on Ubuntu: apt-get install linux-modules-extra-$(uname -r); "
            "or use the VM mode (rxe-power ... --mode vm, or RXE_POWER_MODE=vm), which boots "
            "a distro kernel that has the module in QEMU",
        )

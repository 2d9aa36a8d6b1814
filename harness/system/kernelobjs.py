"""Kernel objects of the kernel clients (nvmet configfs items, null_blk disks, nvme
controllers, a prohibit route): their names, where they live, and how to remove one.

Every object is written to the state file (harness/state.py) before it is made, as one
entry of a kind below; teardown and `rxe-power cleanup` call `undo(entry)` newest first.
Entries come from a file root may have been handed, so every field is validated before
it becomes part of a path or a command: an entry that fails validation is refused, and
nothing is touched for it.

    kind            fields                                   removal
    configfs_mount  path                                     umount (only if empty of ours)
    nullb           name                                     power=0, rmdir the configfs item
    nvmet_subsys    nqn                                      rmdir subsystems/NQN
    nvmet_ns        nqn, nsid                                enable=0, rmdir namespaces/NSID
    nvmet_port      port                                     rmdir ports/PORT
    nvmet_link      port, nqn                                unlink ports/PORT/subsystems/NQN
    nvme_ctrl       nqn, traddr, trsvcid, host_traddr        delete_controller of the one
                                                             controller matching all four
    route_prohibit  dst, table, metric[, type]               ip route del TYPE ... (TYPE:
                                                             prohibit, the default, or
                                                             unreachable)
    nfsd_*, nfs_*   (NFS over RDMA)                          harness.system.nfsobjs.undo
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import NotOurs, OsCallError, RxePowerError, TopologyError
from harness.core.printer import NULL, Printer
from harness.core.proc import run_bounded
from harness.core.state import StateFile
from harness.core.state_entries import KERNEL_CLIENT_KINDS
from harness.system import nfsobjs, paging_objs

CONFIGFS = Path("/sys/kernel/config")
NVMET = CONFIGFS / "nvmet"
NULLB = CONFIGFS / "nullb"
SYS_NVME = Path("/sys/class/nvme")
NVME_DELETE_TIMEOUT_S = 30.0  # delete_controller of a controller that may be reconnecting
UMOUNT_TIMEOUT_S = 10.0
CTRL_GONE_TIMEOUT_S = 2.0  # delete_controller returned -> its sysfs directory gone
CTRL_GONE_POLL_S = 0.02

KINDS = KERNEL_CLIENT_KINDS  # the state file's kinds for them (harness.core.state_entries)
SYS_MODULE = Path("/sys/module")
# the module parameters a kernel-client scenario may change (for its duration; put back)
MODULE_PARAMS_WE_SET = frozenset({"nvme_core.admin_timeout"})
GUARD_ROUTE_TYPES = ("prohibit", "unreachable")  # the route guard's (route_prohibit entries)
OUR_PREFIX = "rxpw"  # every null_blk name and subsystem NQN we make carries it
_NQN_RE = re.compile(r"nqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+:" + OUR_PREFIX + r"[a-z0-9._-]{1,64}")
_NULLB_RE = re.compile(OUR_PREFIX + r"[a-z0-9_]{1,24}")
_CTRL_RE = re.compile(r"nvme[0-9]{1,5}")


def valid_nqn(nqn: object) -> str:
    if not isinstance(nqn, str) or not _NQN_RE.fullmatch(nqn):
        raise NotOurs(f"{nqn!r} is not an NQN rxe-power makes (nqn.YYYY-MM.domain:"
                      f"{OUR_PREFIX}...)", "remove that entry from the state file by hand")
    return nqn


def valid_nullb(name: object) -> str:
    if not isinstance(name, str) or not _NULLB_RE.fullmatch(name):
        raise NotOurs(f"{name!r} is not a null_blk name rxe-power makes ({OUR_PREFIX}...)",
                      "remove that entry from the state file by hand")
    return name


def valid_int(value: object, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise NotOurs(f"{what} {value!r} is not an integer in {lo}..{hi}",
                      "remove that entry from the state file by hand")
    return value


def valid_addr(value: object, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise NotOurs(f"{what} {value!r} is not an IPv4 address",
                      "remove that entry from the state file by hand") from None


def valid_ctrl(name: object) -> str:
    if not isinstance(name, str) or not _CTRL_RE.fullmatch(name):
        raise NotOurs(f"{name!r} is not an nvme controller name (nvmeN)",
                      "check /sys/class/nvme")
    return name


# --- nvme controllers (host side) --------------------------------------------------------


@dataclass(frozen=True)
class NvmeCtrl:
    """One nvme controller as /sys/class/nvme/NAME shows it."""

    name: str
    state: str
    transport: str
    subsysnqn: str
    address: dict[str, str]  # traddr, trsvcid, host_traddr... (parsed, not displayed)

    def matches(self, nqn: str, traddr: str, trsvcid: str, host_traddr: str) -> bool:
        return (self.transport == "rdma" and self.subsysnqn == nqn
                and self.address.get("traddr") == traddr
                and self.address.get("trsvcid") == trsvcid
                and self.address.get("host_traddr") == host_traddr)


def parse_address(text: str) -> dict[str, str]:
    """`traddr=198.18.0.2,trsvcid=4420,host_traddr=198.18.0.1` -> a dict (sysfs `address`)."""
    out: dict[str, str] = {}
    for part in text.strip().split(","):
        key, eq, val = part.partition("=")
        if eq and key:
            out[key.strip()] = val.strip()
    return out


def read_attr(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def nvme_ctrls(root: Path = SYS_NVME) -> list[NvmeCtrl]:
    """Every nvme controller now (of any transport; foreign ones included)."""
    out = []
    try:
        names = sorted(p.name for p in root.iterdir() if _CTRL_RE.fullmatch(p.name))
    except OSError:
        return []
    for name in names:
        d = root / name
        out.append(NvmeCtrl(name, read_attr(d / "state"), read_attr(d / "transport"),
                            read_attr(d / "subsysnqn"), parse_address(read_attr(d / "address"))))
    return out


def delete_ctrl(name: str, timeout_s: float = NVME_DELETE_TIMEOUT_S) -> None:
    """delete_controller, bounded (the write blocks until the controller is gone; a writer
    stuck in the kernel is killed and left, never waited on).

    Measured (6.1): on a controller the kernel is already deleting (nvme_rdma_remove_one
    on the device's removal) the write returns success and does nothing, and the file is
    gone after the first write (EACCES): a controller still there afterwards is an error
    naming its state, not a success."""
    name = valid_ctrl(name)
    path = SYS_NVME / name / "delete_controller"
    proc = run_bounded(["sh", "-c", 'echo 1 > "$1"', "sh", str(path)], timeout_s,
                       step=f"delete of nvme controller {name}",
                       bound_name="NVME_DELETE_TIMEOUT_S",
                       outstanding=f"{name} state {read_attr(SYS_NVME / name / 'state')!r}")
    end = time.monotonic() + CTRL_GONE_TIMEOUT_S
    while (SYS_NVME / name).exists() and time.monotonic() < end:
        time.sleep(CTRL_GONE_POLL_S)
    if (SYS_NVME / name).exists():
        why = proc.stderr.strip() if proc.returncode != 0 else "the write returned"
        raise TopologyError(f"delete of nvme controller {name} failed: {why}; it is still "
                            f"there in state {read_attr(SYS_NVME / name / 'state')!r}",
                            "a controller in 'deleting' is being deleted by the kernel "
                            f"itself: wait for it; else run `nvme disconnect -d {name}` and "
                            "read dmesg")


# --- removal -----------------------------------------------------------------------------


def _rmdir(path: Path, what: str) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OsCallError(f"rmdir {path} ({what})", exc.errno or 0,
                          "something still uses it: remove its children first") from None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OsCallError(f"write {value!r} to {path}", exc.errno or 0,
                          "read dmesg for the kernel's reason") from None


@dataclass(frozen=True)
class _Roots:
    """Where the kernel objects live (tests point these at a temporary tree)."""

    configfs: Path
    sys_nvme: Path
    sys_module: Path

    @property
    def nvmet(self) -> Path:
        return self.configfs / "nvmet"


_Undo = Callable[[dict[str, Any], Printer, _Roots], None]


def undo(entry: dict[str, Any], out: Printer = NULL, configfs: Path = CONFIGFS,
         sys_nvme: Path = SYS_NVME, sys_module: Path = SYS_MODULE) -> None:
    """Remove the object one state-file entry names (if it is still there): the entry's
    kind picks its remover from UNDO_BY_KIND (NFS and paging kinds: their own modules)."""
    kind = entry["kind"]
    roots = _Roots(configfs, sys_nvme, sys_module)
    if kind in nfsobjs.NFS_KINDS:
        nfsobjs.undo(entry, out)
        return
    if kind in paging_objs.PAGING_KINDS:
        left = paging_objs.undo(entry, out)
        if left:
            raise RxePowerError(left, "the kernel still holds it: reboot the VM (or the "
                                "machine) to be rid of it, then `rxe-power cleanup`")
        return
    remover = UNDO_BY_KIND.get(kind)
    if remover is None:
        raise TopologyError(f"unknown kernel-object kind {kind!r}", "use a newer rxe-power")
    remover(entry, out, roots)


def _undo_nvme_ctrl(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    nqn = valid_nqn(entry["nqn"])
    want = (nqn, valid_addr(entry["traddr"], "traddr"),
            str(valid_int(entry["trsvcid"], 1, 65535, "trsvcid")),
            valid_addr(entry["host_traddr"], "host_traddr"))
    for ctrl in nvme_ctrls(roots.sys_nvme):
        if ctrl.matches(*want):
            delete_ctrl(ctrl.name)
            out(f"deleted nvme controller {ctrl.name} ({nqn})")


def _undo_nvmet_link(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    port = valid_int(entry["port"], 1, 65535, "nvmet port")
    link = roots.nvmet / "ports" / str(port) / "subsystems" / valid_nqn(entry["nqn"])
    if link.is_symlink():
        link.unlink()
        out(f"unlinked nvmet port {port} from {entry['nqn']}")


def _undo_nvmet_port(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    port = valid_int(entry["port"], 1, 65535, "nvmet port")
    if _rmdir(roots.nvmet / "ports" / str(port), "nvmet port"):
        out(f"removed nvmet port {port}")


def _undo_nvmet_ns(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    nsid = valid_int(entry["nsid"], 1, 1 << 16, "nsid")
    ns = roots.nvmet / "subsystems" / valid_nqn(entry["nqn"]) / "namespaces" / str(nsid)
    if ns.is_dir():
        _write(ns / "enable", "0")
        _rmdir(ns, "nvmet namespace")
        out(f"removed nvmet namespace {entry['nqn']}/{nsid}")


def _undo_nvmet_subsys(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    if _rmdir(roots.nvmet / "subsystems" / valid_nqn(entry["nqn"]), "nvmet subsystem"):
        out(f"removed nvmet subsystem {entry['nqn']}")


def _undo_nullb(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    item = roots.configfs / "nullb" / valid_nullb(entry["name"])
    if item.is_dir():
        _write(item / "power", "0")
        _rmdir(item, "null_blk device")
        out(f"removed null_blk {entry['name']}")


def _undo_configfs_mount(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    configfs = roots.configfs
    if Path(entry["path"]) != configfs:
        raise NotOurs(f"configfs mount entry {entry['path']!r} is not {configfs}",
                      "remove that entry from the state file by hand")
    if os.path.ismount(configfs):
        res = subprocess.run(["umount", str(configfs)], capture_output=True, text=True,
                             timeout=UMOUNT_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if res.returncode == 0:
            out(f"unmounted {configfs}")
        else:  # busy with others' items: leave it (mounting it was harmless)
            out(f"left {configfs} mounted: {res.stderr.strip()}")


def _undo_route_prohibit(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    dst = valid_addr(entry["dst"], "route dst")
    table = str(valid_int(entry["table"], 1, 2**31, "route table"))
    metric = str(valid_int(entry["metric"], 1, 2**31, "route metric"))
    rtype = entry.get("type", "prohibit")
    if rtype not in GUARD_ROUTE_TYPES:
        raise NotOurs(f"route type {rtype!r} is not one rxe-power adds",
                      "remove that entry from the state file by hand")
    res = subprocess.run(["ip", "route", "del", rtype, dst, "table", table,
                          "metric", metric], capture_output=True, text=True,
                         timeout=UMOUNT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if res.returncode == 0:
        out(f"removed {rtype} route {dst} table {table}")


def _undo_module_param(entry: dict[str, Any], out: Printer, roots: _Roots) -> None:
    path = module_param_path(entry["param"], roots.sys_module)
    old = valid_int(entry["old"], 0, 2**31, "module parameter value")
    _write(path, str(old))
    out(f"restored {entry['param']}={old}")


# one remover per kind of the module docstring's table
UNDO_BY_KIND: dict[str, _Undo] = {
    "nvme_ctrl": _undo_nvme_ctrl,
    "nvmet_link": _undo_nvmet_link,
    "nvmet_port": _undo_nvmet_port,
    "nvmet_ns": _undo_nvmet_ns,
    "nvmet_subsys": _undo_nvmet_subsys,
    "nullb": _undo_nullb,
    "configfs_mount": _undo_configfs_mount,
    "route_prohibit": _undo_route_prohibit,
    "module_param": _undo_module_param,
}


def module_param_path(param: object, sys_module: Path = SYS_MODULE) -> Path:
    """/sys/module/<module>/parameters/<name> of a MODULE.NAME that a run may change."""
    if param not in MODULE_PARAMS_WE_SET:
        raise NotOurs(f"module parameter {param!r} is not one rxe-power sets",
                      "remove that entry from the state file by hand")
    module, _, name = str(param).partition(".")
    return sys_module / module / "parameters" / name


def set_module_param(state: StateFile, param: str, value: int,
                     sys_module: Path = SYS_MODULE) -> int:
    """Set a module parameter for a scenario, its old value recorded first (the entry is
    how the scenario, or cleanup after a kill, puts it back). Returns the old value."""
    path = module_param_path(param, sys_module)
    try:
        old = int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise TopologyError(f"cannot read {path}: {exc}",
                            f"load the module that owns {param} (modprobe)") from exc
    state.record("module_param", param=param, old=old)
    _write(path, str(value))
    return old


def restore_module_param(state: StateFile, param: str, out: Printer = NULL,
                         sys_module: Path = SYS_MODULE) -> None:
    """Put back what set_module_param changed (its entries), and forget them."""
    for e in [e for e in state.created if e["kind"] == "module_param"
              and e.get("param") == param]:
        undo(e, out, sys_module=sys_module)
        state.forget(**e)

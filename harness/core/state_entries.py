"""What the state file may hold, checked before anything acts on it.

    check_entry(entry)        None, or why the entry is malformed (it is then reported and
                              skipped: never a KeyError/ValueError in cleanup)
    check_trusted(path)       refuse a state file, lock file or folder that someone other
                              than root (or the caller) could have written

Root acts on this file (ends processes, removes folders, writes sysctls), so it is held to
what the harness itself writes: every kind's fields with their types, sysctls from a fixed
list, names as the settings accept them. A kind added to the harness needs its line in
ENTRY_FIELDS.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.core.errors import TopologyError

Check = Callable[[Any], bool]

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,63}")
# what the kernel clients make (nvmet, nvme, null_blk, configfs, the route guard, nfsd,
# NFS mounts)
KERNEL_CLIENT_KINDS = ("configfs_mount", "nullb", "nvmet_subsys", "nvmet_ns", "nvmet_port",
                       "nvmet_link", "nvme_ctrl", "route_prohibit", "module_param",
                       # NFS over RDMA (harness.system.nfsobjs)
                       "nfsd_fs_mount", "nfsd_versions", "nfsd_server", "nfs_tmpfs",
                       "nfs_mount",
                       # the paging lane (harness.system.paging_objs)
                       "paging_swap", "paging_cgroup", "paging_subtree")
SYSCTLS_WE_SET = frozenset({
    "net.ipv4.conf.all.rp_filter",  # the topology, when it was not 0
    "kernel.hung_task_timeout_secs",  # a kernel-client scenario, lowered for its duration
})  # the only ones a run changes


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pid(v: Any) -> bool:
    return _int(v) and v > 0


def _num(v: Any) -> bool:
    return (_int(v) or isinstance(v, float)) and v == v and abs(v) != float("inf")


def _name(v: Any) -> bool:
    return isinstance(v, str) and _NAME.fullmatch(v) is not None and v not in (".", "..")


def _str(v: Any) -> bool:
    return isinstance(v, str) and len(v) < 4096 and "\0" not in v


def _abs_path(v: Any) -> bool:
    return _str(v) and v.startswith("/")


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _args(v: Any) -> bool:
    return isinstance(v, list) and 0 < len(v) < 32 and all(_name(a) or (
        _str(a) and re.fullmatch(r"[0-9./]+", a) is not None) for a in v)


def _owner(v: Any) -> bool:
    return isinstance(v, dict) and set(v) <= {"pid", "start"} and _pid(v.get("pid")) \
        and _optional(_num)(v.get("start"))


# kind -> {field: (required, check)}; "owner" and "keep" are allowed on every kind
ENTRY_FIELDS: dict[str, dict[str, tuple[bool, Check]]] = {
    "process": {"pid": (True, _pid), "start": (True, _num), "role": (True, _str),
                "group": (False, _bool)},
    "dir": {"path": (True, _abs_path)},
    "netdev": {"name": (True, _name), "peer": (True, _optional(_name))},
    "table": {"table": (True, _name)},
    "sysctl": {"key": (True, lambda v: v in SYSCTLS_WE_SET),
               "old": (True, lambda v: isinstance(v, str) and re.fullmatch(r"-?[0-9]{1,10}", v)
                       is not None)},
    "rule": {"args": (True, _args)},
    "rdma_link": {"name": (True, _name), "netdev": (True, _name)},
    "local_rule_moved": {"new_pref": (True, lambda v: _int(v) and 0 <= v < 2**32)},
    # our `rdma link delete` child (harness.topology.devices): pending while it lives
    "delete": {"dev": (True, _name), "pid": (True, _pid), "start": (True, _num)},
    # the kernel clients' objects: each value is checked again, for its kind, where it is
    # removed (harness.system.kernelobjs.undo refuses what rxe-power does not make)
    **{k: {} for k in KERNEL_CLIENT_KINDS},
}
COMMON_FIELDS: dict[str, tuple[bool, Check]] = {
    "kind": (True, lambda v: v in ENTRY_FIELDS), "owner": (False, _owner),
    "keep": (False, _bool)}


def check_entry(entry: Any) -> str | None:
    """Why `entry` is not one the harness writes; None when it is."""
    if not isinstance(entry, dict):
        return f"not a JSON object: {str(entry)[:80]!r}"
    kind = entry.get("kind")
    if kind not in ENTRY_FIELDS:
        return f"unknown kind {str(kind)[:40]!r}"
    fields = {**COMMON_FIELDS, **ENTRY_FIELDS[kind]}  # other fields: kept, never acted on
    for name, (required, check) in fields.items():
        if name not in entry:
            if required:
                return f"kind {kind}: field {name!r} is missing"
        elif not check(entry[name]):
            return f"kind {kind}: field {name!r} has a bad value {str(entry[name])[:80]!r}"
    return None


def check_trusted(path: Path, folder: bool = False) -> None:
    """Refuse `path` (a file, or the folder when `folder`) unless root or the caller owns
    it, nobody else can write it, and (a file) it is not a symbolic link. Missing: fine."""
    try:
        st = os.lstat(path) if not folder else os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TopologyError(f"cannot inspect {path}: [{exc.errno}] {exc.strerror}",
                            "make the state folder readable, or set RXE_POWER_STATE") from None
    what = "state folder" if folder else "state file"
    trusted_uids = {0, os.geteuid()}
    if not folder and stat.S_ISLNK(st.st_mode):
        raise TopologyError(f"{what} {path} is a symbolic link: refusing to trust it",
                            f"remove {path} (the harness writes a plain file there)")
    if st.st_uid not in trusted_uids:
        raise TopologyError(
            f"{what} {path} is owned by uid {st.st_uid}, not root or uid {os.geteuid()}: "
            "someone else could have written it", f"check its content, then chown root:root "
            f"{path}; or set RXE_POWER_STATE to a file in a folder only root can write")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TopologyError(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): "
            "anyone could have written it", f"check its content, then chmod go-w {path}; "
            "or set RXE_POWER_STATE to a file in a folder only root can write")

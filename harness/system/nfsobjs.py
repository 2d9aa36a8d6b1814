"""Kernel objects of the NFS-over-RDMA client (the nfsd instance, its versions, the
nfsd filesystem, the exported tmpfs, the client's mount): the mount table and nfsd's
procfs read as data, and how to remove one object that a state-file entry names.

Every object is written to the state file before it is made; teardown and `rxe-power
cleanup` call `undo(entry)` newest first (harness.system.kernelobjs.undo dispatches
here). Every field is validated before it becomes part of a path or a command: paths
must be ours (directly under RUN_DIR, named with our prefix), version strings nfsd's own.

    kind            fields      removal
    nfsd_fs_mount   path        umount /proc/fs/nfsd (only while no nfsd runs)
    nfsd_versions   old         write the old versions back (only while no nfsd runs)
    nfsd_server     port        threads 0 (stops nfsd and its listeners), bounded
    nfs_tmpfs       path        umount the tmpfs we mounted there (bounded), rmdir
    nfs_mount       path        umount -f (bounded), then umount -l as the last resort
                                (reported), rmdir
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core import procfs
from harness.core.errors import BoundExceeded, NotOurs, OsCallError, ProcError, TopologyError
from harness.core.printer import NULL, Printer
from harness.core.proc import RUN_DIR, run_bounded

NFSD_FS = Path("/proc/fs/nfsd")
MOUNTINFO = Path("/proc/self/mountinfo")
UMOUNT_TIMEOUT_S = 15.0  # one umount (-f of a hard NFS mount whose server is gone: RPCs killed)
UMOUNT_RETRY_S = 0.2  # an umount -f refused as busy is tried again this often
NFSD_STOP_TIMEOUT_S = 20.0  # threads 0: every nfsd thread exits and the listeners close
OUR_NFS_PREFIX = "rxpw-nfs-"  # every directory we mount on is RUN_DIR/rxpw-nfs-...
TMPFS_SOURCE = "rxpw-nfs"  # the source name of the tmpfs we export
NFS_KINDS = ("nfsd_fs_mount", "nfsd_versions", "nfsd_server", "nfs_tmpfs", "nfs_mount")
_OUR_DIR_RE = re.compile(re.escape(OUR_NFS_PREFIX) + r"[a-z0-9-]{1,40}")
_VERSIONS_RE = re.compile(r"[+-][234](\.[0-9])?( [+-][234](\.[0-9])?){0,8}")


# --- the mount table ---------------------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    mountpoint: str
    fstype: str
    source: str
    options: str  # the superblock's options


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountInfo]:
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 5 or len(r) < 2 or not f[0].isdigit():
            continue
        out.append(MountInfo(int(f[0]), _unescape(f[4]), r[0], _unescape(r[1]),
                             r[2] if len(r) > 2 else ""))
    return out


def mounts(path: Path = MOUNTINFO) -> list[MountInfo]:
    try:
        return parse_mountinfo(path.read_text())
    except OSError:
        return []


def mount_at(mountpoint: str, table: list[MountInfo] | None = None) -> MountInfo | None:
    """The top mount on `mountpoint` (the last one listed), or None."""
    hits = [m for m in (mounts() if table is None else table) if m.mountpoint == mountpoint]
    return hits[-1] if hits else None


# --- nfsd's procfs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    proto: str  # "rdma", "tcp", "udp"...
    port: int


def parse_portlist(text: str) -> list[Listener]:
    """/proc/fs/nfsd/portlist: one `proto port` per line."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out.append(Listener(parts[0], int(parts[1])))
    return out


def nfsd_threads(nfsd_fs: Path = NFSD_FS) -> int:
    """nfsd threads running now (0 when nfsd is stopped or its filesystem not mounted)."""
    try:
        text = (nfsd_fs / "threads").read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def nfsd_listeners(nfsd_fs: Path = NFSD_FS) -> list[Listener]:
    try:
        return parse_portlist((nfsd_fs / "portlist").read_text())
    except OSError:
        return []


def write_nfsd(name: str, value: str, nfsd_fs: Path = NFSD_FS) -> None:
    path = nfsd_fs / name
    try:
        path.write_text(value + "\n")
    except OSError as exc:
        raise OsCallError(f"write {value!r} to {path}", exc.errno or 0,
                          "is nfsd loaded (modprobe nfsd; rpcrdma for rdma listeners) and "
                          "its filesystem mounted? read dmesg for the kernel's reason"
                          ) from None


def valid_versions(v: object) -> str:
    if not isinstance(v, str) or not _VERSIONS_RE.fullmatch(v):
        raise NotOurs(f"nfsd versions {v!r} are not what /proc/fs/nfsd/versions shows",
                      "remove that entry from the state file by hand")
    return v


def valid_our_dir(path: object, run_dir: Path = RUN_DIR) -> Path:
    """A directory we mount on: RUN_DIR/rxpw-nfs-..., no `..`, no symlink."""
    p = Path(str(path)) if isinstance(path, str) else None
    if p is None or p.parent != run_dir or not _OUR_DIR_RE.fullmatch(p.name) \
            or p.is_symlink():
        raise NotOurs(f"{path!r} is not a directory rxe-power mounts on "
                      f"({run_dir}/{OUR_NFS_PREFIX}...)",
                      "remove that entry from the state file by hand")
    return p


# --- removal -----------------------------------------------------------------------------


def umount(path: str, force: bool, what: str, out: Printer = NULL) -> str:
    """umount (-f when `force`), bounded. `-i`: the syscall only, no helper (umount.nfs
    would talk to the server). With `force`, an unmount refused as busy is tried again
    until UMOUNT_TIMEOUT_S (-f fails the mount's pending RPCs, and the tasks that held it
    let go), and a mount still there then, or an umount -f that overran the bound, is
    detached lazily (-l) as the last resort. Returns "" when it was unmounted normally,
    else what happened (for the caller's report)."""
    argv = ["umount", "-i", *(["-f"] if force else []), path]
    end = time.monotonic() + UMOUNT_TIMEOUT_S
    tries = 0
    why = ""
    while True:
        tries += 1
        try:
            res = run_bounded(argv, max(0.5, end - time.monotonic()),
                              step=f"umount of {what} {path}", bound_name="UMOUNT_TIMEOUT_S",
                              outstanding=f"{what} {path} still mounted")
        except BoundExceeded as exc:
            if not force:
                raise
            why = exc.problem
            break
        if res.returncode == 0 or mount_at(path) is None:
            out(f"unmounted {what} {path}")
            return ""
        why = res.stderr.strip()
        if not force or time.monotonic() > end:
            break
        time.sleep(UMOUNT_RETRY_S)
    if not force:
        raise TopologyError(f"umount of {what} {path} failed: {why}",
                            "something still uses it (fuser -vm PATH); close it and run "
                            "`rxe-power cleanup`")
    lazy = run_bounded(["umount", "-i", "-l", path], UMOUNT_TIMEOUT_S,
                       step=f"lazy umount of {what} {path}", bound_name="UMOUNT_TIMEOUT_S",
                       outstanding=f"{path} still mounted")
    note = (f"umount -f of {what} {path} did not succeed within UMOUNT_TIMEOUT_S="
            f"{UMOUNT_TIMEOUT_S:g}s ({tries} tries; {why}); detached lazily (umount -l: rc "
            f"{lazy.returncode})")
    out(note)
    return note


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OsCallError(f"rmdir {path}", exc.errno or 0,
                          "it is still mounted or not empty: unmount it first") from None


def stop_nfsd(nfsd_fs: Path = NFSD_FS) -> None:
    """threads 0 (from a bounded child: the write waits for every nfsd thread to exit)."""
    res = run_bounded(["sh", "-c", 'echo 0 > "$1"', "sh", str(nfsd_fs / "threads")],
                      NFSD_STOP_TIMEOUT_S, step="stop of nfsd (threads 0)",
                      bound_name="NFSD_STOP_TIMEOUT_S",
                      outstanding=f"{nfsd_threads(nfsd_fs)} nfsd thread(s) not yet gone")
    if res.returncode != 0:
        raise TopologyError(f"stop of nfsd failed: {res.stderr.strip()}",
                            "read dmesg; `rpc.nfsd 0` stops it by hand")


def undo(entry: dict[str, Any], out: Printer = NULL, nfsd_fs: Path = NFSD_FS,
         run_dir: Path = RUN_DIR) -> str:
    """Remove the object one NFS state-file entry names (if it is still there). Returns
    a note when the removal needed its last resort, else ""."""
    kind = entry["kind"]
    note = ""
    if kind == "nfs_mount":
        path = valid_our_dir(entry.get("path"), run_dir)
        m = mount_at(str(path))
        if m is not None and m.fstype in ("nfs", "nfs4"):
            note = umount(str(path), True, "NFS mount", out)
        if mount_at(str(path)) is None:
            _rmdir(path)
    elif kind == "nfs_tmpfs":
        path = valid_our_dir(entry.get("path"), run_dir)
        m = mount_at(str(path))
        if m is not None and m.fstype == "tmpfs" and m.source == TMPFS_SOURCE:
            note = umount(str(path), False, "exported tmpfs", out)
        if mount_at(str(path)) is None:
            _rmdir(path)
    elif kind == "nfsd_server":
        if nfsd_threads(nfsd_fs) > 0:
            stop_nfsd(nfsd_fs)
            out("stopped nfsd (threads 0)")
    elif kind == "nfsd_versions":
        old = valid_versions(entry.get("old"))
        if nfsd_threads(nfsd_fs) == 0 and (nfsd_fs / "versions").exists():
            write_nfsd("versions", old, nfsd_fs)
            out(f"restored nfsd versions {old!r}")
    elif kind == "nfsd_fs_mount":
        if Path(str(entry.get("path"))) != nfsd_fs:
            raise NotOurs(f"nfsd filesystem entry {entry.get('path')!r} is not {nfsd_fs}",
                          "remove that entry from the state file by hand")
        m = mount_at(str(nfsd_fs))
        if m is not None and m.fstype == "nfsd" and nfsd_threads(nfsd_fs) == 0:
            note = umount(str(nfsd_fs), False, "nfsd filesystem", out)
    else:
        raise TopologyError(f"unknown NFS object kind {kind!r}", "use a newer rxe-power")
    return note


def processes_named(comm: str, proc: Path = procfs.PROC) -> list[int]:
    """Pids whose /proc/PID/comm is `comm` (a foreign rpc.mountd is refused, not ended)."""
    out = []
    for pid in procfs.pids(proc):
        try:
            name = procfs.read_comm(pid, proc)
        except ProcError:
            continue
        if name is not None and name.strip() == comm:
            out.append(pid)
    return out


def holds_channel(pid: int, channel: str) -> bool:
    """Does process `pid` have the sunrpc cache channel open (e.g. nfsd.export)? That is
    how we know rpc.mountd answers the kernel's export upcalls."""
    try:
        links = procfs.fd_targets(pid)
    except ProcError:
        return False
    return any(link.endswith(f"/rpc/{channel}/channel") for link in (links or {}).values())

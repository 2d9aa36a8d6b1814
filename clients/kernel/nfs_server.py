"""The NFS server on the peer side: kernel nfsd, NFSv4 only, listening on RDMA port
20049, exporting a tmpfs of ours to the local address only; its backing files are read
here directly (not through the client's mount).

    srv = NfsServer(ServerConfig(client_addr="198.18.0.1"), state)
    srv.setup()                  # each object recorded in the state file before it is made
    srv.export_dir               # /run/rxe-power/rxpw-nfs-<pid>-export (the tmpfs)
    srv.read_block("data", 7, 4096)
    srv.teardown()               # newest first; `rxe-power cleanup` does the same

The least moving parts (measured in the guest): NFSv4 only, so no rpcbind, no lockd, no
statd, and no MOUNT protocol; nfsd is driven through its procfs (versions, portlist
`rdma 20049`, threads), which is all rpc.nfsd does for an RDMA listener; the v4 grace
period is ended at once (v4_end_grace: a fresh tmpfs has no state to reclaim). One
helper remains: rpc.mountd (-N 2 -N 3: v4 only, registers nothing), which answers the
kernel's export upcalls from an etab in a state directory of ours (-s), so the system's
/var/lib/nfs is never read or written. A foreign nfsd or rpc.mountd already running is
refused: one network namespace has one nfsd.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.kernel.nvmet_target import modprobe
from harness.core.errors import BoundExceeded, NotOurs, OsCallError, RxePowerError, TopologyError
from harness.core.proc import RUN_DIR, remove_recorded_dir, run_bounded, spawn, stop_child
from harness.core.state import StateFile
from harness.system import nfsobjs

RDMA_PORT = 20049  # the IANA port of NFS over RDMA
MOUNT_FS_TIMEOUT_S = 15.0  # mount of the nfsd filesystem or of the tmpfs
MOUNTD_READY_TIMEOUT_S = 15.0  # rpc.mountd started -> it holds the export cache channels
MOUNTD_EXIT_WAIT_S = 0.0  # rpc.mountd is not asked to exit first: SIGTERM at once
POLL_S = 0.02
NFS_VERSIONS = "-2 -3 +4 +4.1 +4.2"  # v2/v3 would start lockd, which needs rpcbind
MOUNTD_CHANNELS = ("nfsd.export", "nfsd.fh", "auth.unix.ip")
# the one export: read-write for the local address only; root's writes stay root's (the
# driver runs as root); `insecure`: an RDMA connection has no reserved source port
EXPORT_OPTIONS = "rw,sync,insecure,no_root_squash,no_subtree_check,fsid=0,sec=sys"


@dataclass(frozen=True)
class ServerConfig:
    client_addr: str = "198.18.0.1"  # the only address the export is open to
    port: int = RDMA_PORT
    size_mib: int = 64  # the tmpfs
    threads: int = 2
    tag: str = ""  # distinguishes two servers' directories (only one can run at a time)

    def our_dir(self, role: str) -> Path:
        return RUN_DIR / f"{nfsobjs.OUR_NFS_PREFIX}{os.getpid()}{self.tag}-{role}"


def etab_line(path: Path, client: str) -> str:
    """One export as rpc.mountd reads it from etab (exportfs's format)."""
    return f"{path}\t{client}({EXPORT_OPTIONS})\n"


class NfsServer:
    def __init__(self, cfg: ServerConfig, state: StateFile | None = None) -> None:
        self.cfg = cfg
        self.state = state or StateFile.load()
        self.export_dir = cfg.our_dir("export")
        self.state_dir = cfg.our_dir("state")
        self.mountd: subprocess.Popen[Any] | None = None
        self.entries: list[dict[str, Any]] = []  # what we recorded, in order
        self.notes: list[str] = []  # what teardown needed its last resort for

    def _record(self, kind: str, **attrs: object) -> None:
        self.state.record(kind, None, **attrs)
        self.entries.append({"kind": kind, **attrs})

    def setup(self) -> None:
        for mod in ("nfsd", "rpcrdma"):  # rpcrdma holds svcrdma too (the rdma listener)
            modprobe(mod)
        self._refuse_foreign()
        try:
            self._nfsd_fs()
            self._tmpfs()
            self._etab()
            self._start_mountd()
            self._start_nfsd()
        except BaseException:
            self.teardown()
            raise

    def _refuse_foreign(self) -> None:
        running = nfsobjs.nfsd_threads()
        if running:
            raise NotOurs(f"an nfsd is already running ({running} threads, listening on "
                          f"{[f'{x.proto} {x.port}' for x in nfsobjs.nfsd_listeners()]})",
                          "one network namespace has one nfsd: stop it (rpc.nfsd 0) or run "
                          "the NFS client where no NFS server runs")
        mountds = nfsobjs.processes_named("rpc.mountd")
        if mountds:
            raise NotOurs(f"an rpc.mountd is already running (pid {mountds})",
                          "it would answer our export upcalls from its own exports: stop "
                          "it, or run the NFS client where no NFS server runs")

    def _mount(self, argv: list[str], what: str) -> None:
        res = run_bounded(argv, MOUNT_FS_TIMEOUT_S, step=f"mount of {what}",
                          bound_name="MOUNT_FS_TIMEOUT_S", outstanding=f"{what} not mounted")
        if res.returncode != 0:
            raise TopologyError(f"mount of {what} failed: {res.stderr.strip()}",
                                "read dmesg for the kernel's reason")

    def _nfsd_fs(self) -> None:
        if nfsobjs.mount_at(str(nfsobjs.NFSD_FS)) is not None:
            return
        self._record("nfsd_fs_mount", path=str(nfsobjs.NFSD_FS))
        self._mount(["mount", "-t", "nfsd", "nfsd", str(nfsobjs.NFSD_FS)], "nfsd filesystem")

    def _tmpfs(self) -> None:
        d = self.export_dir
        self._record("nfs_tmpfs", path=str(d))
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        d.mkdir(mode=0o755)
        self._mount(["mount", "-t", "tmpfs", "-o", f"size={self.cfg.size_mib}m,mode=0755",
                     nfsobjs.TMPFS_SOURCE, str(d)], f"the tmpfs to export ({d})")

    def _etab(self) -> None:
        self._record("dir", path=str(self.state_dir))
        self.state_dir.mkdir(mode=0o700)
        (self.state_dir / "etab").write_text(etab_line(self.export_dir, self.cfg.client_addr))
        (self.state_dir / "rmtab").write_text("")

    def _start_mountd(self) -> None:
        log = open(self.state_dir / "mountd.log", "w")  # noqa: SIM115 (the child's)
        try:
            self.mountd = spawn(["rpc.mountd", "-F", "-N", "2", "-N", "3", "-s",
                                 str(self.state_dir)], "rpc.mountd", stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise OsCallError("cannot run rpc.mountd", exc.errno or 2,
                              "apt-get install nfs-kernel-server") from None
        finally:
            log.close()
        end = time.monotonic() + MOUNTD_READY_TIMEOUT_S
        while not all(nfsobjs.holds_channel(self.mountd.pid, c) for c in MOUNTD_CHANNELS):
            if self.mountd.poll() is not None:
                raise TopologyError(f"rpc.mountd exited ({self.mountd.returncode}): "
                                    f"{self.mountd_log()}", "read its log above")
            if time.monotonic() > end:
                raise BoundExceeded("rpc.mountd ready", "MOUNTD_READY_TIMEOUT_S",
                                    MOUNTD_READY_TIMEOUT_S,
                                    f"not all of {MOUNTD_CHANNELS} opened by pid "
                                    f"{self.mountd.pid}")
            time.sleep(POLL_S)

    def mountd_log(self) -> str:
        try:
            return (self.state_dir / "mountd.log").read_text().strip()[-2000:]
        except OSError:
            return ""

    def _start_nfsd(self) -> None:
        old = (nfsobjs.NFSD_FS / "versions").read_text().strip()
        self._record("nfsd_versions", old=nfsobjs.valid_versions(old))
        nfsobjs.write_nfsd("versions", NFS_VERSIONS)
        self._record("nfsd_server", port=self.cfg.port)
        nfsobjs.write_nfsd("portlist", f"rdma {self.cfg.port}")
        nfsobjs.write_nfsd("threads", str(self.cfg.threads))
        nfsobjs.write_nfsd("v4_end_grace", "Y")
        if nfsobjs.Listener("rdma", self.cfg.port) not in nfsobjs.nfsd_listeners():
            raise TopologyError(f"nfsd does not list rdma {self.cfg.port} in its portlist "
                                f"({nfsobjs.nfsd_listeners()})", "is rpcrdma loaded? read "
                                "dmesg")

    def teardown(self) -> list[str]:
        """Remove what we made, newest first. Returns the problems left."""
        problems = []
        if self.mountd is not None:
            how = stop_child(self.mountd, MOUNTD_EXIT_WAIT_S)
            if not how.gone:
                problems.append(f"rpc.mountd pid {self.mountd.pid} {how.value}")
            self.mountd = None
        for entry in reversed(self.entries):
            try:
                if entry["kind"] == "dir":
                    problem = remove_recorded_dir(Path(entry["path"]))
                    if problem:
                        raise TopologyError(problem, "remove it by hand")
                else:
                    note = nfsobjs.undo(entry)
                    if note:
                        self.notes.append(note)
                self.state.forget(**entry)
            except RxePowerError as exc:
                problems.append(f"{entry['kind']}: {exc}")
        self.entries = []
        return problems

    def data_path(self, name: str) -> Path:
        return self.export_dir / name

    def make_file(self, name: str, size: int) -> None:
        """A file of `size` zero bytes in the export, made on the server side."""
        with open(self.data_path(name), "wb") as f:
            f.truncate(size)

    def read_block(self, name: str, index: int, size: int) -> bytes:
        """One block of an exported file, read on the peer side from the tmpfs."""
        with contextlib.suppress(FileNotFoundError), open(self.data_path(name), "rb") as f:
            f.seek(index * size)
            return f.read(size)
        return b""

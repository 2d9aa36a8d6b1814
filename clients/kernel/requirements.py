"""What the kernel clients need, for `rxe-power doctor`: the kernel modules (in the
kernel the run uses: this one natively, the guest's in VM mode) and the tools: nvme-cli
and fio (nvme-rdma); rpc.mountd (nfs-kernel-server) and mount.nfs (nfs-common) for NFS
over RDMA (nfsd itself is driven through its procfs: no rpc.nfsd, exportfs or rpcbind)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

# NFS: nfsd (server), rpcrdma (the RDMA transport of both ends), nfsv4 (client)
MODULES = ("nvme-rdma", "nvmet-rdma", "null_blk", "nfsd", "rpcrdma", "nfsv4", "nvme-fabrics")
TOOLS = (("nvme", "apt-get install nvme-cli"), ("fio", "apt-get install fio"),
         ("rpc.mountd", "apt-get install nfs-kernel-server"),
         ("mount.nfs", "apt-get install nfs-common"), ("umount", "apt-get install mount"))
_SUFFIXES = ("", ".xz", ".zst", ".gz")


def module_present(modules_dir: Path, name: str) -> bool:
    """Is NAME.ko (any compression) under modules_dir/kernel? `-` and `_` are alike."""
    stems = {name.replace("-", "_"), name.replace("_", "-")}
    kernel = modules_dir / "kernel"
    return any(next(kernel.rglob(f"{s}.ko{sfx}"), None) is not None
               for s in stems for sfx in _SUFFIXES)


def missing(modules_dir: Path | None,
            which: Callable[[str], str | None] = shutil.which) -> list[tuple[str, str]]:
    """(what is missing, the fix) for each missing piece; empty when all is there."""
    out = []
    if modules_dir is not None:
        for mod in MODULES:
            if not module_present(modules_dir, mod):
                out.append((f"kernel module {mod} not in {modules_dir}",
                            "use a kernel that builds it as a module (Debian's "
                            "linux-image-amd64 does)"))
    for tool, fix in TOOLS:
        if which(tool) is None:
            out.append((f"{tool} not on PATH", fix))
    return out

"""An nvmet-rdma target on the peer side, made through configfs, backed by a null_blk
memory disk that the harness reads directly afterwards (not through the initiator).

    target = NvmetTarget(TargetConfig(addr="198.18.0.2", size_mib=64))
    target.setup()              # null_blk, subsystem, namespace, port, link: each recorded
    target.backing_device       # /dev/nullbN: the target's backing store, read on the peer
    target.teardown()           # newest first; `rxe-power cleanup` does the same after a kill

Each object is written to the state file before it is made (harness/state.py). Names
carry the `rxpw` prefix and this process's pid, so a foreign subsystem, port or null_blk
is never touched; a foreign port already on our address and service id is refused.
The port is bound to the peer's address: only the local HCA goes away in our
transitions, so the listener (bound to rxe1) stays.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import (
    BoundExceeded,
    NotOurs,
    OsCallError,
    RxePowerError,
    TopologyError,
)
from harness.core.printer import NULL, Printer
from harness.core.state import StateFile
from harness.system import kernelobjs as ko

MODPROBE_TIMEOUT_S = 30.0
DEVICE_NODE_TIMEOUT_S = 10.0  # null_blk powered on -> /dev/nullbN present
POLL_S = 0.02
NQN_DOMAIN = "nqn.2026-11.org.rxe-power"
FIRST_PORT_ID = 1870  # configfs port ids we try (any free number is as good)


@dataclass(frozen=True)
class TargetConfig:
    addr: str = "198.18.0.2"
    trsvcid: int = 4420
    size_mib: int = 64
    block_size: int = 4096
    tag: str = ""  # distinguishes two targets of one process

    @property
    def suffix(self) -> str:
        return f"{os.getpid()}{self.tag}"

    @property
    def nqn(self) -> str:
        return f"{NQN_DOMAIN}:{ko.OUR_PREFIX}-{self.suffix}"

    @property
    def nullb_name(self) -> str:
        return f"{ko.OUR_PREFIX}{self.suffix}"


def modprobe(*args: str) -> None:
    try:
        res = subprocess.run(["modprobe", *args], capture_output=True, text=True,
                             timeout=MODPROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise OsCallError("cannot run modprobe", exc.errno or 2,
                          "apt-get install kmod") from None
    if res.returncode != 0:
        raise TopologyError(f"modprobe {' '.join(args)} failed: {res.stderr.strip()}",
                            f"this kernel lacks the module {args[0]}: use a kernel that "
                            "builds it (Debian's linux-image-amd64 does)")


def ensure_configfs(state: StateFile) -> None:
    if os.path.ismount(ko.CONFIGFS):
        return
    state.record("configfs_mount", path=str(ko.CONFIGFS))
    res = subprocess.run(["mount", "-t", "configfs", "none", str(ko.CONFIGFS)],
                         capture_output=True, text=True, timeout=MODPROBE_TIMEOUT_S,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise TopologyError(f"cannot mount configfs on {ko.CONFIGFS}: {res.stderr.strip()}",
                            "the kernel needs CONFIG_CONFIGFS_FS")


def _mkdir(path: Path) -> None:
    try:
        path.mkdir()
    except OSError as exc:
        raise OsCallError(f"mkdir {path}", exc.errno or 0,
                          "is the module loaded and the name free?") from None


def _put(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise OsCallError(f"write {value!r} to {path}", exc.errno or 0,
                          "read dmesg for the kernel's reason") from None


@dataclass(frozen=True)
class PortInfo:
    port: str
    trtype: str
    traddr: str
    trsvcid: str


def nvmet_ports(nvmet: Path = ko.NVMET) -> list[PortInfo]:
    out = []
    ports = nvmet / "ports"
    if not ports.is_dir():
        return []
    for d in sorted(ports.iterdir()):
        out.append(PortInfo(d.name, *(ko.read_attr(d / f) for f in (
            "addr_trtype", "addr_traddr", "addr_trsvcid"))))
    return out


class NvmetTarget:
    def __init__(self, cfg: TargetConfig, state: StateFile | None = None) -> None:
        self.cfg = cfg
        self.state = state or StateFile.load()
        self.port_id: int | None = None
        self.backing_device: Path | None = None
        self.entries: list[dict[str, Any]] = []  # what we recorded, in order

    def _record(self, kind: str, **attrs: object) -> None:
        self.state.record(kind, None, **attrs)
        self.entries.append({"kind": kind, **attrs})

    def setup(self) -> None:
        c = self.cfg
        for mod in ("nvmet", "nvmet-rdma"):
            modprobe(mod)
        if not Path("/sys/module/null_blk").exists():
            modprobe("null_blk", "nr_devices=0")  # no default nullb0 of ours to own
        ensure_configfs(self.state)
        clash = [p for p in nvmet_ports() if p.trtype == "rdma" and p.traddr == c.addr
                 and p.trsvcid == str(c.trsvcid)]
        if clash:
            raise NotOurs(f"nvmet port {clash[0].port} already serves rdma {c.addr}:"
                             f"{c.trsvcid}", "choose another --trsvcid or remove that port")
        try:
            self._make_disk()
            self._make_subsystem()
            self._make_port()
        except BaseException:
            self.teardown()
            raise

    def _make_disk(self) -> None:
        c = self.cfg
        item = ko.NULLB / c.nullb_name
        self._record("nullb", name=c.nullb_name)
        _mkdir(item)
        _put(item / "size", str(c.size_mib))
        _put(item / "blocksize", str(c.block_size))
        _put(item / "memory_backed", "1")
        _put(item / "power", "1")
        # the disk is named after the configfs item (Debian's 6.1 does so; older kernels
        # name it nullb<index>)
        names = (c.nullb_name, f"nullb{(item / 'index').read_text().strip()}")
        end = time.monotonic() + DEVICE_NODE_TIMEOUT_S
        while not (found := [n for n in names if Path("/sys/block", n).exists()
                             and Path("/dev", n).exists()]):
            if time.monotonic() > end:
                raise BoundExceeded(f"null_blk {c.nullb_name} block device",
                                    "DEVICE_NODE_TIMEOUT_S", DEVICE_NODE_TIMEOUT_S,
                                    f"none of /dev/{', /dev/'.join(names)} present")
            time.sleep(POLL_S)
        dev = Path("/dev", found[0])
        self.backing_device = dev

    def _make_subsystem(self) -> None:
        c = self.cfg
        subsys = ko.NVMET / "subsystems" / c.nqn
        self._record("nvmet_subsys", nqn=c.nqn)
        _mkdir(subsys)
        _put(subsys / "attr_allow_any_host", "1")
        self._record("nvmet_ns", nqn=c.nqn, nsid=1)
        ns = subsys / "namespaces" / "1"
        _mkdir(ns)
        _put(ns / "device_path", str(self.backing_device))
        _put(ns / "enable", "1")

    def _make_port(self) -> None:
        c = self.cfg
        taken = {p.port for p in nvmet_ports()}
        port_id = next(n for n in range(FIRST_PORT_ID, 65536) if str(n) not in taken)
        self._record("nvmet_port", port=port_id)
        pdir = ko.NVMET / "ports" / str(port_id)
        _mkdir(pdir)
        self.port_id = port_id
        for attr, val in (("addr_trtype", "rdma"), ("addr_adrfam", "ipv4"),
                          ("addr_traddr", c.addr), ("addr_trsvcid", str(c.trsvcid))):
            _put(pdir / attr, val)
        self._record("nvmet_link", port=port_id, nqn=c.nqn)
        try:  # the port starts listening here
            os.symlink(ko.NVMET / "subsystems" / c.nqn, pdir / "subsystems" / c.nqn)
        except OSError as exc:
            raise OsCallError(f"link nvmet port {port_id} to {c.nqn} (listen on rdma "
                              f"{c.addr}:{c.trsvcid})", exc.errno or 0,
                              "is the address on an rdma device, and the service id free? "
                              "read dmesg") from None

    def teardown(self, out: Printer = NULL) -> list[str]:
        """Remove what we made, newest first. Returns the problems left."""
        log = out  # (for ko.undo's call below, whose parameter another change renames)
        problems = []
        for entry in reversed(self.entries):
            if entry["kind"] == "configfs_mount":
                continue  # left mounted: others (the host) may use it; cleanup decides
            try:
                ko.undo(entry, log)
                self.state.forget(**entry)
            except RxePowerError as exc:
                problems.append(f"{entry['kind']}: {exc}")
        self.entries = [e for e in self.entries if e["kind"] == "configfs_mount"]
        return problems

    def read_block(self, index: int, size: int) -> bytes:
        """One block of the backing store, read on the peer side with O_DIRECT."""
        import mmap

        assert self.backing_device is not None
        buf = mmap.mmap(-1, size)
        fd = os.open(self.backing_device, os.O_RDONLY | os.O_DIRECT)
        try:
            n = os.preadv(fd, [buf], index * size)
        finally:
            os.close(fd)
        return bytes(buf[:n])

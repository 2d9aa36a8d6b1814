"""The NFS-over-RDMA client on the local side: the policy (hard or soft mount, timeo,
retrans, minor version), the mount from the local address (bounded, recorded first),
its unmount, and the transport's counters from /proc/self/mountstats over time.

    opts = parse_policy("nfs-rdma:soft")      # or "nfs-rdma:mount=hard:timeo=50:vers=4.1"
    m = NfsMount(MountConfig("198.18.0.2", 20049, "198.18.0.1", opts), state)
    m.mount()                                 # MOUNT_TIMEOUT_S
    m.path / "data"                           # files under the mount
    m.unmount()                               # umount -f, bounded; -l as the last resort

xprtrdma has no source-address option: the connection's source (and so its device) is
the route's, which the topology's rules make rxe0's address; `clientaddr` is the
callback address NFSv4.0 would use. The connection's device is checked, not assumed
(clients.kernel.route_guard.CmSampler).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clients.kernel.sampler import Sampler
from harness.core.errors import OsCallError, SettingError
from harness.core.proc import RUN_DIR, run_bounded
from harness.core.state import StateFile
from harness.system import nfsobjs

MOUNT_TIMEOUT_S = 30.0  # mount -t nfs4 ... proto=rdma (measured 6.4 s in the TCG guest)
STATS_INTERVAL_S = 0.05
VERSIONS = ("4.0", "4.1", "4.2")


@dataclass(frozen=True)
class NfsOptions:
    """The mount options production systems choose for NFS over RDMA."""

    hard: bool = True
    timeo: int | None = None  # deciseconds before the first retransmission; None: 600
    retrans: int | None = None  # retransmissions before a major timeout; None: 2
    vers: str = "4.2"

    def mount_options(self) -> str:
        out = f"vers={self.vers},proto=rdma,{'hard' if self.hard else 'soft'}"
        if self.timeo is not None:
            out += f",timeo={self.timeo}"
        if self.retrans is not None:
            out += f",retrans={self.retrans}"
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, NfsOptions] = {
    "nfs-rdma:hard": NfsOptions(hard=True),  # the kernel's defaults: timeo 600, retrans 2
    # small enough that a soft mount gives up within a scenario: 1 s, then 2 s (linear
    # backoff on a connected transport), then EIO/ETIMEDOUT to the application
    "nfs-rdma:soft": NfsOptions(hard=False, timeo=10, retrans=1),
}
_RAW_INTS = {"timeo": (1, 6000), "retrans": (0, 10)}
_RAW_FORM = "nfs-rdma:mount=hard|soft:timeo=N:retrans=N:vers=4.0|4.1|4.2"


def parse_policy(raw: str) -> NfsOptions:
    """A preset name, or `nfs-rdma:key=val:...` with keys mount (hard/soft, default
    hard), timeo (deciseconds), retrans, vers. Colons, not commas: the command line's
    policy lists are comma-separated."""
    if raw in PRESETS:
        return PRESETS[raw]
    head, colon, rest = raw.partition(":")
    if head != "nfs-rdma" or not colon or "=" not in rest:
        raise SettingError(f"unknown nfs-rdma policy {raw!r}",
                           f"use one of {', '.join(PRESETS)} or {_RAW_FORM}")
    vals: dict[str, Any] = {}
    for part in rest.split(":"):
        key, _, val = part.partition("=")
        if key == "mount":
            if val not in ("hard", "soft"):
                raise SettingError(f"nfs-rdma option mount={val!r} is neither hard nor soft",
                                   "give mount=hard or mount=soft")
            vals["hard"] = val == "hard"
        elif key == "vers":
            if val not in VERSIONS:
                raise SettingError(f"nfs-rdma option vers={val!r} is not one of "
                                   f"{', '.join(VERSIONS)}",
                                   "the server runs NFSv4 only: give vers=4.0, 4.1 or 4.2")
            vals["vers"] = val
        elif key in _RAW_INTS:
            lo, hi = _RAW_INTS[key]
            num = int(val) if val.isdigit() else None
            if num is None or not lo <= num <= hi:
                raise SettingError(f"nfs-rdma option {key}={val!r} is not an integer in "
                                   f"{lo}..{hi}", f"give {key} a value in {lo}..{hi}")
            vals[key] = num
        else:
            raise SettingError(f"unknown nfs-rdma option {key!r} in {raw!r}",
                               f"use {_RAW_FORM}")
    return NfsOptions(**vals)


@dataclass(frozen=True)
class MountConfig:
    server: str
    port: int
    client_addr: str
    options: NfsOptions = field(default_factory=NfsOptions)
    tag: str = ""

    @property
    def path(self) -> Path:
        return RUN_DIR / f"{nfsobjs.OUR_NFS_PREFIX}{os.getpid()}{self.tag}-mnt"

    def argv(self) -> list[str]:
        return ["mount", "-t", "nfs4", "-o", f"{self.options.mount_options()},"
                f"port={self.port},clientaddr={self.client_addr}", f"{self.server}:/",
                str(self.path)]


class NfsMount:
    def __init__(self, cfg: MountConfig, state: StateFile | None = None) -> None:
        self.cfg = cfg
        self.state = state or StateFile.load()
        self.path = cfg.path
        self.recorded = False
        self.mount_id: int | None = None  # of the mount we made last
        self.notes: list[str] = []  # what an unmount needed its last resort for

    @property
    def entry(self) -> dict[str, Any]:
        return {"kind": "nfs_mount", "path": str(self.path)}

    def mount(self) -> float:
        """Mount (bounded). Returns the seconds it took."""
        t0 = time.monotonic()
        if not self.recorded:
            self.state.record("nfs_mount", None, path=str(self.path))
            self.recorded = True
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(mode=0o755, exist_ok=True)
        argv = self.cfg.argv()
        try:
            res = run_bounded(argv, MOUNT_TIMEOUT_S, step=" ".join(argv),
                              bound_name="MOUNT_TIMEOUT_S",
                              outstanding=f"{self.path} not mounted")
        except FileNotFoundError as exc:
            raise OsCallError("cannot run mount", exc.errno or 2,
                              "apt-get install mount nfs-common") from None
        m = nfsobjs.mount_at(str(self.path))
        if res.returncode != 0 or m is None or m.fstype != "nfs4":
            raise OsCallError(f"{' '.join(argv)} failed (rc {res.returncode}): "
                              f"{res.stderr.strip()}", 0,
                              "is nfsd listening on rdma (portlist), the local port ACTIVE, "
                              "rpcrdma loaded and mount.nfs installed (nfs-common)? read dmesg")
        self.mount_id = m.mount_id
        return time.monotonic() - t0

    def mounted(self) -> nfsobjs.MountInfo | None:
        m = nfsobjs.mount_at(str(self.path))
        return m if m is not None and m.fstype == "nfs4" else None

    def unmount(self, forget: bool = True, force: bool = True) -> None:
        """umount (-f when `force`: pending RPCs fail; lazily as the last resort, noted),
        bounded; rmdir when forgetting."""
        if self.mounted() is not None:
            note = nfsobjs.umount(str(self.path), force, "NFS mount")
            if note:
                self.notes.append(note)
        if forget and self.recorded:
            note = nfsobjs.undo(self.entry)
            if note:
                self.notes.append(note)
            self.state.forget(**self.entry)
            self.recorded = False


# --- the transport's counters -------------------------------------------------------------


@dataclass(frozen=True)
class XprtStats:
    """The `xprt:` line of one mount in /proc/self/mountstats (rdma and tcp share the
    first fields: srcport, bind_count, connect_count, connect_time, idle_time, sends,
    recvs, bad_xids)."""

    proto: str
    connect_count: int
    connect_time_s: int
    sends: int
    recvs: int
    bad_xids: int


@dataclass(frozen=True)
class MountStats:
    device: str
    mountpoint: str
    fstype: str
    opts: dict[str, str]
    xprt: XprtStats | None


def parse_mountstats(text: str) -> list[MountStats]:
    out: list[MountStats] = []
    cur: dict[str, Any] | None = None

    def close() -> None:
        if cur is not None:
            out.append(MountStats(**cur))

    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["device"] and "mounted" in words and "fstype" in words:
            close()
            on = words.index("on")
            ft = words.index("fstype")
            cur = {"device": words[1], "mountpoint": " ".join(words[on + 1:ft - 1]),
                   "fstype": words[ft + 1], "opts": {}, "xprt": None}
        elif cur is not None and words[:1] == ["opts:"] and len(words) > 1:
            pairs = (p.partition("=") for p in words[1].split(","))
            cur["opts"] = {k: v for k, _, v in pairs}
        elif cur is not None and words[:1] == ["xprt:"] and len(words) >= 10:
            nums = [int(w) if w.isdigit() else -1 for w in words[2:10]]
            cur["xprt"] = XprtStats(words[1], nums[2], nums[3], nums[5], nums[6], nums[7])
    close()
    return out


def read_stats(mountpoint: Path, path: Path = Path("/proc/self/mountstats")) -> MountStats | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    hits = [m for m in parse_mountstats(text) if m.mountpoint == str(mountpoint)]
    return hits[-1] if hits else None


@dataclass(frozen=True)
class XprtSample:
    t_ns: int
    mounted: bool
    connect_count: int | None
    sends: int | None
    recvs: int | None


class XprtSampler(Sampler[XprtSample]):
    """Samples the mount's transport counters; keeps only the changes of `mounted` and
    of connect_count (each change is a new connection of the transport)."""

    def __init__(self, mountpoint: Path, interval_s: float = STATS_INTERVAL_S) -> None:
        super().__init__(interval_s, "nfs-xprt-sampler")
        self.mountpoint = mountpoint

    def sample_once(self) -> None:
        st = read_stats(self.mountpoint)
        x = st.xprt if st else None
        s = XprtSample(time.monotonic_ns(), st is not None, x.connect_count if x else None,
                       x.sends if x else None, x.recvs if x else None)
        last = self.samples[-1] if self.samples else None
        if last is None or (last.mounted, last.connect_count) != (s.mounted, s.connect_count):
            self.samples.append(s)

"""The nvme-rdma host side: connect a controller from the local address, find its
namespace's block device in sysfs, disconnect within a bound; the policy presets; and
a sampler of every nvme controller's sysfs `state` over time (for the timeline).

    opts = parse_policy("nvme-rdma:fast-fail")  # or "nvme-rdma:ctrl_loss_tmo=5:reconnect_delay=1"
    host = NvmeHost(HostConfig(nqn, "198.18.0.2", 4420, "198.18.0.1", opts))
    host.connect()                      # recorded in the state file first
    host.block_device                   # Path("/dev/nvme0n1")
    host.disconnect()                   # bounded (NVME_DELETE_TIMEOUT_S)
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clients.kernel.nvmet_target import modprobe
from clients.kernel.sampler import Sampler
from harness.core.errors import BoundExceeded, OsCallError, SettingError
from harness.core.proc import python_child, run_bounded
from harness.core.state import StateFile
from harness.system import kernelobjs as ko
from harness.system import udev

CONNECT_TIMEOUT_S = 60.0  # nvme connect (its own connect timeout is longer)
NAMESPACE_TIMEOUT_S = 20.0  # controller LIVE -> its namespace's block device present
SAMPLE_INTERVAL_S = 0.05
POLL_S = 0.02
KERNEL_DEFAULTS = {"ctrl_loss_tmo": 600, "reconnect_delay": 10, "fast_io_fail_tmo": -1}


@dataclass(frozen=True)
class NvmeOptions:
    """The ULP's own settings that production systems choose (nvme connect options)."""

    ctrl_loss_tmo: int = 600  # s; -1: reconnect forever
    reconnect_delay: int = 10  # s between reconnect attempts
    fast_io_fail_tmo: int = -1  # s after which queued I/O fails; -1: off
    # s: nvme_core's bound on an admin/fabrics command (a module parameter, read when a
    # controller is created; production sets it with nvme_core.admin_timeout=). None:
    # leave the system's. It bounds the hold of a removal that deletes a LIVE controller
    # over a downed link (clients/kernel/nvme_hang.py)
    admin_timeout: int | None = None
    # s: the controller's keep-alive timeout (nvme connect --keep-alive-tmo; the host
    # sends a keep-alive every half of it). None: the kernel's default (5 s); 0: no
    # keep-alive at all, so an idle controller meets a dead link only with its next command
    keep_alive_tmo: int | None = None

    def fabrics_options(self) -> str:
        out = f"ctrl_loss_tmo={self.ctrl_loss_tmo},reconnect_delay={self.reconnect_delay}"
        if self.fast_io_fail_tmo >= 0:
            out += f",fast_io_fail_tmo={self.fast_io_fail_tmo}"
        if self.keep_alive_tmo is not None:
            out += f",keep_alive_tmo={self.keep_alive_tmo}"
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, NvmeOptions] = {
    "nvme-rdma": NvmeOptions(600, 10, -1),  # the kernel's defaults
    "nvme-rdma:ctrl-loss-forever": NvmeOptions(-1, 2, -1),
    "nvme-rdma:fast-fail": NvmeOptions(30, 2, 0),
}
_RAW_KEYS = {f: (lo, hi) for f, lo, hi in (("ctrl_loss_tmo", -1, 86400),
                                             ("reconnect_delay", 1, 3600),
                                             ("fast_io_fail_tmo", -1, 86400),
                                             ("admin_timeout", 1, 3600),
                                             ("keep_alive_tmo", 0, 3600))}


def parse_policy(raw: str) -> NvmeOptions:
    """A preset name, or `nvme-rdma:key=val:key=val...` with keys ctrl_loss_tmo,
    reconnect_delay, fast_io_fail_tmo, admin_timeout, keep_alive_tmo (unset keys keep the
    kernel default; admin_timeout is nvme_core's, set for the scenario and put back). Colons, not
    commas: the command line's policy lists are comma-separated."""
    if raw in PRESETS:
        return PRESETS[raw]
    head, colon, rest = raw.partition(":")
    if head != "nvme-rdma" or not colon or "=" not in rest:
        raise SettingError(f"unknown nvme-rdma policy {raw!r}",
                           f"use one of {', '.join(PRESETS)} or nvme-rdma:ctrl_loss_tmo=N:"
                           "reconnect_delay=N:fast_io_fail_tmo=N:admin_timeout=N:"
                           "keep_alive_tmo=N")
    vals = dict(KERNEL_DEFAULTS)
    for part in rest.split(":"):
        key, _, val = part.partition("=")
        if key not in _RAW_KEYS:
            raise SettingError(f"unknown nvme-rdma option {key!r} in {raw!r}",
                               f"use {', '.join(_RAW_KEYS)}")
        lo, hi = _RAW_KEYS[key]
        try:
            num = int(val)
        except ValueError:
            num = None
        if num is None or not lo <= num <= hi:
            raise SettingError(f"nvme-rdma option {key}={val!r} is not an integer in "
                               f"{lo}..{hi}", f"give {key} a value in {lo}..{hi}")
        vals[key] = num
    return NvmeOptions(**vals)


@dataclass(frozen=True)
class HostConfig:
    nqn: str
    traddr: str
    trsvcid: int
    host_traddr: str
    options: NvmeOptions = field(default_factory=NvmeOptions)


_NS_RE = re.compile(r"nvme(\d+)(?:c(\d+))?n(\d+)")


def namespace_block(ctrl_dir: Path) -> str | None:
    """The block device name of the controller's first namespace: `nvmeXnY` for a plain
    namespace, or the multipath head `nvmeSnY` of a path device `nvmeScXnY`."""
    try:
        names = sorted(p.name for p in ctrl_dir.iterdir())
    except OSError:
        return None
    for name in names:
        m = _NS_RE.fullmatch(name)
        if m:
            return f"nvme{m.group(1)}n{m.group(3)}"
    return None


class NvmeHost:
    def __init__(self, cfg: HostConfig, state: StateFile | None = None) -> None:
        self.cfg = cfg
        self.state = state or StateFile.load()
        self.ctrl: str | None = None
        self.block_device: Path | None = None
        self.recorded = False

    @property
    def entry(self) -> dict[str, Any]:
        c = self.cfg
        return {"nqn": c.nqn, "traddr": c.traddr, "trsvcid": c.trsvcid,
                "host_traddr": c.host_traddr}

    def find(self) -> ko.NvmeCtrl | None:
        c = self.cfg
        hits = [x for x in ko.nvme_ctrls() if x.matches(c.nqn, c.traddr, str(c.trsvcid),
                                                         c.host_traddr)]
        return hits[0] if hits else None

    def connect(self) -> float:
        """Connect and wait for the namespace's block device. Returns the seconds taken."""
        c = self.cfg
        t0 = time.monotonic()
        if not self.recorded:
            self.state.record("nvme_ctrl", **self.entry)
            self.recorded = True
        # nvme-cli 2.3 (Debian 12) has no fast_io_fail_tmo option: write the options to
        # the fabrics device as `nvme connect` does, from a child so that the bound holds
        # (harness.system.nvme_fabrics)
        opts = (f"transport=rdma,traddr={c.traddr},trsvcid={c.trsvcid},nqn={c.nqn},"
                f"host_traddr={c.host_traddr},{c.options.fabrics_options()}")
        if not Path("/dev/nvme-fabrics").exists():
            modprobe("nvme-rdma")  # brings nvme-fabrics, which makes /dev/nvme-fabrics
        res = run_bounded(python_child("harness.system.nvme_fabrics", opts), CONNECT_TIMEOUT_S,
                          step=f"connect {opts}", bound_name="CONNECT_TIMEOUT_S",
                          outstanding="the write to /dev/nvme-fabrics had not returned")
        if res.returncode != 0:
            err = int(res.stdout.strip() or 0) if res.stdout.strip().isdigit() else 0
            raise OsCallError(f"nvme-rdma connect ({opts}): {res.stderr.strip()}", err,
                              "is the target listening (nvmet port linked), the local port "
                              "ACTIVE and nvme-rdma loaded? read dmesg")
        end = time.monotonic() + NAMESPACE_TIMEOUT_S
        while True:
            ctrl = self.find()
            blk = namespace_block(ko.SYS_NVME / ctrl.name) if ctrl else None
            if ctrl and blk and Path("/dev", blk).exists():
                self.ctrl, self.block_device = ctrl.name, Path("/dev", blk)
                udev.settle()  # its rules' reads (blkid) done before any scenario starts
                return time.monotonic() - t0
            if time.monotonic() > end:
                raise BoundExceeded("nvme namespace block device", "NAMESPACE_TIMEOUT_S",
                                    NAMESPACE_TIMEOUT_S, f"controller {ctrl} block {blk}")
            time.sleep(POLL_S)

    def disconnect(self, forget: bool = True) -> bool:
        """Delete our controller (bounded). True if there was one."""
        ctrl = self.find()
        if ctrl is not None:
            ko.delete_ctrl(ctrl.name)
        if forget and self.recorded:
            self.state.forget("nvme_ctrl", **self.entry)
            self.recorded = False
        return ctrl is not None


# --- controller state sampler -----------------------------------------------------------


@dataclass(frozen=True)
class CtrlSample:
    t_ns: int
    ctrl: str
    state: str  # "live", "connecting", "resetting", "deleting", ... or "absent"
    subsysnqn: str


class CtrlSampler(Sampler[CtrlSample]):
    """Samples every nvme controller's state; keeps only changes (created, each new state,
    deleted as "absent")."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(interval_s, "nvme-ctrl-sampler")
        self._last: dict[str, str] = {}

    def sample_once(self) -> None:
        now = time.monotonic_ns()
        seen = {}
        for c in ko.nvme_ctrls():
            seen[c.name] = c.state
            if self._last.get(c.name) != c.state:
                self.samples.append(CtrlSample(now, c.name, c.state, c.subsysnqn))
        for name in set(self._last) - set(seen):
            self.samples.append(CtrlSample(now, name, "absent", ""))
        self._last = seen

"""Option resolution with provenance: command line > environment > ini > default.

Every setting is declared once here (name, environment variable, ini key, parser,
default). A bad value raises SettingError naming where it came from, as
pytest-timeout does. Every environment variable the harness reads is read here: the
settings with an option (SETTINGS, `resolve`) and those without one (the readers at
the end: results_dir, state_path, in_vm, ...).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from harness.core.bounds import MAX_TIMEOUT_S
from harness.core.errors import SettingError

T = TypeVar("T")


class Mode(StrEnum):
    """Where the rxe devices come from."""

    AUTO = "auto"  # native when the running kernel has rdma_rxe, else the VM
    NATIVE = "native"  # load rdma_rxe into the running kernel
    VM = "vm"  # boot a distro kernel with rdma_rxe in QEMU (virtme-ng)


class PeerPlacement(StrEnum):
    """Where the peer HCA (rxe1) lives relative to the local one (rxe0)."""

    SAME_KERNEL = "same-kernel"  # one kernel, one network namespace, forced routing
    GUEST = "guest"  # its own guest kernel, joined by a wire (harness.vm.pair; issue 24)


def parse_peer(raw: str) -> PeerPlacement:
    if raw.strip().lower() not in set(PeerPlacement):
        raise ValueError(f"{raw!r} is not one of {', '.join(PeerPlacement)}")
    return PeerPlacement(raw.strip().lower())


_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_DEVNAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")


def parse_mode(raw: str) -> Mode:
    try:
        return Mode(raw.strip().lower())
    except ValueError:
        raise ValueError(f"{raw!r} is not one of {', '.join(m.value for m in Mode)}") from None


def parse_ifname(raw: str) -> str:
    if not _IFNAME.fullmatch(raw) or raw in (".", ".."):  # the kernel refuses . and .. too
        raise ValueError(f"{raw!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return raw


def parse_devname(raw: str) -> str:
    if not _DEVNAME.fullmatch(raw):
        raise ValueError(f"{raw!r} is not a valid RDMA device name")
    return raw


def parse_ipv4(raw: str) -> str:
    try:
        addr = ipaddress.IPv4Address(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not an IPv4 address") from None
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified:
        raise ValueError(f"{raw!r} cannot be a wire address (loopback/multicast/unspecified)")
    return str(addr)


def parse_positive_float(raw: str) -> float:
    """A timeout in seconds: finite, above 0, at most MAX_TIMEOUT_S."""
    try:
        val = float(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number") from None
    if not math.isfinite(val):
        raise ValueError(f"{raw!r} is not a finite number")
    if not val > 0:
        raise ValueError(f"{raw!r} must be greater than 0")
    if val > MAX_TIMEOUT_S:
        raise ValueError(f"{raw!r} is over MAX_TIMEOUT_S={MAX_TIMEOUT_S:g} s")
    return val


class RemovalMode(StrEnum):
    """What deleting a held local HCA does (harness/system/rxe_module.py loads the module)."""

    DISASSOCIATE = "disassociate"  # our rdma_rxe build: holders get DEVICE_FATAL and EIO
    BLOCK = "block"  # the distribution's rdma_rxe: the delete waits for every holder


def parse_removal(raw: str) -> RemovalMode:
    try:
        return RemovalMode(raw.strip().lower())
    except ValueError:
        raise ValueError(f"{raw!r} is not one of "
                         f"{', '.join(m.value for m in RemovalMode)}") from None


def parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{raw!r} is not a boolean (use 1/0, true/false, yes/no)")


@dataclass(frozen=True)
class Setting:
    name: str  # the CLI/pytest option without dashes, e.g. "rxe-mode"
    env: str  # the environment variable
    ini: str  # the pytest ini key
    parse: Callable[[str], Any]
    default: str
    help: str


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("rxe-mode", "RXE_POWER_MODE", "rxe_mode", parse_mode, "auto",
                "where rxe comes from: auto, native or vm"),
        Setting("rxe-local-dev", "RXE_POWER_LOCAL_DEV", "rxe_local_dev", parse_devname, "rxe0",
                "the local HCA (the one the power shim takes down)"),
        Setting("rxe-peer-dev", "RXE_POWER_PEER_DEV", "rxe_peer_dev", parse_devname, "rxe1",
                "the remote peer's HCA (survives every transition)"),
        Setting("rxe-local-netdev", "RXE_POWER_LOCAL_NETDEV", "rxe_local_netdev", parse_ifname,
                "rxpw0", "veth end under the local HCA"),
        Setting("rxe-peer-netdev", "RXE_POWER_PEER_NETDEV", "rxe_peer_netdev", parse_ifname,
                "rxpw1", "veth end under the peer HCA"),
        Setting("rxe-local-addr", "RXE_POWER_LOCAL_ADDR", "rxe_local_addr", parse_ipv4,
                "198.18.0.1", "IPv4 address of the local end (RFC 2544 test range)"),
        Setting("rxe-peer-addr", "RXE_POWER_PEER_ADDR", "rxe_peer_addr", parse_ipv4,
                "198.18.0.2", "IPv4 address of the peer end"),
        Setting("removal", "RXE_POWER_REMOVAL", "rxe_removal", parse_removal, "block",
                "what deleting a held local HCA does: disassociate (our rdma_rxe build: "
                "holders get DEVICE_FATAL and EIO, the delete completes, as on a real "
                "HCA) or block (stock rdma_rxe: the delete waits for every holder)"),
        Setting("peer", "RXE_POWER_PEER", "rxe_peer", parse_peer, "same-kernel",
                "where the peer HCA lives: same-kernel (beside rxe0) or guest (a kernel of "
                "its own, joined by a wire; no command runs it yet: refused before a boot)"),
        Setting("rxe-require", "RXE_POWER_REQUIRE_RXE", "rxe_require", parse_bool, "0",
                "turn 'no rxe available' from a skip into a failure (CI sets it)"),
    )
}


@dataclass(frozen=True)
class Resolved:
    value: Any
    source: str  # e.g. "--rxe-mode", "environment RXE_POWER_MODE", "ini rxe_mode", "default"


def resolve(
    name: str,
    cli: str | None = None,
    ini: str | None = None,
    environ: Mapping[str, str] | None = None,
    option: str | None = None,
) -> Resolved:
    """Resolve one setting: CLI > environment > ini > default, naming the source on error.
    `option`: the command-line option the value came from, as the caller spells it
    (default --NAME, the pytest option)."""
    setting = SETTINGS[name]
    env = os.environ if environ is None else environ
    candidates = [
        (cli, f"command-line option {option or '--' + name}"),
        (env.get(setting.env), f"environment variable {setting.env}"),
        (ini, f"ini option {setting.ini}"),
        (setting.default, "built-in default"),
    ]
    for raw, source in candidates:
        if raw is None or (raw == "" and source != "built-in default"):
            continue
        try:
            return Resolved(setting.parse(raw), source)
        except ValueError as exc:
            raise SettingError(
                f"bad value for {name} from {source}: {exc}",
                f"set {source.split()[-1]} to a valid value ({setting.help})",
            ) from None
    raise AssertionError("unreachable: the default always parses")  # pragma: no cover


# --- environment-only settings ------------------------------------------------------------
# Variables without a command-line option: set by the user (paths, VM overrides), by the
# runner for the guest (RXE_POWER_IN_VM, RXE_POWER_BENCH_HOST), or by the system. An empty
# value counts as unset. Each reader names the variable when its value is bad.

RESULTS_ENV = "RXE_POWER_RESULTS"  # where results and logs go (default ./results)
STATE_ENV = "RXE_POWER_STATE"  # the state file (default /run/rxe-power/topology.json)
CLIENTS_DIR_ENV = "RXE_POWER_CLIENTS_DIR"  # the clients' notice sockets
NOTIFY_UIDS_ENV = "RXE_POWER_NOTIFY_UIDS"  # who may answer power notices (uids or names)
IN_VM_ENV = "RXE_POWER_IN_VM"  # "1" inside the guest the runner booted
BENCH_HOST_ENV = "RXE_POWER_BENCH_HOST"  # a VM bench: the host load (its job sets it there)
VM_KERNEL_ENV = "RXE_POWER_VM_KERNEL"  # the guest kernel to boot instead of the newest
VM_ACCEL_ENV = "RXE_POWER_VM_ACCEL"  # kvm or tcg: skip the accelerator probe
VM_CPUS_ENV = "RXE_POWER_VM_CPUS"  # the guest's vCPUs (default 2): 1 slows it on purpose
# the CLI's invocation as its provenance sees it (JSON): set by the process that runs it
LAUNCH_ENV = "RXE_POWER_LAUNCH"
VM_FACTS_ENV = "RXE_POWER_VM_FACTS"  # the VM runner's accelerator and host, for the guest
PEER_SECRET_FILE_ENV = "RXE_POWER_PEER_SECRET_FILE"  # the pair's per-run secret (vm.pair)
RUNTIME_DIR_ENV = "XDG_RUNTIME_DIR"  # a non-root user's per-boot directory
MPL_CONFIG_ENV = "MPLCONFIGDIR"  # matplotlib's configuration and font cache
OWN_PREFIX = "RXE_POWER_"  # every variable of ours: forwarded into the guest

DEFAULT_RESULTS_DIR = "results"
DEFAULT_STATE_PATH = "/run/rxe-power/topology.json"
DEFAULT_CLIENTS_DIR = "/run/rxe-power/clients"


def _env(var: str, environ: Mapping[str, str] | None) -> str | None:
    raw = (os.environ if environ is None else environ).get(var)
    return raw or None


def parse_path(raw: str) -> Path:
    if "\0" in raw or raw != raw.strip():
        raise ValueError(f"{raw!r} is not a usable path (NUL or surrounding blanks)")
    return Path(raw)


def _env_parsed(var: str, parse: Callable[[str], T], default: str | None, what: str,
                environ: Mapping[str, str] | None) -> T | None:
    raw = _env(var, environ)
    if raw is None:
        return None if default is None else parse(default)
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingError(f"bad value of environment variable {var}: {exc}",
                           f"set {var} to {what}, or unset it") from None


def _env_path(var: str, default: str, environ: Mapping[str, str] | None) -> Path:
    path = _env_parsed(var, parse_path, default, "a path", environ)
    assert path is not None  # a default is given
    return path


def results_dir(environ: Mapping[str, str] | None = None) -> Path:
    return _env_path(RESULTS_ENV, DEFAULT_RESULTS_DIR, environ)


def state_path(environ: Mapping[str, str] | None = None) -> Path:
    return _env_path(STATE_ENV, DEFAULT_STATE_PATH, environ)


def clients_dir(environ: Mapping[str, str] | None = None) -> Path:
    return _env_path(CLIENTS_DIR_ENV, DEFAULT_CLIENTS_DIR, environ)


def parse_uids(raw: str) -> frozenset[int]:
    """Comma-separated uids or user names."""
    out = set()
    for word in (w.strip() for w in raw.split(",")):
        if word.isdigit():
            out.add(int(word))
            continue
        try:
            out.add(pwd.getpwnam(word).pw_uid)
        except KeyError:
            raise ValueError(f"{word!r} is neither a uid (0, 1, ...) nor a user name") from None
    return frozenset(out)


def notify_uids(environ: Mapping[str, str] | None = None) -> frozenset[int]:
    """The uids whose sockets may answer power notices (SO_PEERCRED): RXE_POWER_NOTIFY_UIDS,
    default root and the caller."""
    uids = _env_parsed(NOTIFY_UIDS_ENV, parse_uids, None,
                       "comma-separated uids or user names (e.g. root,1000)", environ)
    return frozenset({0, os.geteuid()}) if uids is None else uids


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    return _env_parsed(RUNTIME_DIR_ENV, parse_path, None, "a directory", environ)


def in_vm(environ: Mapping[str, str] | None = None) -> bool:
    """Inside the guest the runner booted (it sets RXE_POWER_IN_VM=1; any other value: no)."""
    return _env(IN_VM_ENV, environ) == "1"


def vm_kernel_override(environ: Mapping[str, str] | None = None) -> str | None:
    """RXE_POWER_VM_KERNEL as given (harness.vm validates the image it names)."""
    return _env(VM_KERNEL_ENV, environ)


def vm_accel_override(environ: Mapping[str, str] | None = None) -> str | None:
    """RXE_POWER_VM_ACCEL as given (harness.vm checks it is kvm or tcg)."""
    return _env(VM_ACCEL_ENV, environ)


DEFAULT_VM_CPUS = 2
MAX_VM_CPUS = 64


def parse_vm_cpus(raw: str) -> int:
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_VM_CPUS:
        raise ValueError(f"{raw!r} is not a vCPU count 1..{MAX_VM_CPUS}")
    return int(raw)


def vm_cpus(environ: Mapping[str, str] | None = None) -> int:
    """The guest's vCPUs: RXE_POWER_VM_CPUS (1 runs the harness on a deliberately slow
    machine), default DEFAULT_VM_CPUS."""
    n = _env_parsed(VM_CPUS_ENV, parse_vm_cpus, str(DEFAULT_VM_CPUS),
                    f"a vCPU count 1..{MAX_VM_CPUS}", environ)
    assert n is not None  # a default is given
    return n


def parse_json_object(raw: str) -> dict[str, Any]:
    try:
        val = json.loads(raw)
    except ValueError:
        raise ValueError(f"{raw[:60]!r} is not JSON") from None
    if not isinstance(val, dict):
        raise ValueError(f"{raw[:60]!r} is not a JSON object")
    return val


def bench_host(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The host's load the runner measured before booting a guest bench."""
    return _env_parsed(BENCH_HOST_ENV, parse_json_object, None,
                       "the JSON object `rxe-power bench --mode vm` writes", environ)


def export_bench_host(host: Mapping[str, Any]) -> None:
    """Hand the host's load to the guest (the runner forwards RXE_POWER_* variables)."""
    os.environ[BENCH_HOST_ENV] = json.dumps(host)


def launch_facts(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """What the CLI decided before the run (mode, its reason, the source tree, the removal
    mode's reason), for the provenance (harness.system.provenance_collect types it)."""
    return _env_parsed(LAUNCH_ENV, parse_json_object, None,
                       "the JSON object rxe-power's launch writes", environ)


def export_launch_facts(facts: Mapping[str, Any]) -> None:
    """Hand the CLI's decisions to this process's later steps and to the guest (the runner
    forwards RXE_POWER_* variables)."""
    os.environ[LAUNCH_ENV] = json.dumps(facts, separators=(",", ":"))


def vm_facts(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The VM runner's accelerator and host, set in the guest's environment."""
    return _env_parsed(VM_FACTS_ENV, parse_json_object, None,
                       "the JSON object the VM runner writes", environ)


def mpl_config_dir_set(environ: Mapping[str, str] | None = None) -> bool:
    return _env(MPL_CONFIG_ENV, environ) is not None


def export_mpl_config_dir(path: Path) -> None:
    os.environ[MPL_CONFIG_ENV] = str(path)


def own_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every RXE_POWER_* variable set here (what the runner forwards into the guest)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith(OWN_PREFIX)}


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Parse every environment variable of ours that has a parser, raising SettingError
    naming the first bad one: called before any VM boots, so a bad value costs no boot
    (the guest would only refuse it minutes later)."""
    for setting in SETTINGS.values():
        resolve(setting.name, environ=environ)
    results_dir(environ)
    state_path(environ)
    clients_dir(environ)
    runtime_dir(environ)
    bench_host(environ)
    vm_cpus(environ)
    launch_facts(environ)
    vm_facts(environ)

"""Option resolution with provenance: command line > environment > ini > default.

Every setting is declared once here (name, environment variable, ini key, parser,
default). A bad value raises SettingError naming where it came from, as
pytest-timeout does.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from harness.core.errors import SettingError


class Mode(StrEnum):
    """Where the rxe devices come from."""

    AUTO = "auto"  # native when the running kernel has rdma_rxe, else the VM
    NATIVE = "native"  # load rdma_rxe into the running kernel
    VM = "vm"  # boot a distro kernel with rdma_rxe in QEMU (virtme-ng)


_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_DEVNAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")


def parse_mode(raw: str) -> Mode:
    try:
        return Mode(raw.strip().lower())
    except ValueError:
        raise ValueError(f"{raw!r} is not one of {', '.join(m.value for m in Mode)}") from None


def parse_ifname(raw: str) -> str:
    if not _IFNAME.match(raw):
        raise ValueError(f"{raw!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return raw


def parse_devname(raw: str) -> str:
    if not _DEVNAME.match(raw):
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
    try:
        val = float(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number") from None
    if not val > 0:
        raise ValueError(f"{raw!r} must be greater than 0")
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
) -> Resolved:
    """Resolve one setting: CLI > environment > ini > default, naming the source on error."""
    setting = SETTINGS[name]
    env = os.environ if environ is None else environ
    candidates = [
        (cli, f"command-line option --{name}"),
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

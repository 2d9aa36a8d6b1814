"""One host's netdev side of the topology: create its veth pair on the switch, link it
up with its route, destroy it (hibernate), and change only netdevs in the state file.
"""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import NotOurs
from harness.core.state import STATE_PATH, StateFile
from harness.system import command, network
from harness.topology.config import TopologyConfig


def ip(*args: str) -> None:
    """`ip ARGS...`, bounded, raising with its stderr on failure."""
    command.run(["ip", *args])


SYSCTL_ROOT = Path("/proc/sys")


def sysctl_path(*parts: str) -> Path:
    """/proc/sys/PART/PART/...: built from parts, never by replacing dots (a netdev name
    may hold a dot, eth0.100, and keeps it in /proc/sys/net/ipv4/conf/eth0.100/)."""
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            raise ValueError(f"{part!r} cannot be a part of a sysctl path")
    return SYSCTL_ROOT.joinpath(*parts)


def netdev_sysctl_path(netdev: str, key: str) -> Path:
    """net.ipv4.conf.NETDEV.KEY as a path (NETDEV may hold dots)."""
    return sysctl_path("net", "ipv4", "conf", netdev, key)


def require_ours_netdev(name: str) -> None:
    """Refuse a netdev that is not in the state file."""
    if not StateFile.load(STATE_PATH).owns_netdev(name):
        raise NotOurs(f"netdev {name!r} is not in the state file {STATE_PATH}",
                      "rxe-power only changes netdevs it created; build them with rxe-power setup")


def set_netdev_up(name: str, up: bool) -> None:
    """Administratively up/down one of our netdevs (refuses foreign ones)."""
    require_ours_netdev(name)
    network.set_link_up(name, up)


def netdev_ifindex(name: str) -> int | None:
    net = network.sysfs_netdev(name)
    return net[0] if net else None


def create_side_netdev(cfg: TopologyConfig, which: str, state: StateFile | None = None,
                       up: bool = True, keep: bool | None = None) -> bool:
    """Create one host's veth pair, plug it into the switch, address it; `up`: link up + route.
    Both ends steer each flow to one CPU (network.steer_flows): without it, rxe's packets
    overtook each other on the way, and every 4 KiB SEND run of the bench met sequence
    NAKs and hundreds of go-back-N duplicates (docs/measurements/rxe-steering-*.json).
    Returns whether that steering could be set.

    Used by setup and by a hibernate resume (the netdev comes back with a new ifindex).
    """
    state = state or StateFile.load(STATE_PATH)
    side = cfg.side(which)
    state.record("netdev", keep=keep, name=side.netdev, peer=side.switch_port)
    ip("link", "add", side.netdev, "type", "veth", "peer", "name", side.switch_port)
    for key, val in (("accept_local", "1"), ("rp_filter", "0")):
        netdev_sysctl_path(side.netdev, key).write_text(val)
    steered = all([network.steer_flows(side.netdev), network.steer_flows(side.switch_port)])
    ip("link", "set", side.switch_port, "master", cfg.switch)
    ip("link", "set", side.switch_port, "up")
    ip("addr", "add", f"{side.addr}/32", "dev", side.netdev)
    state.record("table", keep=keep, table=side.table)
    if up:
        side_up(cfg, which)
    return steered


def side_up(cfg: TopologyConfig, which: str) -> None:
    """Link up one host's netdev and (re-)add its route (a route needs its device up)."""
    side = cfg.side(which)
    require_ours_netdev(side.netdev)
    network.set_link_up(side.netdev, True)
    ip("route", "replace", side.remote_addr, "dev", side.netdev, "src", side.addr,
        "table", side.table)


def destroy_side_netdev(cfg: TopologyConfig, which: str) -> None:
    """Delete one host's veth pair (both ends). Its rdma device must be gone first."""
    side = cfg.side(which)
    require_ours_netdev(side.netdev)
    ip("link", "del", side.netdev)

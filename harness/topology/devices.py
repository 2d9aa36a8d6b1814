"""The two RDMA devices: find them (discover), wait for port states and uverbs nodes,
add an rxe link, and delete one within a bound (the delete blocks in the kernel while
a process holds the device open: on timeout the holders are named).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from harness.core.errors import BoundExceeded, TopologyError
from harness.core.state import Entry, StateFile, alive, process_start
from harness.system import command, gid_table, network
from harness.system.holders import find_holders, uverbs_files
from harness.system.inventory import ip_addrs, rdma_links
from harness.system.rdma_netlink import RdmaLink
from harness.topology.config import Endpoint, Topology, TopologyConfig

PORT_ACTIVE_TIMEOUT_S = 20.0
RDMA_LINK_DELETE_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
UVERBS_POLL_S = 0.002  # the uverbs node appears within ms of the link


def discover(cfg: TopologyConfig) -> Topology:
    """Find both HCAs, their netdevs, addresses and RoCEv2 GIDs; raise naming what is missing."""
    links = {lk.ifname: lk for lk in rdma_links()}
    return Topology(endpoint(links, cfg.local_dev, cfg.local_netdev, cfg.local_addr),
                    endpoint(links, cfg.peer_dev, cfg.peer_netdev, cfg.peer_addr))


def discover_local(cfg: TopologyConfig) -> Endpoint:
    """The local HCA only (the peer HCA lives in another kernel: harness.vm.pair)."""
    return endpoint({lk.ifname: lk for lk in rdma_links()}, cfg.local_dev, cfg.local_netdev,
                    cfg.local_addr)


def endpoint(links: dict[str, RdmaLink], dev: str, netdev: str, addr: str) -> Endpoint:
    """One HCA of `links` on `netdev` carrying `addr`; TopologyError naming what is not so."""
    lk = links.get(dev)
    if lk is None:
        raise TopologyError(
            f"RDMA device {dev!r} not found (have: {', '.join(sorted(links)) or 'none'})",
            "build the topology first: ci/rxe-setup.sh (or rxe-power setup)",
        )
    if lk.netdev != netdev:
        raise TopologyError(f"{dev} sits on netdev {lk.netdev!r}, expected {netdev!r}",
                            "check --rxe-local-netdev/--rxe-peer-netdev or rebuild")
    net = network.sysfs_netdev(netdev)
    if net is None:
        raise TopologyError(f"netdev {netdev!r} of {dev} is missing", "rebuild the topology")
    gid = gid_table.lookup_rocev2_gid(dev, addr, lk.port)
    # a RoCEv2 GID of the address on this netdev means the netdev carries the address
    # (the GID table follows the netdev's addresses): `ip addr` only to say what is wrong
    if gid is None or gid.ndev not in (None, netdev):
        if not any(a.ifname == netdev and a.address == addr for a in ip_addrs()):
            raise TopologyError(f"{netdev} does not carry {addr}", "rebuild the topology")
        raise TopologyError(f"{dev} has no RoCEv2 GID for {addr}",
                            "the GID appears once the address is up; rebuild the topology")
    return Endpoint(dev, lk.port, netdev, net[0], addr, gid.gid, gid.index, lk.state)


def wait_ports_active(cfg: TopologyConfig, timeout_s: float = PORT_ACTIVE_TIMEOUT_S) -> Topology:
    """Poll until both ports are ACTIVE and their RoCEv2 GIDs exist, within a bound."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            topo = discover(cfg)
            if topo.local.state == "ACTIVE" and topo.peer.state == "ACTIVE":
                return topo
            last = TopologyError(f"port states: {topo.local.dev}={topo.local.state}, "
                                 f"{topo.peer.dev}={topo.peer.state}")
        except TopologyError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise BoundExceeded("waiting for both RDMA ports ACTIVE", "PORT_ACTIVE_TIMEOUT_S",
                                timeout_s, str(last))
        time.sleep(POLL_INTERVAL_S)


def port_state(dev: str) -> str | None:
    """The port state of an RDMA device (ACTIVE, DOWN, ...), None when the device is gone."""
    for lk in rdma_links():
        if lk.ifname == dev:
            return lk.state
    return None


def wait_port_state(dev: str, want: str | None, timeout_s: float = PORT_ACTIVE_TIMEOUT_S) -> float:
    """Poll until `dev` is in state `want` (None: gone); returns the seconds it took."""
    t0 = time.monotonic()
    while (have := port_state(dev)) != want:
        if time.monotonic() - t0 > timeout_s:
            raise BoundExceeded(f"waiting for {dev} to be {want or 'gone'}",
                                "PORT_ACTIVE_TIMEOUT_S", timeout_s, f"{dev} is still {have}")
        time.sleep(POLL_INTERVAL_S)
    return time.monotonic() - t0


def wait_uverbs(dev: str, timeout_s: float = PORT_ACTIVE_TIMEOUT_S) -> float:
    """Poll until `dev` has a uverbs device node (processes can open it); seconds taken."""
    t0 = time.monotonic()
    while not any(os.path.exists(f) for f in uverbs_files(dev)):
        if time.monotonic() - t0 > timeout_s:
            raise BoundExceeded(f"waiting for {dev}'s uverbs device", "PORT_ACTIVE_TIMEOUT_S",
                                timeout_s, "/sys/class/infiniband_verbs/uverbsN for it")
        time.sleep(UVERBS_POLL_S)
    return time.monotonic() - t0


def add_rdma_link(dev: str, netdev: str) -> None:
    command.run(["rdma", "link", "add", dev, "type", "rxe", "netdev", netdev])


def start_rdma_link_delete(dev: str) -> subprocess.Popen[str]:
    """`rdma link delete DEV` as a child process: it blocks in the kernel while DEV is held.
    Its pid and start time go into the state file (kind `delete`): pending_deletes trusts
    that record alone, never a command line that anyone could imitate."""
    proc = subprocess.Popen(["rdma", "link", "delete", dev], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = process_start(proc.pid)
    if start is not None:
        with contextlib.suppress(PermissionError):  # not root: the delete fails anyway
            StateFile.load().record("delete", dev=dev, pid=proc.pid, start=start)
    return proc


def delete_finished(dev: str, proc: subprocess.Popen[str]) -> None:
    """Take a finished delete (its process reaped) off the state file's record."""
    with contextlib.suppress(PermissionError):
        state = StateFile.load()
        for e in state.created:
            if e.get("kind") == "delete" and e.get("dev") == dev and e.get("pid") == proc.pid:
                state.forget(**e)


def pending_deletes(dev: str, state_path: Path | None = None) -> list[int]:
    """Pids of our own `rdma link delete DEV` processes still running (blocked in the
    kernel by holders): the ones the state file records whose pid and start time still
    match a live process. Finished ones are taken off the record."""
    state = StateFile.load(state_path)
    live: list[Entry] = []
    done: list[Entry] = []
    for e in state.created:
        if e.get("kind") != "delete" or e.get("dev") != dev or not isinstance(e.get("pid"), int):
            continue
        (live if alive({"pid": e.get("pid"), "start": e.get("start")}) else done).append(e)
    for e in done:
        state.forget(**e)
    return sorted(int(e["pid"]) for e in live)


def delete_rdma_link(dev: str, timeout_s: float = RDMA_LINK_DELETE_TIMEOUT_S) -> None:
    """Delete an rxe device from a child process, bounded; on timeout name the holders.

    The delete blocks in the kernel while any process holds the device open. On
    timeout the child is left to finish by itself once the holders let go.
    """
    files = uverbs_files(dev)  # gone from sysfs once the delete starts
    proc = start_rdma_link_delete(dev)
    try:
        _, err = proc.communicate(timeout=timeout_s)
        delete_finished(dev, proc)
    except subprocess.TimeoutExpired:
        holders = find_holders(dev, files=files)
        names = "; ".join(h.describe() for h in holders) or "no holder found in /proc"
        raise BoundExceeded(f"rdma link delete {dev}", "RDMA_LINK_DELETE_TIMEOUT_S", timeout_s,
                            f"the device is held open by: {names}") from None
    if proc.returncode != 0:
        raise TopologyError(f"rdma link delete {dev} failed: {err.strip()}",
                            "see the message; is the device ours and present?")

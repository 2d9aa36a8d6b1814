"""The two-HCA topology: rxe0 (local HCA) <-> veth -- switch -- veth <-> rxe1 (peer's HCA).

Two rxe devices on one kernel only talk when policy routing forces their traffic
onto the wire (otherwise the kernel short-cuts local addresses through `lo`
and rxe drops what arrives on a netdev without an rxe device). What `up` builds:

    rxpw0 198.18.0.1/32 ==veth== rxpw0s -[bridge rxpwsw]- rxpw1s ==veth== rxpw1 198.18.0.2/32
    rxe0 on rxpw0                                                         rxe1 on rxpw1
    rules: pref 1 iif rxpw0 lookup local      pref 2 iif rxpw1 lookup local
           pref 3 from A lookup 18770         pref 4 to B lookup 18770   (B via rxpw0)
           pref 5 from B lookup 18771         pref 6 to A lookup 18771   (A via rxpw1)
           the system's `pref 0 lookup local` moved to pref 10 (restored on teardown)
    sysctls on our veths: accept_local=1 rp_filter=0; all.rp_filter=0 if it was not

The bridge is the switch between the two hosts: with a plain veth pair, taking
the local end down also drops the peer's carrier (measured: rxe1 went DOWN), and
destroying the local netdev would destroy the peer's too. Through the switch, the
local side can flap, or be destroyed and re-created (hibernate), while rxe1 stays
ACTIVE, as a remote host's HCA would.

Everything created is written to a state file *before* it is created, so a run
killed at any point leaves a record that `down` uses to remove exactly what we
made. Nothing that is not in the state file is deleted or changed; a name
clash with a foreign object is refused with an error naming it.

Standard library only: ci/rxe-setup.sh runs this with the system python3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.core.errors import BoundExceeded, NoRxe, NotOurs, RxePowerError, TopologyError
from harness.core.state import STATE_PATH, StateFile, alive
from harness.system import command, gid_table, kernelobjs, network, rdma_netlink
from harness.system.holders import find_holders, uverbs_files

TABLE_LOCAL_SIDE = "18770"  # routes the peer's address out of the local veth
TABLE_PEER_SIDE = "18771"  # routes the local address out of the peer veth
RULE_PREFS = (1, 2, 3, 4, 5, 6)
LOCAL_RULE_NEW_PREF = 10
PORT_ACTIVE_TIMEOUT_S = 20.0
RDMA_LINK_DELETE_TIMEOUT_S = 10.0
PINGPONG_TIMEOUT_S = 60.0
PINGPONG_ITERS = 200
POLL_INTERVAL_S = 0.05
NEIGH_TIMEOUT_S = 3.0  # ARP for the far address on our wire (measured 7-46 ms under TCG)
NEIGH_POLL_S = 0.002


@dataclass(frozen=True)
class TopologyConfig:
    local_dev: str = "rxe0"
    peer_dev: str = "rxe1"
    local_netdev: str = "rxpw0"
    peer_netdev: str = "rxpw1"
    local_addr: str = "198.18.0.1"
    peer_addr: str = "198.18.0.2"
    switch: str = "rxpwsw"

    @staticmethod
    def switch_port(netdev: str) -> str:
        """The switch-side end of a host's veth pair."""
        return netdev[:14] + "s"

    def side(self, which: str) -> Side:
        """The netdev-level description of one host ("local" or "peer")."""
        if which == "local":
            return Side(self.local_netdev, self.switch_port(self.local_netdev), self.local_addr,
                        self.peer_addr, TABLE_LOCAL_SIDE, self.local_dev)
        return Side(self.peer_netdev, self.switch_port(self.peer_netdev), self.peer_addr,
                    self.local_addr, TABLE_PEER_SIDE, self.peer_dev)

    @classmethod
    def from_settings(cls, cli: dict[str, str | None] | None = None) -> TopologyConfig:
        """Build from the settings table (CLI > environment > default)."""
        from harness.core.settings import resolve

        cli = cli or {}
        val = {k: resolve(k, cli.get(k)).value for k in (
            "rxe-local-dev", "rxe-peer-dev", "rxe-local-netdev", "rxe-peer-netdev",
            "rxe-local-addr", "rxe-peer-addr")}
        cfg = cls(val["rxe-local-dev"], val["rxe-peer-dev"], val["rxe-local-netdev"],
                  val["rxe-peer-netdev"], val["rxe-local-addr"], val["rxe-peer-addr"])
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.local_dev == self.peer_dev:
            raise TopologyError(f"local and peer device are both {self.local_dev!r}",
                                "give the peer HCA its own name (RXE_POWER_PEER_DEV)")
        if self.local_netdev == self.peer_netdev:
            raise TopologyError(f"local and peer netdev are both {self.local_netdev!r}",
                                "give each veth end its own name")
        names = [self.local_netdev, self.peer_netdev, self.switch,
                 self.switch_port(self.local_netdev), self.switch_port(self.peer_netdev)]
        if len(set(names)) != len(names):
            raise TopologyError(f"netdev names collide: {names}",
                                "choose netdev names that differ in their first 14 characters "
                                "and from the switch name")
        if self.local_addr == self.peer_addr:
            raise TopologyError(f"local and peer address are both {self.local_addr}",
                                "give each end its own IPv4 address")

    def rules(self) -> list[network.IpRule]:
        a, b = self.local_addr, self.peer_addr
        p = RULE_PREFS
        return [
            network.IpRule(p[0], "local", iif=self.local_netdev),
            network.IpRule(p[1], "local", iif=self.peer_netdev),
            network.IpRule(p[2], TABLE_LOCAL_SIDE, src=a),
            network.IpRule(p[3], TABLE_LOCAL_SIDE, dst=b),
            network.IpRule(p[4], TABLE_PEER_SIDE, src=b),
            network.IpRule(p[5], TABLE_PEER_SIDE, dst=a),
        ]


@dataclass(frozen=True)
class Side:
    """One host's netdev, its switch port, its address and its routing table."""

    netdev: str
    switch_port: str
    addr: str
    remote_addr: str
    table: str
    rdma_dev: str


@dataclass(frozen=True)
class Endpoint:
    """One HCA of the topology as discovered."""

    dev: str
    port: int
    netdev: str
    ifindex: int
    addr: str
    gid: str
    gid_index: int
    state: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Topology:
    local: Endpoint
    peer: Endpoint

    def to_json(self) -> dict:
        return {"local": self.local.to_json(), "peer": self.peer.to_json()}


# --- state file -------------------------------------------------------------------------


# --- queries ----------------------------------------------------------------------------


def rdma_links() -> list[rdma_netlink.RdmaLink]:
    try:  # no program run: the shim polls this
        return rdma_netlink.nldev_links()
    except (OSError, RxePowerError):
        return rdma_netlink.parse_rdma_links(command.run_json(["rdma", "-j", "link", "show"]))


def ip_links() -> list[network.NetLink]:
    return network.parse_ip_links(command.run_json(["ip", "-j", "-d", "link", "show"]))


def ip_addrs() -> list[network.IpAddr]:
    return network.parse_ip_addrs(command.run_json(["ip", "-j", "-4", "addr", "show"]))


def ip_rules() -> list[network.IpRule]:
    return network.parse_ip_rules(command.run_json(["ip", "-j", "-4", "rule", "show"]))


def ip_routes(table: str) -> list[network.IpRoute]:
    res = command.run(["ip", "-j", "-4", "route", "show", "table", table], check=False)
    if res.returncode != 0:  # an empty/nonexistent table
        return []
    return network.parse_ip_routes(command.parse_json_list(res.stdout, "ip route"), table)


def rxe_module_loaded() -> bool:
    return Path("/sys/module/rdma_rxe").is_dir()


def require_root() -> None:
    if os.geteuid() != 0:
        raise NoRxe("building the rxe topology needs root (it adds veths, rules and rdma links)",
                    "run as root, e.g. sudo")


def load_rxe_module() -> None:
    if rxe_module_loaded():
        return
    res = command.run(["modprobe", "rdma_rxe"], check=False)
    if res.returncode != 0 or not rxe_module_loaded():
        release = os.uname().release
        raise NoRxe(
            f"the running kernel {release} cannot load rdma_rxe: "
            f"{res.stderr.strip() or 'no module'}",
            "on Ubuntu: apt-get install linux-modules-extra-$(uname -r); "
            "or use the VM mode (rxe-power ... --mode vm, or RXE_POWER_MODE=vm), which boots "
            "a distro kernel that has the module in QEMU",
        )


# --- discovery --------------------------------------------------------------------------


def discover(cfg: TopologyConfig) -> Topology:
    """Find both HCAs, their netdevs, addresses and RoCEv2 GIDs; raise naming what is missing."""
    links = {lk.ifname: lk for lk in rdma_links()}

    def endpoint(dev: str, netdev: str, addr: str) -> Endpoint:
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

    return Topology(endpoint(cfg.local_dev, cfg.local_netdev, cfg.local_addr),
                    endpoint(cfg.peer_dev, cfg.peer_netdev, cfg.peer_addr))


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


# --- setup ------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    command.run(["ip", *args])


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def _check_conflicts(cfg: TopologyConfig, state: StateFile) -> None:
    """Refuse to proceed if a name or slot we need is taken by something not ours."""
    nets = {n.ifname for n in ip_links()}
    for name in (cfg.local_netdev, cfg.peer_netdev, cfg.switch,
                 cfg.switch_port(cfg.local_netdev), cfg.switch_port(cfg.peer_netdev)):
        if name in nets and not state.owns_netdev(name):
            raise NotOurs(f"netdev {name!r} already exists and was not created by rxe-power",
                          "choose other names (RXE_POWER_LOCAL_NETDEV / RXE_POWER_PEER_NETDEV)")
    devs = {lk.ifname for lk in rdma_links()}
    for name in (cfg.local_dev, cfg.peer_dev):
        if name in devs and not state.owns_rdma_link(name):
            raise NotOurs(f"RDMA device {name!r} already exists and was not created by rxe-power",
                          "choose other names (RXE_POWER_LOCAL_DEV / RXE_POWER_PEER_DEV)")
    ours = {tuple(r.selector_args()) for r in cfg.rules()}
    for rule in ip_rules():
        if rule.priority in RULE_PREFS and tuple(rule.selector_args()) not in ours:
            raise NotOurs(f"ip rule at priority {rule.priority} ({' '.join(rule.selector_args())})"
                          " is not ours", "free priorities 1-6 or run on a clean host")
    for table in (TABLE_LOCAL_SIDE, TABLE_PEER_SIDE):
        routes = ip_routes(table)
        if routes and not state.has("table", table=table):
            raise NotOurs(f"routing table {table} is already in use ({len(routes)} routes)",
                          "remove those routes or run on a clean host")
    for addr in ip_addrs():
        if addr.address in (cfg.local_addr, cfg.peer_addr) and not state.owns_netdev(addr.ifname):
            raise NotOurs(f"address {addr.address} is already on {addr.ifname}",
                          "choose other addresses (RXE_POWER_LOCAL_ADDR / RXE_POWER_PEER_ADDR)")


def is_up(cfg: TopologyConfig, state: StateFile) -> bool:
    """True when every piece in the state file is present and the topology is discoverable."""
    if not state.topology_entries() or state.config != asdict(cfg):
        return False
    try:
        topo = discover(cfg)
    except TopologyError:
        return False
    have_rules = {tuple(r.selector_args()) for r in ip_rules()}
    if not all(tuple(r.selector_args()) in have_rules for r in cfg.rules()):
        return False
    return topo.local.state == "ACTIVE" and topo.peer.state == "ACTIVE"


def setup(cfg: TopologyConfig, log=print, keep: bool = False) -> tuple[Topology, bool]:
    """Build the topology (idempotent). Returns (topology, built): `built` means this
    caller owns it and removes it at its end. `keep`: `rxe-power setup`, it stays.

    A run that was killed left processes (ended here first) and maybe a half-done
    transition; a topology it built for itself is adopted: repaired and owned by us."""
    from harness.topology.cleanup import reap_stale

    require_root()
    cfg.validate()
    for problem in reap_stale(log):
        log(f"warning: {problem}")
    state = StateFile.load(STATE_PATH)
    if state.topology_entries() and state.config == asdict(cfg):
        orphan = [e for e in state.topology_entries() if not e.get("keep")
                  and not alive(e.get("owner"))]
        if orphan:
            state.adopt()
            log("adopting the topology a killed run left: it is removed at our end")
        restore_local_side(cfg, log=log)  # a transition cut short; no-op when whole
        if orphan and is_up(cfg, state):
            return discover(cfg), True
    if is_up(cfg, state):
        log("topology already up (state file matches, ports ACTIVE): nothing changed")
        return discover(cfg), False
    if state.topology_entries():
        log(f"state file {STATE_PATH} records a partial or different topology: removing it first")
        teardown(log=log)
        state = StateFile.load(STATE_PATH)
    load_rxe_module()
    _check_conflicts(cfg, state)
    state.config = asdict(cfg)
    state.save()

    state.record("netdev", keep=keep, name=cfg.switch, peer=None)
    _ip("link", "add", cfg.switch, "type", "bridge")
    _ip("link", "set", cfg.switch, "up")
    log(f"created switch (bridge) {cfg.switch}")
    all_rp = _sysctl_path("net.ipv4.conf.all.rp_filter")
    old = all_rp.read_text().strip()
    if old != "0":
        state.record("sysctl", keep=keep, key="net.ipv4.conf.all.rp_filter", old=old)
        all_rp.write_text("0")
        log(f"set net.ipv4.conf.all.rp_filter 0 (was {old}; restored on teardown)")
    for which in ("local", "peer"):
        create_side_netdev(cfg, which, state, keep=keep)
        side = cfg.side(which)
        log(f"veth {side.netdev} <-> {side.switch_port} on {cfg.switch}, {side.addr} on "
            f"{side.netdev}, route to {side.remote_addr} in table {side.table}")
    for rule in cfg.rules():
        state.record("rule", keep=keep, args=rule.selector_args())
        _ip("rule", "add", *rule.selector_args())
    log(f"policy routing: tables {TABLE_LOCAL_SIDE}/{TABLE_PEER_SIDE}, rules at prefs "
        f"{RULE_PREFS[0]}-{RULE_PREFS[-1]}")
    _move_local_rule(state, log, keep)

    for dev, netdev in ((cfg.local_dev, cfg.local_netdev), (cfg.peer_dev, cfg.peer_netdev)):
        state.record("rdma_link", keep=keep, name=dev, netdev=netdev)
        add_rdma_link(dev, netdev)
    log(f"rdma links {cfg.local_dev} on {cfg.local_netdev}, {cfg.peer_dev} on "
        f"{cfg.peer_netdev}")
    topo = wait_ports_active(cfg)
    for which in ("local", "peer"):  # the first connects must not wait out the resolver
        resolve_neighbour(cfg, which)
    log(f"ports ACTIVE: {topo.local.dev} gid[{topo.local.gid_index}]={topo.local.gid}, "
        f"{topo.peer.dev} gid[{topo.peer.gid_index}]={topo.peer.gid}")
    return topo, True


def create_side_netdev(cfg: TopologyConfig, which: str, state: StateFile | None = None,
                       up: bool = True, keep: bool | None = None) -> None:
    """Create one host's veth pair, plug it into the switch, address it; `up`: link up + route.

    Used by setup and by a hibernate resume (the netdev comes back with a new ifindex).
    """
    state = state or StateFile.load(STATE_PATH)
    side = cfg.side(which)
    state.record("netdev", keep=keep, name=side.netdev, peer=side.switch_port)
    _ip("link", "add", side.netdev, "type", "veth", "peer", "name", side.switch_port)
    for key, val in (("accept_local", "1"), ("rp_filter", "0")):
        _sysctl_path(f"net.ipv4.conf.{side.netdev}.{key}").write_text(val)
    _ip("link", "set", side.switch_port, "master", cfg.switch)
    _ip("link", "set", side.switch_port, "up")
    _ip("addr", "add", f"{side.addr}/32", "dev", side.netdev)
    state.record("table", keep=keep, table=side.table)
    if up:
        side_up(cfg, which)


def side_up(cfg: TopologyConfig, which: str) -> None:
    """Link up one host's netdev and (re-)add its route (a route needs its device up)."""
    side = cfg.side(which)
    _require_ours_netdev(side.netdev)
    network.set_link_up(side.netdev, True)
    _ip("route", "replace", side.remote_addr, "dev", side.netdev, "src", side.addr,
        "table", side.table)


def restore_local_side(cfg: TopologyConfig, log=print,
                       pending_timeout_s: float = RDMA_LINK_DELETE_TIMEOUT_S) -> list[str]:
    """Put the local side back (netdev, address, route, link up, device, ports ACTIVE).

    Touches only objects in the state file. Returns what could not be restored.
    """
    side = cfg.side("local")
    state = StateFile.load(STATE_PATH)
    if not state.owns_netdev(side.netdev):
        return [f"{side.netdev} is not in the state file {STATE_PATH}: not ours to restore"]
    deadline = time.monotonic() + pending_timeout_s
    while (pend := pending_deletes(cfg.local_dev)) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
    if pend:
        return [f"{cfg.local_dev} cannot be re-created: its delete is still pending in pid "
                f"{', '.join(map(str, pend))}, blocked until the processes holding the old "
                f"device close it (see the veto report); then run `rxe-power recover`"]
    with contextlib.suppress(TopologyError):
        topo = discover(cfg)
        if topo.local.state == "ACTIVE" and topo.peer.state == "ACTIVE":
            return []  # whole: change nothing
    problems: list[str] = []
    try:
        if netdev_ifindex(side.netdev) is None:
            create_side_netdev(cfg, "local", state)
            log(f"re-created {side.netdev}")
        else:
            _ip("link", "set", side.switch_port, "master", cfg.switch, "up")
            _ip("addr", "replace", f"{side.addr}/32", "dev", side.netdev)
            side_up(cfg, "local")
        if port_state(cfg.local_dev) is None:
            add_rdma_link(cfg.local_dev, side.netdev)
            log(f"re-created {cfg.local_dev} on {side.netdev}")
        wait_ports_active(cfg)
    except RxePowerError as exc:
        problems.append(f"local side not restored: {exc}")
    return problems


def destroy_side_netdev(cfg: TopologyConfig, which: str) -> None:
    """Delete one host's veth pair (both ends). Its rdma device must be gone first."""
    side = cfg.side(which)
    _require_ours_netdev(side.netdev)
    _ip("link", "del", side.netdev)


def neighbour_resolved(addr: str, netdev: str, arp: Path = Path("/proc/net/arp")) -> bool:
    """Whether `netdev` has a complete ARP entry for `addr` (flags ATF_COM)."""
    try:
        rows = arp.read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        f = row.split()
        if len(f) >= 6 and f[0] == addr and f[5] == netdev and int(f[2], 16) & 0x2:
            return True
    return False


def resolve_neighbour(cfg: TopologyConfig, which: str,
                      timeout_s: float = NEIGH_TIMEOUT_S) -> float:
    """Make one side's netdev know the far address's MAC (ARP), bounded; the seconds it
    took. A carrier drop flushes the neighbour table, and the first RC connect after
    that (modify QP to RTR) resolves the address in the kernel (ib_core
    rdma_addr_find_l2_eth_by_grh). On this wire the ARP reply is processed before that
    resolver queues its request, so it misses the update and waits out its whole 1000 ms
    timeout: measured 1.00-1.04 s for every connect after a flush, 3-17 ms once the entry
    exists. A datagram from the side's address (to the discard port) resolves it first."""
    side = cfg.side(which)
    t0 = time.monotonic()
    if neighbour_resolved(side.remote_addr, side.netdev):
        return 0.0
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((side.addr, 0))
        s.sendto(b"", (side.remote_addr, 9))
    while not neighbour_resolved(side.remote_addr, side.netdev):
        if time.monotonic() - t0 > timeout_s:
            raise BoundExceeded(f"resolving {side.remote_addr} on {side.netdev} (ARP)",
                                "NEIGH_TIMEOUT_S", timeout_s, "a complete ARP entry")
        time.sleep(NEIGH_POLL_S)
    return time.monotonic() - t0


def netdev_ifindex(name: str) -> int | None:
    net = network.sysfs_netdev(name)
    return net[0] if net else None


def _move_local_rule(state: StateFile, log, keep: bool) -> None:
    """Move the system's `pref 0 lookup local` below our rules (restored on teardown)."""
    rules = ip_rules()
    if any(r.priority == 0 and r.table == "local" and not (r.src or r.dst or r.iif)
           for r in rules):
        state.record("local_rule_moved", keep=keep, new_pref=LOCAL_RULE_NEW_PREF)
        if not any(r.priority == LOCAL_RULE_NEW_PREF and r.table == "local" for r in rules):
            _ip("rule", "add", "pref", str(LOCAL_RULE_NEW_PREF), "lookup", "local")
        _ip("rule", "del", "pref", "0", "lookup", "local")
        log(f"moved 'lookup local' from pref 0 to {LOCAL_RULE_NEW_PREF} (restored on teardown)")


def _require_ours_netdev(name: str) -> None:
    if not StateFile.load(STATE_PATH).owns_netdev(name):
        raise NotOurs(f"netdev {name!r} is not in the state file {STATE_PATH}",
                      "rxe-power only changes netdevs it created; build them with rxe-power setup")


def set_netdev_up(name: str, up: bool) -> None:
    """Administratively up/down one of our netdevs (refuses foreign ones)."""
    _require_ours_netdev(name)
    network.set_link_up(name, up)


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
        time.sleep(NEIGH_POLL_S)
    return time.monotonic() - t0


def add_rdma_link(dev: str, netdev: str) -> None:
    command.run(["rdma", "link", "add", dev, "type", "rxe", "netdev", netdev])


def start_rdma_link_delete(dev: str) -> subprocess.Popen:
    """`rdma link delete DEV` as a child process: it blocks in the kernel while DEV is held."""
    return subprocess.Popen(["rdma", "link", "delete", dev], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pending_deletes(dev: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids of `rdma link delete DEV` processes still running (blocked by holders)."""
    want = f"rdma\0link\0delete\0{dev}\0".encode()
    out = []
    for pid_dir in proc.iterdir():
        if pid_dir.name.isdigit():
            try:
                if (pid_dir / "cmdline").read_bytes().endswith(want):
                    out.append(int(pid_dir.name))
            except OSError:
                continue
    return sorted(out)


def delete_rdma_link(dev: str, timeout_s: float = RDMA_LINK_DELETE_TIMEOUT_S) -> None:
    """Delete an rxe device from a child process, bounded; on timeout name the holders.

    The delete blocks in the kernel while any process holds the device open. On
    timeout the child is left to finish by itself once the holders let go.
    """
    files = uverbs_files(dev)  # gone from sysfs once the delete starts
    proc = start_rdma_link_delete(dev)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        holders = find_holders(dev, files=files)
        names = "; ".join(h.describe() for h in holders) or "no holder found in /proc"
        raise BoundExceeded(f"rdma link delete {dev}", "RDMA_LINK_DELETE_TIMEOUT_S", timeout_s,
                            f"the device is held open by: {names}") from None
    if proc.returncode != 0:
        raise TopologyError(f"rdma link delete {dev} failed: {err.strip()}",
                            "see the message; is the device ours and present?")


# --- teardown ---------------------------------------------------------------------------


def teardown(log=print, state_path: Path | None = None) -> list[str]:
    """Remove exactly what the state file records, newest first. Returns problems left."""
    require_root()
    state = StateFile.load(state_path or STATE_PATH)
    if not state.topology_entries():
        log("nothing of ours to remove")
        if not state.created:
            with contextlib.suppress(FileNotFoundError):
                state.path.unlink()
        return []
    problems: list[str] = []
    for entry in list(reversed(state.topology_entries())):
        try:
            _undo(entry, log)
            state.forget(**entry)
        except RxePowerError as exc:
            problems.append(f"{entry}: {exc}")
            log(f"could not remove {entry}: {exc}")
            if entry["kind"] == "rdma_link":
                # removing netdevs from under a device whose delete is still blocked
                # can hang the kernel's rtnl; stop here and say what is left
                log("stopping teardown: a device delete is blocked; close its holders and "
                    "run teardown again")
                break
    if not problems:
        if not StateFile.load(state.path).created:
            state.path.unlink(missing_ok=True)
        log("teardown complete: nothing of our topology remains")
    return problems


def _undo(entry: dict, log) -> None:
    kind = entry["kind"]
    if kind == "rdma_link":
        if any(lk.ifname == entry["name"] and lk.netdev in (entry["netdev"], None)
               for lk in rdma_links()):
            delete_rdma_link(entry["name"])
            log(f"deleted rdma link {entry['name']}")
    elif kind == "local_rule_moved":
        rules = ip_rules()
        if not any(r.priority == 0 and r.table == "local" for r in rules):
            _ip("rule", "add", "pref", "0", "lookup", "local")
        if any(r.priority == entry["new_pref"] and r.table == "local" for r in rules):
            _ip("rule", "del", "pref", str(entry["new_pref"]), "lookup", "local")
        log("restored 'lookup local' at pref 0")
    elif kind == "rule":
        present = {tuple(r.selector_args()) for r in ip_rules()}
        if tuple(entry["args"]) in present:
            _ip("rule", "del", *entry["args"])
    elif kind == "table":
        for route in ip_routes(entry["table"]):
            _ip("route", "del", route.dst, "table", entry["table"])
    elif kind == "sysctl":
        _sysctl_path(entry["key"]).write_text(entry["old"])
        log(f"restored {entry['key']}={entry['old']}")
    elif kind == "netdev":
        if any(n.ifname == entry["name"] for n in ip_links()):
            _ip("link", "del", entry["name"])
            log(f"deleted {entry['name']}" + (f" <-> {entry['peer']}" if entry["peer"] else ""))
    elif kind in kernelobjs.KINDS:  # the kernel clients' objects (nvmet, nvme, null_blk)
        kernelobjs.undo(entry, log)
    else:
        raise TopologyError(f"unknown entry kind {kind!r} in the state file",
                            "the state file was written by a newer rxe-power; use that to clean")


# --- traffic check with an rdma-core program (not ours) ---------------------------------


@dataclass(frozen=True)
class PingpongResult:
    iters: int
    usec_per_iter: float | None
    client_output: str


_USEC_RE = re.compile(r"(\d+) iters in ([\d.]+) seconds = ([\d.]+) usec/iter")


def parse_pingpong(text: str) -> tuple[int, float] | None:
    m = _USEC_RE.search(text)
    return (int(m.group(1)), float(m.group(3))) if m else None


def _tcp_listening(port: int) -> bool:
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[1].rsplit(":", 1)[1] == f"{port:04X}" and cols[3] == "0A":
                return True
    return False


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pingpong_check(topo: Topology, iters: int = PINGPONG_ITERS,
                   timeout_s: float = PINGPONG_TIMEOUT_S) -> PingpongResult:
    """Run rdma-core's ibv_rc_pingpong rxe1 (server) <-> rxe0 (client) across the wire."""
    port = _free_tcp_port()
    common = ["-n", str(iters), "-p", str(port), "-s", "4096"]
    srv_argv = ["ibv_rc_pingpong", "-d", topo.peer.dev, "-g", str(topo.peer.gid_index), *common]
    cli_argv = ["ibv_rc_pingpong", "-d", topo.local.dev, "-g", str(topo.local.gid_index),
                *common, topo.peer.addr]
    deadline = time.monotonic() + timeout_s
    srv = subprocess.Popen(srv_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        while not _tcp_listening(port):
            if srv.poll() is not None:
                raise TopologyError(f"ibv_rc_pingpong server exited {srv.returncode}: "
                                    f"{srv.stdout.read() if srv.stdout else ''}",
                                    "check that rxe1 is ACTIVE and ibverbs-utils is installed")
            if time.monotonic() > deadline:
                raise BoundExceeded("ibv_rc_pingpong server start", "PINGPONG_TIMEOUT_S",
                                    timeout_s, f"server not listening on TCP port {port}")
            time.sleep(POLL_INTERVAL_S)
        try:
            cli = subprocess.run(cli_argv, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise BoundExceeded("ibv_rc_pingpong rxe0 -> rxe1", "PINGPONG_TIMEOUT_S", timeout_s,
                                f"{iters} round trips not finished: RoCE traffic is not "
                                "crossing the wire") from None
        try:
            srv_out, _ = srv.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise BoundExceeded("ibv_rc_pingpong server", "PINGPONG_TIMEOUT_S", timeout_s,
                                "the server did not finish its iterations") from None
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    if cli.returncode != 0 or srv.returncode != 0:
        raise TopologyError(
            f"ibv_rc_pingpong failed (client exit {cli.returncode}, server exit "
            f"{srv.returncode}): {cli.stderr.strip() or cli.stdout.strip()} / {srv_out.strip()}",
            "RoCE traffic does not flow rxe0 <-> rxe1; check the policy rules (ip rule) and "
            "that both ports are ACTIVE (rdma link)",
        )
    parsed = parse_pingpong(cli.stdout + cli.stderr)
    return PingpongResult(parsed[0] if parsed else iters, parsed[1] if parsed else None,
                          (cli.stdout + cli.stderr).strip())


# --- command line (used by ci/rxe-setup.sh) ---------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rxe-setup", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["up", "down", "show", "verify"])
    ap.add_argument("--json", action="store_true", help="print the topology as JSON")
    for name in ("rxe-local-dev", "rxe-peer-dev", "rxe-local-netdev", "rxe-peer-netdev",
                 "rxe-local-addr", "rxe-peer-addr"):
        ap.add_argument(f"--{name.removeprefix('rxe-')}", dest=name)
    args = ap.parse_args(argv)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    try:
        cfg = TopologyConfig.from_settings(vars(args))
        if args.action == "down":
            problems = teardown(log=log)
            return 1 if problems else 0
        if args.action == "up":
            topo, _ = setup(cfg, log=log, keep=True)
            res = pingpong_check(topo)
            log(f"traffic check: ibv_rc_pingpong {topo.local.dev} -> {topo.peer.dev} "
                f"{res.iters} iterations OK, {res.usec_per_iter} usec/iter")
        else:
            topo = discover(cfg)
            if args.action == "verify":
                res = pingpong_check(topo)
                log(f"traffic check: {res.iters} iterations OK, {res.usec_per_iter} usec/iter")
        if args.json:
            print(json.dumps(topo.to_json(), indent=1))
        elif args.action == "show":
            for ep in (topo.local, topo.peer):
                print(f"{ep.dev}: {ep.netdev} {ep.addr} gid[{ep.gid_index}] {ep.gid} {ep.state}")
        return 0
    except RxePowerError as exc:
        print(f"rxe-setup: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

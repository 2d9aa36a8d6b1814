"""Build the topology (setup), put its local side back (restore_local_side), and remove
exactly what the state file records (teardown); refuse names or slots taken by
something that is not ours.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict
from pathlib import Path

from harness.core.errors import NoRxe, NotOurs, RxePowerError, TopologyError
from harness.core.printer import NULL, Printer
from harness.core.proc import reap_stale
from harness.core.state import STATE_PATH, Entry, StateFile, alive
from harness.system import kernelobjs
from harness.system.inventory import ip_addrs, ip_links, ip_routes, ip_rules, rdma_links
from harness.system.rxe_module import load_rxe_module
from harness.topology.config import (
    LOCAL_RULE_NEW_PREF,
    RULE_PREFS,
    TABLE_LOCAL_SIDE,
    TABLE_PEER_SIDE,
    Topology,
    TopologyConfig,
)
from harness.topology.devices import (
    POLL_INTERVAL_S,
    RDMA_LINK_DELETE_TIMEOUT_S,
    add_rdma_link,
    delete_rdma_link,
    discover,
    pending_deletes,
    port_state,
    wait_ports_active,
)
from harness.topology.neighbour import resolve_neighbour
from harness.topology.netdevs import (
    create_side_netdev,
    ip,
    netdev_ifindex,
    netdev_sysctl_path,
    side_up,
    sysctl_path,
)

BUILD = "building the rxe topology needs root (it adds veths, rules and rdma links)"
REMOVE = "removing the rxe topology needs root (it deletes the veths, rules and rdma links " \
    "rxe-power made)"


def require_root(need: str = BUILD, command: str = "") -> None:
    """Refuse a non-root caller, saying what needs root (`need`) and how to run it."""
    if os.geteuid() != 0:
        raise NoRxe(need, f"run it as root: sudo {command}" if command else
                    "run it as root (e.g. with sudo)")


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


def setup(cfg: TopologyConfig, out: Printer = NULL, keep: bool = False) -> tuple[Topology, bool]:
    """Build the topology (idempotent). Returns (topology, built): `built` means this
    caller owns it and removes it at its end. `keep`: `rxe-power setup`, it stays.

    A run that was killed left processes (ended here first) and maybe a half-done
    transition; a topology it built for itself is adopted: repaired and owned by us."""
    require_root()
    cfg.validate()
    for problem in reap_stale(out):
        out(f"warning: {problem}")
    state = StateFile.load(STATE_PATH)
    if state.topology_entries() and state.config == asdict(cfg):
        orphan = [e for e in state.topology_entries() if not e.get("keep")
                  and not alive(e.get("owner"))]
        if orphan:
            state.adopt()
            out("adopting the topology a killed run left: it is removed at our end")
        restore_local_side(cfg, out=out)  # a transition cut short; no-op when whole
        if orphan and is_up(cfg, state):
            return discover(cfg), True
    if is_up(cfg, state):
        out("topology already up (state file matches, ports ACTIVE): nothing changed")
        return discover(cfg), False
    if state.topology_entries():
        out(f"state file {STATE_PATH} records a partial or different topology: removing it first")
        teardown(out=out)
        state = StateFile.load(STATE_PATH)
    load_rxe_module()
    _check_conflicts(cfg, state)
    state.config = asdict(cfg)
    state.save()

    state.record("netdev", keep=keep, name=cfg.switch, peer=None)
    ip("link", "add", cfg.switch, "type", "bridge")
    ip("link", "set", cfg.switch, "up")
    out(f"created switch (bridge) {cfg.switch}")
    all_rp = netdev_sysctl_path("all", "rp_filter")
    old = all_rp.read_text().strip()
    if old != "0":
        state.record("sysctl", keep=keep, key="net.ipv4.conf.all.rp_filter", old=old)
        all_rp.write_text("0")
        out(f"set net.ipv4.conf.all.rp_filter 0 (was {old}; restored on teardown)")
    for which in ("local", "peer"):
        steered = create_side_netdev(cfg, which, state, keep=keep)
        side = cfg.side(which)
        out(f"veth {side.netdev} <-> {side.switch_port} on {cfg.switch}, {side.addr} on "
            f"{side.netdev}, route to {side.remote_addr} in table {side.table}"
            + ("" if steered else "; no receive packet steering in this kernel (rxe's "
               "packets may overtake each other: go-back-N retries)"))
    for rule in cfg.rules():
        state.record("rule", keep=keep, args=rule.selector_args())
        ip("rule", "add", *rule.selector_args())
    out(f"policy routing: tables {TABLE_LOCAL_SIDE}/{TABLE_PEER_SIDE}, rules at prefs "
        f"{RULE_PREFS[0]}-{RULE_PREFS[-1]}")
    _move_local_rule(state, out, keep)

    for dev, netdev in ((cfg.local_dev, cfg.local_netdev), (cfg.peer_dev, cfg.peer_netdev)):
        state.record("rdma_link", keep=keep, name=dev, netdev=netdev)
        add_rdma_link(dev, netdev)
    out(f"rdma links {cfg.local_dev} on {cfg.local_netdev}, {cfg.peer_dev} on "
        f"{cfg.peer_netdev}")
    topo = wait_ports_active(cfg)
    for which in ("local", "peer"):  # the first connects must not wait out the resolver
        resolve_neighbour(cfg, which)
    out(f"ports ACTIVE: {topo.local.dev} gid[{topo.local.gid_index}]={topo.local.gid}, "
        f"{topo.peer.dev} gid[{topo.peer.gid_index}]={topo.peer.gid}")
    return topo, True


def _move_local_rule(state: StateFile, out: Printer, keep: bool) -> None:
    """Move the system's `pref 0 lookup local` below our rules (restored on teardown)."""
    rules = ip_rules()
    if any(r.priority == 0 and r.table == "local" and not (r.src or r.dst or r.iif)
           for r in rules):
        state.record("local_rule_moved", keep=keep, new_pref=LOCAL_RULE_NEW_PREF)
        if not any(r.priority == LOCAL_RULE_NEW_PREF and r.table == "local" for r in rules):
            ip("rule", "add", "pref", str(LOCAL_RULE_NEW_PREF), "lookup", "local")
        ip("rule", "del", "pref", "0", "lookup", "local")
        out(f"moved 'lookup local' from pref 0 to {LOCAL_RULE_NEW_PREF} (restored on teardown)")


def restore_local_side(cfg: TopologyConfig, out: Printer = NULL,
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
            out(f"re-created {side.netdev}")
        else:
            ip("link", "set", side.switch_port, "master", cfg.switch, "up")
            ip("addr", "replace", f"{side.addr}/32", "dev", side.netdev)
            side_up(cfg, "local")
        if port_state(cfg.local_dev) is None:
            add_rdma_link(cfg.local_dev, side.netdev)
            out(f"re-created {cfg.local_dev} on {side.netdev}")
        wait_ports_active(cfg)
    except RxePowerError as exc:
        problems.append(f"local side not restored: {exc}")
    return problems



def teardown(out: Printer = NULL, state_path: Path | None = None) -> list[str]:
    """Remove exactly what the state file records, newest first. Returns problems left."""
    require_root(REMOVE)
    state = StateFile.load(state_path or STATE_PATH)
    if not state.topology_entries():
        out("nothing of ours to remove")
        if not state.created and not state.rejected:
            with contextlib.suppress(FileNotFoundError):
                state.path.unlink()
        return []
    problems: list[str] = []
    for entry in list(reversed(state.topology_entries())):
        try:
            _undo(entry, out)
            state.forget(**entry)
        except RxePowerError as exc:
            problems.append(f"{entry}: {exc}")
            out(f"could not remove {entry}: {exc}")
            if entry["kind"] == "rdma_link":
                # removing netdevs from under a device whose delete is still blocked
                # can hang the kernel's rtnl; stop here and say what is left
                out("stopping teardown: a device delete is blocked; close its holders and "
                    "run teardown again")
                break
    if not problems:
        left = StateFile.load(state.path)
        if not left.created and not left.rejected:
            state.path.unlink(missing_ok=True)
        out("teardown complete: nothing of our topology remains")
    return problems


def _undo(entry: Entry, out: Printer) -> None:
    kind = entry["kind"]
    if kind == "rdma_link":
        if any(lk.ifname == entry["name"] and lk.netdev in (entry["netdev"], None)
               for lk in rdma_links()):
            delete_rdma_link(entry["name"])
            out(f"deleted rdma link {entry['name']}")
    elif kind == "local_rule_moved":
        rules = ip_rules()
        if not any(r.priority == 0 and r.table == "local" for r in rules):
            ip("rule", "add", "pref", "0", "lookup", "local")
        if any(r.priority == entry["new_pref"] and r.table == "local" for r in rules):
            ip("rule", "del", "pref", str(entry["new_pref"]), "lookup", "local")
        out("restored 'lookup local' at pref 0")
    elif kind == "rule":
        present = {tuple(r.selector_args()) for r in ip_rules()}
        if tuple(entry["args"]) in present:
            ip("rule", "del", *entry["args"])
    elif kind == "table":
        for route in ip_routes(entry["table"]):
            ip("route", "del", route.dst, "table", entry["table"])
    elif kind == "sysctl":
        sysctl_path(*entry["key"].split(".")).write_text(entry["old"])
        out(f"restored {entry['key']}={entry['old']}")
    elif kind == "netdev":
        if any(n.ifname == entry["name"] for n in ip_links()):
            ip("link", "del", entry["name"])
            out(f"deleted {entry['name']}" + (f" <-> {entry['peer']}" if entry["peer"] else ""))
    elif kind in kernelobjs.KINDS:  # the kernel clients' objects (nvmet, nvme, null_blk)
        kernelobjs.undo(entry, out)
    else:
        raise TopologyError(f"unknown entry kind {kind!r} in the state file",
                            "the state file was written by a newer rxe-power; use that to clean")

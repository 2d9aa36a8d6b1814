"""The topology the `rxe` tests run on: rxe_config, rxe_topology (found, or built and torn
down by the session), the rdma_rxe each module needs (its removal(mode) marker; a switch
rebuilds the topology), and the guard around every `rxe` test (no leaked context, no
device, netdev, rule or route added or lost)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.settings import SETTINGS, RemovalMode
from harness.plugin.options import (
    HOW_TO_GET_RXE,
    TOPOLOGY_OPTIONS,
    removal_setting,
    setting,
    unmet,
)
from harness.system import holders, inventory, rxe_module
from harness.system.rxe_module import ModuleReport
from harness.topology import devices, lifecycle
from harness.topology.config import (
    TABLE_LOCAL_SIDE,
    TABLE_PEER_SIDE,
    Topology,
    TopologyConfig,
)

MODULE_REPORT = pytest.StashKey[ModuleReport]()  # the rdma_rxe loaded now
MODULE_LINES = pytest.StashKey[list[str]]()  # each module loaded in this run, once
BUILT = pytest.StashKey[bool]()  # this session built the topology (so it may rebuild it)


def loaded(config: pytest.Config, report: ModuleReport) -> None:
    config.stash[MODULE_REPORT] = report
    lines = config.stash.setdefault(MODULE_LINES, [])
    if report.line() not in lines:
        lines.append(report.line())


@pytest.fixture(scope="session")
def rxe_config(pytestconfig: pytest.Config) -> TopologyConfig:
    cli = {n: pytestconfig.getoption(n.replace("-", "_")) for n in TOPOLOGY_OPTIONS}
    ini = {n: pytestconfig.getini(SETTINGS[n].ini) for n in TOPOLOGY_OPTIONS}
    return TopologyConfig.from_settings({n: cli[n] or ini[n] for n in cli})


@pytest.fixture(scope="session")
def rxe_topology(pytestconfig: pytest.Config,
                 rxe_config: TopologyConfig) -> Iterator[Topology]:
    """The discovered topology; built (and torn down after the session) if absent and root."""
    require = bool(setting(pytestconfig, "rxe-require"))
    built = False
    try:
        # the module first: swapping it is refused once rxe devices exist
        loaded(pytestconfig, rxe_module.ensure(removal_setting(pytestconfig)))
        try:
            topo = devices.discover(rxe_config)
        except RxePowerError:
            topo, built = lifecycle.setup(rxe_config)
    except RxePowerError as exc:
        unmet(pytestconfig, f"no rxe topology: {exc.problem}; {exc.fix or HOW_TO_GET_RXE}"
              + ("" if require else f". To get rxe: {HOW_TO_GET_RXE}"))
    pytestconfig.stash[BUILT] = built
    yield topo
    if pytestconfig.stash[BUILT]:
        lifecycle.teardown()
        session_mode = removal_setting(pytestconfig)
        if pytestconfig.stash[MODULE_REPORT].removal is not session_mode \
                and not settings.in_vm():  # a guest is thrown away: no switch for nothing
            loaded(pytestconfig, rxe_module.ensure(session_mode))


@pytest.fixture
def removal_mode(pytestconfig: pytest.Config, rxe_topology: Topology) -> RemovalMode:
    """What deleting a held local HCA does now (the rdma_rxe loaded for this test)."""
    return pytestconfig.stash[MODULE_REPORT].removal


def swap_removal(config: pytest.Config, cfg: TopologyConfig, want: RemovalMode) -> None:
    """Tear the session's topology down, load the rdma_rxe `want` needs, build it again."""
    if want is RemovalMode.DISASSOCIATE and rxe_module.our_build() is None:
        err = rxe_module.missing_build_error(os.uname().release)
        unmet(config, f"{err.problem}; fix: {err.fix}")
    problems = lifecycle.teardown()
    assert not problems, f"cannot switch to --removal {want}: {problems}"
    try:
        loaded(config, rxe_module.ensure(want))
    finally:  # the topology comes back in any case, on whichever module is loaded
        _, config.stash[BUILT] = lifecycle.setup(cfg)


def wanted_removal(item: pytest.Item, session_mode: RemovalMode) -> RemovalMode:
    marker = item.get_closest_marker("removal")
    return RemovalMode(marker.args[0]) if marker is not None else session_mode


@pytest.fixture(scope="module", autouse=True)
def _removal_for_module(request: pytest.FixtureRequest) -> None:
    """A module runs under the rdma_rxe it needs (its removal(mode) marker, else the
    session's --removal): when another one is loaded and the session built the topology,
    the topology is rebuilt on the module needed. No switch back afterwards: the next
    module that needs the other one switches (collection puts them last, so a suite
    switches once); the session's end puts the session's module back (outside the VM)."""
    config = request.config
    session_mode = removal_setting(config)
    marker = request.node.get_closest_marker("removal")
    loaded_now = config.stash.get(MODULE_REPORT, None)
    if marker is None and (loaded_now is None or loaded_now.removal is session_mode):
        return  # nothing to switch (and a pure-logic module never asks for the topology)
    want = RemovalMode(marker.args[0]) if marker is not None else session_mode
    request.getfixturevalue("rxe_topology")
    have = config.stash[MODULE_REPORT].removal
    if have is want:
        return
    if not config.stash[BUILT]:
        pytest.skip(f"needs --removal {want}; this session runs --removal {have} on a "
                    "topology it did not build, so it cannot switch: run with --removal "
                    f"{want} (or RXE_POWER_REMOVAL={want})")
    swap_removal(config, request.getfixturevalue("rxe_config"), want)


def kernel_objects() -> dict[str, set[str]]:
    return {"rdma devices": {lk.ifname for lk in inventory.rdma_links()},
            "netdevs": set(os.listdir("/sys/class/net")),  # as `ip link`, without running it
            "ip rules": {" ".join(r.selector_args()) for r in inventory.ip_rules()},
            # the routes that force traffic onto the wire: a test that loses one (a link set
            # down and up without its route) breaks every test after it, so it fails itself
            "our routes": {f"table {r.table} {r.dst} dev {r.dev}"
                           for t in (TABLE_LOCAL_SIDE, TABLE_PEER_SIDE)
                           for r in inventory.ip_routes(t)}}


@pytest.fixture(autouse=True)
def _rxe_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """For `rxe` tests: require the topology; afterwards check that the test leaked no
    Context and left no extra RDMA device, netdev or rule (and lost none)."""
    if request.node.get_closest_marker("rxe") is None:
        yield
        return
    topo = request.getfixturevalue("rxe_topology")
    marker = request.node.get_closest_marker("removal")
    if marker is not None:
        have = request.config.stash[MODULE_REPORT].removal
        if have is not RemovalMode(marker.args[0]):
            pytest.skip(f"needs --removal {marker.args[0]}, this session runs --removal "
                        f"{have}: rxe-power test -- --removal {marker.args[0]} "
                        f"(or RXE_POWER_REMOVAL={marker.args[0]})")
    before = kernel_objects()
    yield
    for dev in (topo.local.dev, topo.peer.dev):
        mine = [h for h in holders.find_holders(dev) if h.pid == os.getpid()]
        assert not mine, f"test leaked an open {dev} context: {mine[0].describe()}"
    after = kernel_objects()
    for what, names in before.items():
        assert after[what] == names, (f"{what} changed across the test: added "
                                      f"{sorted(after[what] - names)}, removed "
                                      f"{sorted(names - after[what])}")

"""pytest plugin: options, the `rxe` marker, fixtures. Logic lives in harness/.

Registered through the `pytest11` entry point `rxe_power`. Tests marked `rxe`
need the real two-HCA topology; without rxe they skip with a reason that says
how to get it, unless RXE_POWER_REQUIRE_RXE=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from harness.core import settings
from harness.core.errors import NotSupported, RxePowerError, SettingError
from harness.core.settings import SETTINGS, RemovalMode, resolve
from harness.core.shards import (
    Shard,
    estimates,
    parse_shard,
    read_durations,
    split,
    write_durations,
)
from harness.peer.controller import PeerAgent
from harness.peer.traffic import Pair, connected_pair
from harness.rdma.verbs import Device
from harness.system import holders, inventory, rxe_module
from harness.system.rxe_module import ModuleReport
from harness.topology import devices, lifecycle
from harness.topology.config import (
    TABLE_LOCAL_SIDE,
    TABLE_PEER_SIDE,
    Topology,
    TopologyConfig,
)
from power.notify import Notifier
from power.result import TransitionRequest, TransitionResult
from power.shim import Shim

_TOPOLOGY_OPTIONS = ("rxe-local-dev", "rxe-peer-dev", "rxe-local-netdev", "rxe-peer-netdev",
                     "rxe-local-addr", "rxe-peer-addr")
DURATIONS_FILE = "tests/durations.json"  # the recorded seconds of each test, by node id
DURATIONS_ABOUT = ("seconds per test (pytest node id: setup + call + teardown) from real "
                   "runs, recorded by pytest --record-durations; `rxe-power test --shard "
                   "I/N` balances its shards by them (harness.core.shards)")
HOW_TO_GET_RXE = (
    "run the suite where rdma_rxe exists: `rxe-power test` (boots a VM with the module "
    "when this kernel lacks it), or as root on a kernel with rdma_rxe"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rxe-power", "rxe-power: Soft-RoCE power-transition harness")
    for name in (*_TOPOLOGY_OPTIONS, "rxe-require", "removal"):
        s = SETTINGS[name]
        group.addoption(f"--{name}", dest=name.replace("-", "_"), default=None,
                        help=f"{s.help} (env {s.env}, ini {s.ini}, default {s.default})")
        parser.addini(s.ini, help=s.help, default=None)
    group.addoption("--shard", dest="rxe_shard", default=None, metavar="I/N",
                    help="run only shard I of N of the selected tests, split by their "
                    "recorded durations (harness.core.shards): the N shards together run "
                    "every test once")
    group.addoption("--shard-durations", default=None, metavar="FILE",
                    help=f"the durations the split reads (default {DURATIONS_FILE} under "
                    "the rootdir)")
    group.addoption("--record-durations", default=None, metavar="FILE",
                    help="add the seconds each test that ran took (setup, call and "
                    f"teardown) to FILE, the durations file of --shard ({DURATIONS_FILE})")


def _removal_setting(config: pytest.Config) -> RemovalMode:
    mode = _setting(config, "removal")
    assert isinstance(mode, RemovalMode)  # parse_removal made it
    return mode


def _setting(config: pytest.Config, name: str) -> object:
    s = SETTINGS[name]
    return resolve(name, config.getoption(name.replace("-", "_")), config.getini(s.ini)).value


def unmet(config: pytest.Config, msg: str) -> NoReturn:
    """The one place an unmet requirement of a test becomes a skip with its reason, or a
    failure under RXE_POWER_REQUIRE_RXE=1 (CI knows what its machine has)."""
    if bool(_setting(config, "rxe-require")):
        pytest.fail(f"{msg} (RXE_POWER_REQUIRE_RXE=1 turns this into a failure)",
                    pytrace=False)
    pytest.skip(msg)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rxe: needs the real rxe0 <-> rxe1 topology")
    config.addinivalue_line("markers", "removal(mode): needs the session's --removal to be "
                            "mode (disassociate or block); skipped otherwise")
    config.addinivalue_line("markers", "may_be_unsupported(why): the test may meet "
                            "EOPNOTSUPP from the device or kernel (why says where); only "
                            "such a test skips on it under RXE_POWER_REQUIRE_RXE=1")
    text = config.getoption("rxe_shard", None)
    if text is not None:
        try:
            config.stash[_SHARD] = parse_shard(text)
        except SettingError as exc:
            raise pytest.UsageError(f"{exc.problem}; fix: {exc.fix}") from None
    record = config.getoption("record_durations", None)
    if record is not None:
        if _SHARD in config.stash and Path(record).absolute() == _durations_path(config):
            raise pytest.UsageError(
                f"--record-durations {record} is the file --shard splits by: the shards run "
                "after this one would split by other durations than this one did, and some "
                "tests would run twice and others never; fix: record into another file "
                "(--record-durations FILE) and put it in place once every shard has run, or "
                "record in a run without --shard")
        config.pluginmanager.register(DurationRecorder(Path(record)), "rxe-power-durations")


_SHARD = pytest.StashKey[Shard]()  # --shard I/N
_SHARD_LINE = pytest.StashKey[str]()  # what this shard runs, for the terminal summary
_MODULE_REPORT = pytest.StashKey[ModuleReport]()  # the rdma_rxe loaded now
_MODULE_LINES = pytest.StashKey[list[str]]()  # each module loaded in this run, once
_BUILT = pytest.StashKey[bool]()  # this session built the topology (so it may rebuild it)


def _loaded(config: pytest.Config, report: ModuleReport) -> None:
    config.stash[_MODULE_REPORT] = report
    lines = config.stash.setdefault(_MODULE_LINES, [])
    if report.line() not in lines:
        lines.append(report.line())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The rdma_rxe modules loaded and their taint, once per run (expected, not a fault);
    this shard's share of the tests."""
    for line in terminalreporter.config.stash.get(_MODULE_LINES, []):
        terminalreporter.write_line(f"rxe-power: {line}")
    if _SHARD_LINE in terminalreporter.config.stash:
        terminalreporter.write_line(f"rxe-power: {terminalreporter.config.stash[_SHARD_LINE]}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The one place where EOPNOTSUPP from the verbs layer becomes a skip. Under
    RXE_POWER_REQUIRE_RXE=1 (CI: the device and kernel are known) only a test marked
    `may_be_unsupported(why)` skips on it; anywhere else it is a failure naming the call
    and the errno (a feature that vanished must not turn into a quiet skip)."""
    try:
        return (yield)
    except NotSupported as exc:
        if unsupported_fails(item):
            pytest.fail(f"unexpected EOPNOTSUPP under RXE_POWER_REQUIRE_RXE=1: {exc.problem} "
                        "(a test that may meet it says so with "
                        "@pytest.mark.may_be_unsupported(why))", pytrace=False)
        pytest.skip(f"not supported by this device/kernel: {exc.problem}")


def unsupported_fails(item: pytest.Item) -> bool:
    """Whether an EOPNOTSUPP in this test is a failure rather than a skip."""
    return (item.get_closest_marker("may_be_unsupported") is None
            and bool(_setting(item.config, "rxe-require")))


@pytest.fixture(scope="session")
def rxe_config(pytestconfig: pytest.Config) -> TopologyConfig:
    cli = {n: pytestconfig.getoption(n.replace("-", "_")) for n in _TOPOLOGY_OPTIONS}
    ini = {n: pytestconfig.getini(SETTINGS[n].ini) for n in _TOPOLOGY_OPTIONS}
    return TopologyConfig.from_settings({n: cli[n] or ini[n] for n in cli})


@pytest.fixture(scope="session")
def rxe_topology(pytestconfig: pytest.Config,
                 rxe_config: TopologyConfig) -> Iterator[Topology]:
    """The discovered topology; built (and torn down after the session) if absent and root."""
    require = bool(_setting(pytestconfig, "rxe-require"))
    built = False
    try:
        # the module first: swapping it is refused once rxe devices exist
        _loaded(pytestconfig, rxe_module.ensure(_removal_setting(pytestconfig)))
        try:
            topo = devices.discover(rxe_config)
        except RxePowerError:
            topo, built = lifecycle.setup(rxe_config)
    except RxePowerError as exc:
        unmet(pytestconfig, f"no rxe topology: {exc.problem}; {exc.fix or HOW_TO_GET_RXE}"
              + ("" if require else f". To get rxe: {HOW_TO_GET_RXE}"))
    pytestconfig.stash[_BUILT] = built
    yield topo
    if pytestconfig.stash[_BUILT]:
        lifecycle.teardown()
        session_mode = _removal_setting(pytestconfig)
        if pytestconfig.stash[_MODULE_REPORT].removal is not session_mode \
                and not settings.in_vm():  # a guest is thrown away: no switch for nothing
            _loaded(pytestconfig, rxe_module.ensure(session_mode))


@pytest.fixture
def removal_mode(pytestconfig: pytest.Config, rxe_topology: Topology) -> RemovalMode:
    """What deleting a held local HCA does now (the rdma_rxe loaded for this test)."""
    return pytestconfig.stash[_MODULE_REPORT].removal


def _swap_removal(config: pytest.Config, cfg: TopologyConfig, want: RemovalMode) -> None:
    """Tear the session's topology down, load the rdma_rxe `want` needs, build it again."""
    if want is RemovalMode.DISASSOCIATE and rxe_module.our_build() is None:
        err = rxe_module.missing_build_error(os.uname().release)
        unmet(config, f"{err.problem}; fix: {err.fix}")
    problems = lifecycle.teardown()
    assert not problems, f"cannot switch to --removal {want}: {problems}"
    try:
        _loaded(config, rxe_module.ensure(want))
    finally:  # the topology comes back in any case, on whichever module is loaded
        _, config.stash[_BUILT] = lifecycle.setup(cfg)


def _wanted_removal(item: pytest.Item, session_mode: RemovalMode) -> RemovalMode:
    marker = item.get_closest_marker("removal")
    return RemovalMode(marker.args[0]) if marker is not None else session_mode


@pytest.hookimpl(trylast=True)  # after -m and -k deselected theirs: the shards split the rest
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that need the other rdma_rxe (marker removal(mode)) run last, together,
    so that the session switches the module once (a switch rebuilds the topology: tens of
    seconds under emulation), not twice per such module. With --shard I/N only shard I's
    tests are kept (the others are deselected), in the same order."""
    session_mode = _removal_setting(config)
    items.sort(key=lambda it: _wanted_removal(it, session_mode) is not session_mode)
    if _SHARD in config.stash:
        _keep_shard(config, items, config.stash[_SHARD])


def _durations_path(config: pytest.Config) -> Path:
    """The durations file --shard splits by."""
    return Path(config.getoption("shard_durations", None)
                or config.rootpath / DURATIONS_FILE).absolute()


def _keep_shard(config: pytest.Config, items: list[pytest.Item], shard: Shard) -> None:
    """Deselect every test but shard `shard`'s (harness.core.shards.split by the recorded
    durations; a test without one counts the median)."""
    path = _durations_path(config)
    try:
        durations = read_durations(path)
    except RxePowerError as exc:
        raise pytest.UsageError(f"{exc.problem}; fix: {exc.fix}") from None
    names = [it.nodeid for it in items]
    parts = split(names, durations, shard.total)
    mine = set(parts[shard.index - 1])
    dropped = [it for i, it in enumerate(items) if i not in mine]
    items[:] = [it for i, it in enumerate(items) if i in mine]
    config.hook.pytest_deselected(items=dropped)
    est = estimates(names, durations)
    loads = ", ".join(f"{sum(est[i] for i in part):.0f}" for part in parts)
    known = sum(1 for n in names if n in durations)
    config.stash[_SHARD_LINE] = (
        f"shard {shard}: {len(items)} of {len(names)} tests (the {shard.total} shards expect "
        f"{loads} s; {known} of the {len(names)} tests have a recorded duration in {path})")


class DurationRecorder:
    """--record-durations FILE: each test's setup, call and teardown seconds, added to FILE
    at the end of the session (a test recorded again takes its new value)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.seconds:
            return
        where = "in the VM" if settings.in_vm() else f"kernel {os.uname().release}"
        args = " ".join(session.config.invocation_params.args)
        write_durations(self.path, self.seconds, DURATIONS_ABOUT,
                        f"{time.strftime('%Y-%m-%d')}: pytest {args} ({len(self.seconds)} "
                        f"tests, {where})")


@pytest.fixture(scope="module", autouse=True)
def _removal_for_module(request: pytest.FixtureRequest) -> None:
    """A module runs under the rdma_rxe it needs (its removal(mode) marker, else the
    session's --removal): when another one is loaded and the session built the topology,
    the topology is rebuilt on the module needed. No switch back afterwards: the next
    module that needs the other one switches (collection puts them last, so a suite
    switches once); the session's end puts the session's module back (outside the VM)."""
    config = request.config
    session_mode = _removal_setting(config)
    marker = request.node.get_closest_marker("removal")
    loaded = config.stash.get(_MODULE_REPORT, None)
    if marker is None and (loaded is None or loaded.removal is session_mode):
        return  # nothing to switch (and a pure-logic module never asks for the topology)
    want = RemovalMode(marker.args[0]) if marker is not None else session_mode
    request.getfixturevalue("rxe_topology")
    have = config.stash[_MODULE_REPORT].removal
    if have is want:
        return
    if not config.stash[_BUILT]:
        pytest.skip(f"needs --removal {want}; this session runs --removal {have} on a "
                    "topology it did not build, so it cannot switch: run with --removal "
                    f"{want} (or RXE_POWER_REMOVAL={want})")
    _swap_removal(config, request.getfixturevalue("rxe_config"), want)


def _kernel_objects() -> dict[str, set[str]]:
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
        have = request.config.stash[_MODULE_REPORT].removal
        if have is not RemovalMode(marker.args[0]):
            pytest.skip(f"needs --removal {marker.args[0]}, this session runs --removal "
                        f"{have}: rxe-power test -- --removal {marker.args[0]} "
                        f"(or RXE_POWER_REMOVAL={marker.args[0]})")
    before = _kernel_objects()
    yield
    for dev in (topo.local.dev, topo.peer.dev):
        mine = [h for h in holders.find_holders(dev) if h.pid == os.getpid()]
        assert not mine, f"test leaked an open {dev} context: {mine[0].describe()}"
    after = _kernel_objects()
    for what, names in before.items():
        assert after[what] == names, (f"{what} changed across the test: added "
                                      f"{sorted(after[what] - names)}, removed "
                                      f"{sorted(names - after[what])}")


@pytest.fixture(scope="session")
def results_dir() -> Path:
    path = settings.results_dir()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def peer_agent(rxe_topology: Topology, results_dir: Path) -> Iterator[PeerAgent]:
    """The remote peer agent process on the peer HCA, for one test module (so a module
    that takes the topology down and up again has no holder of rxe1 in its way)."""
    with PeerAgent(rxe_topology.peer, log_dir=results_dir / "logs") as agent:
        yield agent


@pytest.fixture
def local_device(rxe_topology: Topology) -> Iterator[Device]:
    """An open Context+PD on the local HCA, closed after the test."""
    with Device(rxe_topology.local.dev, rxe_topology.local.port,
                rxe_topology.local.gid_index) as dev:
        yield dev


@pytest.fixture
def rc_pair(local_device: Device, peer_agent: PeerAgent) -> Iterator[Pair]:
    """A connected RC pair: our QP on the local HCA <-> the agent's QP on the peer HCA."""
    with connected_pair(local_device, peer_agent) as pair:
        yield pair


class ShimFixture:
    """The power shim for one test: a private clients directory, results written as JSON."""

    def __init__(self, cfg: TopologyConfig, clients_dir: Path, out_dir: Path,
                 test_name: str) -> None:
        self.clients_dir = clients_dir
        self.shim = Shim(cfg, Notifier(clients_dir))
        self.shim.start()  # the reader starts while the test sets up its clients
        self.out_dir = out_dir
        self.test_name = test_name
        self.results: list[TransitionResult] = []

    def run(self, name: str, **kwargs: Any) -> TransitionResult:
        """Run one transition (TransitionRequest fields as keywords); keep its JSON."""
        result = self.shim.run(TransitionRequest(name, **kwargs))
        self.results.append(result)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.test_name)
        result.write(self.out_dir / f"{safe}-{len(self.results)}.json")
        return result


@pytest.fixture
def power_shim(rxe_config: TopologyConfig, rxe_topology: Topology,
               results_dir: Path, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[ShimFixture]:
    """The power shim on the local HCA. After the test the local side must be whole."""
    fx = ShimFixture(rxe_config, tmp_path / "clients", results_dir / "transitions",
                     request.node.name)
    try:
        yield fx
    finally:
        fx.shim.close()
    problems = lifecycle.restore_local_side(rxe_config)
    assert not problems, f"the topology was not whole after the test: {problems}"

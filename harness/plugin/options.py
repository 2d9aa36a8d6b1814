"""The plugin's options and what they decide: the topology options and their ini names,
--removal, RXE_POWER_REQUIRE_RXE (an unmet requirement skips, or fails under it), and
EOPNOTSUPP from the verbs layer (a skip only where a test says it may meet it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import pytest

from harness.core.errors import NotSupported
from harness.core.settings import SETTINGS, RemovalMode, resolve
from harness.plugin.shards import DURATIONS_FILE

TOPOLOGY_OPTIONS = ("rxe-local-dev", "rxe-peer-dev", "rxe-local-netdev", "rxe-peer-netdev",
                    "rxe-local-addr", "rxe-peer-addr")
HOW_TO_GET_RXE = (
    "run the suite where rdma_rxe exists: `rxe-power test` (boots a VM with the module "
    "when this kernel lacks it), or as root on a kernel with rdma_rxe"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rxe-power", "rxe-power: Soft-RoCE power-transition harness")
    for name in (*TOPOLOGY_OPTIONS, "rxe-require", "removal"):
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


def removal_setting(config: pytest.Config) -> RemovalMode:
    mode = setting(config, "removal")
    assert isinstance(mode, RemovalMode)  # parse_removal made it
    return mode


def setting(config: pytest.Config, name: str) -> object:
    s = SETTINGS[name]
    return resolve(name, config.getoption(name.replace("-", "_")), config.getini(s.ini)).value


def unmet(config: pytest.Config, msg: str) -> NoReturn:
    """The one place an unmet requirement of a test becomes a skip with its reason, or a
    failure under RXE_POWER_REQUIRE_RXE=1 (CI knows what its machine has)."""
    if bool(setting(config, "rxe-require")):
        pytest.fail(f"{msg} (RXE_POWER_REQUIRE_RXE=1 turns this into a failure)",
                    pytrace=False)
    pytest.skip(msg)


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
            and bool(setting(item.config, "rxe-require")))

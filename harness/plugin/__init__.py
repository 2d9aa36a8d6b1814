"""pytest plugin: options, the `rxe` marker, fixtures. Logic lives in harness/.

Registered through the `pytest11` entry point `rxe_power` (this package: pytest finds the
hooks and fixtures below as its names). Tests marked `rxe` need the real two-HCA
topology; without rxe they skip with a reason that says how to get it, unless
RXE_POWER_REQUIRE_RXE=1 (CI), where that is a failure.

    options     the options, the settings they resolve, `unmet`, EOPNOTSUPP -> skip/fail
    shards      --shard I/N and --record-durations
    topology    rxe_config, rxe_topology, the rdma_rxe per module, the guard of `rxe` tests
    traffic     results_dir, peer_agent, local_device, rc_pair, power_shim
"""

from __future__ import annotations

import pytest

from harness.plugin.options import (
    HOW_TO_GET_RXE,
    pytest_addoption,
    pytest_runtest_call,
    removal_setting,
    unmet,
    unsupported_fails,
)
from harness.plugin.shards import (
    DURATIONS_ABOUT,
    DURATIONS_FILE,
    SHARD,
    SHARD_LINE,
    DurationRecorder,
    configure_shards,
    keep_shard,
)
from harness.plugin.topology import (
    MODULE_LINES,
    _removal_for_module,
    _rxe_guard,
    removal_mode,
    rxe_config,
    rxe_topology,
    wanted_removal,
)
from harness.plugin.traffic import (
    ShimFixture,
    local_device,
    peer_agent,
    power_shim,
    rc_pair,
    results_dir,
)

__all__ = [
    "DURATIONS_ABOUT", "DURATIONS_FILE", "HOW_TO_GET_RXE", "DurationRecorder", "ShimFixture",
    "_removal_for_module", "_rxe_guard", "local_device", "peer_agent", "power_shim",
    "pytest_addoption", "pytest_collection_modifyitems", "pytest_configure",
    "pytest_runtest_call", "pytest_terminal_summary", "rc_pair", "removal_mode",
    "results_dir", "rxe_config", "rxe_topology", "unmet", "unsupported_fails",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rxe: needs the real rxe0 <-> rxe1 topology")
    config.addinivalue_line("markers", "removal(mode): needs the session's --removal to be "
                            "mode (disassociate or block); skipped otherwise")
    config.addinivalue_line("markers", "may_be_unsupported(why): the test may meet "
                            "EOPNOTSUPP from the device or kernel (why says where); only "
                            "such a test skips on it under RXE_POWER_REQUIRE_RXE=1")
    configure_shards(config)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The rdma_rxe modules loaded and their taint, once per run (expected, not a fault);
    this shard's share of the tests."""
    for line in terminalreporter.config.stash.get(MODULE_LINES, []):
        terminalreporter.write_line(f"rxe-power: {line}")
    if SHARD_LINE in terminalreporter.config.stash:
        terminalreporter.write_line(f"rxe-power: {terminalreporter.config.stash[SHARD_LINE]}")


@pytest.hookimpl(trylast=True)  # after -m and -k deselected theirs: the shards split the rest
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that need the other rdma_rxe (marker removal(mode)) run last, together,
    so that the session switches the module once (a switch rebuilds the topology: tens of
    seconds under emulation), not twice per such module. With --shard I/N only shard I's
    tests are kept (the others are deselected), in the same order."""
    session_mode = removal_setting(config)
    items.sort(key=lambda it: wanted_removal(it, session_mode) is not session_mode)
    if SHARD in config.stash:
        keep_shard(config, items, config.stash[SHARD])

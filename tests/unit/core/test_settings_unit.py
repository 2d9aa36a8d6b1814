"""Settings: resolution from the option, the environment and the ini, and their errors.
Pure logic: any host."""

from __future__ import annotations

import pytest

from harness.core.errors import SettingError, TopologyError
from harness.core.settings import Mode, resolve
from harness.topology.config import RULE_PREFS, TopologyConfig


def test_settings_precedence() -> None:
    env = {"RXE_POWER_MODE": "vm"}
    assert resolve("rxe-mode", "native", "auto", env).value is Mode.NATIVE
    assert resolve("rxe-mode", None, "auto", env).value is Mode.VM
    assert resolve("rxe-mode", None, "native", {}).value is Mode.NATIVE
    got = resolve("rxe-mode", None, None, {})
    assert (got.value, got.source) == (Mode.AUTO, "built-in default")


def test_settings_error_names_source() -> None:
    with pytest.raises(SettingError, match="environment variable RXE_POWER_MODE"):
        resolve("rxe-mode", None, None, {"RXE_POWER_MODE": "sideways"})
    with pytest.raises(SettingError, match="command-line option --rxe-local-addr"):
        resolve("rxe-local-addr", "127.0.0.1", None, {})
    with pytest.raises(SettingError, match="ini option rxe_local_netdev"):
        resolve("rxe-local-netdev", None, "name-that-is-far-too-long", {})


def test_topology_config_validation() -> None:
    with pytest.raises(TopologyError, match="both"):
        TopologyConfig(local_dev="rxe0", peer_dev="rxe0").validate()
    rules = TopologyConfig().rules()
    assert [r.priority for r in rules] == list(RULE_PREFS)
    assert rules[3].selector_args() == ["pref", "4", "to", "198.18.0.2", "lookup", "18770"]

"""The userspace clients moved to clients.userspace; a policy of your own written against
the old names (clients.core, clients.connection, clients.fail_fast, ...) still imports, and
gets the very same modules (one class, one Policy protocol), for a while."""

from __future__ import annotations

import importlib

import pytest

import clients


@pytest.mark.parametrize("name", clients._MOVED_TO_USERSPACE)
def test_an_old_name_is_the_moved_module(name: str) -> None:
    assert importlib.import_module(f"clients.{name}") is \
        importlib.import_module(f"clients.userspace.{name}")


def test_a_policy_written_against_the_old_names_loads() -> None:
    from clients.fail_fast import FailFast  # the old path

    from clients.userspace import policy_class

    assert policy_class("clients.fail_fast:FailFast") is FailFast is policy_class("fail-fast")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("clients.no_such_module")

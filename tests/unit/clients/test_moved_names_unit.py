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


def test_the_tracer_finds_the_tree_it_lives_in() -> None:
    """traced.py moved one folder down (clients/tracer/): its paths still name the tree's
    build/tracer (a fresh-clone CI run failed every traced test when they did not)."""
    from clients.tracer import traced

    assert (traced.REPO / "pyproject.toml").is_file()
    assert (traced.REPO / "ci" / "build-tracer.sh").is_file()
    assert traced.BUILD_DIR == traced.REPO / "build" / "tracer"

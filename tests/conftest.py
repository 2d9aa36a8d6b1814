"""Shared test helpers. Fixtures come from the rxe_power pytest plugin (harness/plugin/)."""

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
RXE_DIR = Path(__file__).parent / "rxe"  # the guest collects only here (harness/cli/suite.py)


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects them
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test marked rxe lives under tests/rxe: `rxe-power test` has the guest collect
    that folder only, so a test marked rxe elsewhere would never run."""
    stray = [it.nodeid for it in items
             if it.get_closest_marker("rxe") is not None and RXE_DIR not in it.path.parents]
    if stray:
        raise pytest.UsageError(f"tests marked rxe outside {RXE_DIR}: {stray} (the guest "
                                "collects only that folder: move them there)")

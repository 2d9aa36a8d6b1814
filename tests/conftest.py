"""Shared test helpers. Fixtures come from the rxe_power pytest plugin (harness/plugin.py)."""

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA

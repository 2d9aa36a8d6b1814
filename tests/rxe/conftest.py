"""The rxe group (blktests' tests/<group>/rc): every test here needs the real rxe0 <-> rxe1
topology, so every one is marked `rxe` here, once (`-m 'not rxe'` leaves them all out); a
test that needs more says so as data, `@pytest.mark.kernel_modules(NAME, ...)` (or a
module's `pytestmark`), and is checked before it starts: a module this kernel lacks skips it
with the reason printed, or fails it under RXE_POWER_REQUIRE_RXE=1 (CI knows its kernel)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.plugin import unmet

HERE = Path(__file__).parent
MODINFO_TIMEOUT_S = 10.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel_modules(*names): the kernel modules the test "
                            "loads (checked with modinfo first: skipped when absent, a "
                            "failure under RXE_POWER_REQUIRE_RXE=1)")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.rxe)


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The names modinfo finds neither as a loadable module nor built in, each with why."""
    missing = []
    for name in names:
        try:
            res = subprocess.run(["modinfo", "-F", "filename", name], capture_output=True,
                                 text=True, timeout=MODINFO_TIMEOUT_S, check=False)
        except FileNotFoundError:
            missing.append(f"{name} (no modinfo: install kmod)")
            continue
        except subprocess.TimeoutExpired:
            missing.append(f"{name} (modinfo took over MODINFO_TIMEOUT_S={MODINFO_TIMEOUT_S})")
            continue
        if res.returncode != 0 or not res.stdout.strip():
            why = res.stderr.strip().splitlines()[-1:] or [f"exit {res.returncode}"]
            missing.append(f"{name} ({why[0][:200]})")
    return missing


@pytest.fixture(autouse=True)
def _kernel_modules_present(request: pytest.FixtureRequest) -> None:
    names = tuple(n for m in request.node.iter_markers("kernel_modules") for n in m.args)
    if not names:
        return
    missing = missing_modules(names)
    if not missing:
        return
    unmet(request.config, f"needs kernel modules this kernel ({os.uname().release}) lacks: "
          f"{', '.join(missing)}; fix: run on a kernel that has them (the VM's linux-image "
          "has them: ./rxe-power test)")

"""The static checks, as tests, so that the README's one test command runs them too:
ruff (style and likely bugs), mypy (types), lint-imports (the layers: a module imports
only its own layer or lower ones, pyproject.toml [tool.importlinter])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
STATIC_CHECK_TIMEOUT_S = 300.0


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=STATIC_CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)


def test_ruff_is_clean() -> None:
    res = run_tool("ruff", "check", "--no-cache", "harness", "clients", "power", "tests")
    assert res.returncode == 0, res.stdout + res.stderr


def test_imports_keep_to_their_layers() -> None:
    res = run_tool("lint-imports", "--no-cache")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout and res.stdout.count("KEPT") >= 2, res.stdout[-2000:]


def test_types_check() -> None:
    """mypy on the whole tree (pyproject.toml [tool.mypy]): strict in core, system,
    workload and power."""
    res = run_tool("mypy", "--no-incremental")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]

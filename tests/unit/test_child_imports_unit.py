"""Children of ours never import from their working directory (issue 17, defect 2):
root runs rxe-power, often from a folder others can write, and a `harness/` or
`clients/` planted there must not run in place of ours."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from clients import policy_import_roots
from harness.core.proc import PACKAGES_ROOT, child_import_path, python_child

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60.0
PLANTED = "import pathlib; pathlib.Path(__file__).parent.parent.joinpath('PWNED').touch()\n"


def plant(cwd: Path) -> Path:
    for pkg in ("clients", "harness", "power"):
        (cwd / pkg).mkdir()
        (cwd / pkg / "__init__.py").write_text(PLANTED)
    return cwd / "PWNED"


def run_in(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL)


def test_a_planted_package_in_the_cwd_is_not_imported(tmp_path: Path) -> None:
    marker = plant(tmp_path)
    res = run_in(tmp_path, python_child("clients.worker", "--help"))
    assert res.returncode == 0, res.stderr
    assert not marker.exists(), "the child imported the planted clients/ package"
    # the same command without -P does import it: the test can see the defect
    res = run_in(tmp_path, [sys.executable, "-m", "clients.worker", "--help"])
    assert marker.exists()


def test_every_python_child_is_started_through_python_child() -> None:
    """No `[sys.executable, "-m", ...]` argv in the packages: python_child is the one way."""
    offenders = []
    for path in [*ROOT.joinpath("harness").rglob("*.py"), *ROOT.joinpath("power").rglob("*.py"),
                 *ROOT.joinpath("clients").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.List) or len(node.elts) < 2:
                continue
            first, second = node.elts[0], node.elts[1]
            if (isinstance(first, ast.Attribute) and first.attr == "executable"
                    and isinstance(second, ast.Constant) and second.value == "-m"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_a_users_policy_module_is_handed_to_the_worker_explicitly() -> None:
    assert policy_import_roots(["graceful", "naive"]) == []
    assert policy_import_roots(["tests.helpers.bad_clients:Leaky"]) == [str(ROOT)]


def test_a_child_starts_without_site_on_an_explicit_path(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """-S (no `site`: a second per start under TCG) with our packages' folder first and
    neither '' nor the working directory on the path the child gets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend("")
    path = child_import_path()
    assert path[0] == str(PACKAGES_ROOT) and "" not in path and str(tmp_path) not in path
    argv = python_child("clients.worker", "--help")
    assert argv[1:3] == ["-P", "-S"] and argv[5].split(argv[6]) == path
    assert argv[7:] == ["clients.worker", "--help"]
    res = run_in(tmp_path, argv)
    assert res.returncode == 0 and "usage: clients.worker" in res.stdout, res.stderr

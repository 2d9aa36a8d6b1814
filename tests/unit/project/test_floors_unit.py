"""The floors: every package takes a layer of pyproject.toml's import-linter contract, and
the lowest floors (harness.core, harness.system, harness.topology) import only the standard
library (they run in the guest's and the workers' smallest environments, and a root tool's
lowest code should pull in nothing it does not ship). Import-linter cannot say either with
three root packages, so these checks walk the tree; each has a negative control."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).parents[3]
ROOTS = ("harness", "power", "clients")
STDLIB_ONLY = ("harness.core", "harness.system", "harness.topology")


def contract_layers(pyproject: Path) -> list[set[str]]:
    """The layers of the contract named "Layers", each as the set of its modules."""
    data = tomllib.loads(pyproject.read_text())
    for contract in data["tool"]["importlinter"]["contracts"]:
        if contract["name"] == "Layers":
            return [{m.strip() for m in layer.split("|")} for layer in contract["layers"]]
    raise AssertionError(f"{pyproject} has no import-linter contract named Layers")


def top_modules(repo: Path) -> list[str]:
    """What must take a layer: each root package that is not split into layers as a whole,
    and each direct sub-package or module of one that is (harness.*)."""
    out = []
    for root in ROOTS:
        base = repo / root
        if root != "harness":
            out.append(root)
            continue
        for child in sorted(base.iterdir()):
            if child.is_dir() and (child / "__init__.py").is_file():
                out.append(f"{root}.{child.name}")
            elif child.suffix == ".py" and child.name != "__init__.py":
                out.append(f"{root}.{child.stem}")
    return out


def unlayered(repo: Path, layers: list[set[str]]) -> dict[str, int]:
    """Each module of top_modules not in exactly one layer, with how many it is in."""
    counts = {m: sum(m in layer for layer in layers) for m in top_modules(repo)}
    return {m: n for m, n in counts.items() if n != 1}


def non_stdlib_imports(repo: Path, packages: tuple[str, ...]) -> list[str]:
    """`path: module` for every absolute import in `packages` of neither the standard
    library nor the project's own harness package (relative imports stay in the package)."""
    found = []
    for pkg in packages:
        for path in sorted((repo / pkg.replace(".", "/")).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "harness":
                        found.append(f"{path.relative_to(repo)}: {name}")
    return found


def test_every_package_takes_exactly_one_layer() -> None:
    layers = contract_layers(REPO / "pyproject.toml")
    assert {"harness.core", "clients", "power", "harness.plugin"} <= set().union(*layers)
    assert unlayered(REPO, layers) == {}


def test_a_new_package_without_a_layer_is_found(tmp_path: Path) -> None:
    for root in ROOTS:
        (tmp_path / root).mkdir()
    (tmp_path / "harness" / "core").mkdir()
    (tmp_path / "harness" / "core" / "__init__.py").touch()
    (tmp_path / "harness" / "swap").mkdir()
    (tmp_path / "harness" / "swap" / "__init__.py").touch()
    (tmp_path / "harness" / "plugin.py").touch()
    layers = [{"harness.plugin"}, {"clients"}, {"power", "harness.core"}, {"harness.core"}]
    assert unlayered(tmp_path, layers) == {"harness.swap": 0, "harness.core": 2}


def test_the_lowest_floors_import_only_the_standard_library() -> None:
    assert non_stdlib_imports(REPO, STDLIB_ONLY) == []


def test_a_third_party_import_in_a_low_floor_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "harness" / "core"
    pkg.mkdir(parents=True)
    (pkg / "ok.py").write_text("from __future__ import annotations\nimport os.path\n"
                               "from harness.core import errors\nfrom . import ok\n")
    (pkg / "bad.py").write_text("def f():\n    import psutil\n    from rich.console "
                                "import Console\n")
    assert non_stdlib_imports(tmp_path, ("harness.core",)) == [
        "harness/core/bad.py: psutil", "harness/core/bad.py: rich.console"]

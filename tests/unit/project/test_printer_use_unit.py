"""One Printer replaces the log parameters and lambdas (issue 23 item 4): no function of
harness/, power/ or clients/ takes a `log` callable (`Callable[[str], None]`, a default of
`print` or a lambda) and no call passes `log=lambda m: None` or `log=print`; the CLI says
nothing with a bare print() but where stdout is a protocol to a parent. Each check has a
negative control (a defect planted in a copy is found)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ROOTS = ("harness", "power", "clients")
SPEAKING_NAMES = ("log", "echo")  # what a progress callable used to be called
# where print() is a protocol to a parent process, not the CLI speaking to a person
CLI_PROTOCOL_PRINTS = {"harness/cli/pyverbs_probe.py"}  # one JSON line doctor reads


def _is_callable_of_str(ann: ast.expr | None) -> bool:
    return ann is not None and ast.unparse(ann).replace(" ", "") in (
        "Callable[[str],None]", "Log")


def _is_print_or_lambda(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Lambda) or (isinstance(node, ast.Name) and node.id == "print")


def log_callables(repo: Path, roots: tuple[str, ...] = ROOTS) -> list[str]:
    """`path:line: what` for every log-callable parameter or call keyword left."""
    found = []
    for root in roots:
        for path in sorted((repo / root).rglob("*.py")):
            rel = path.relative_to(repo)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    a = node.args
                    params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                    defaults = dict(zip([p.arg for p in [*a.posonlyargs, *a.args]][::-1],
                                        a.defaults[::-1], strict=False))
                    defaults |= {p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults,
                                                          strict=True)}
                    for p in params:
                        if p.arg in SPEAKING_NAMES and (
                                _is_callable_of_str(p.annotation)
                                or _is_print_or_lambda(defaults.get(p.arg))):
                            found.append(f"{rel}:{node.lineno}: {node.name}({p.arg})")
                elif isinstance(node, ast.Call):
                    for kw in node.keywords:
                        if kw.arg in SPEAKING_NAMES and _is_print_or_lambda(kw.value):
                            found.append(f"{rel}:{node.lineno}: {kw.arg}={ast.unparse(kw.value)}")
    return found


def cli_prints(repo: Path) -> list[str]:
    """`path:line` of every print() call in harness/cli/ outside CLI_PROTOCOL_PRINTS."""
    found = []
    for path in sorted((repo / "harness" / "cli").glob("*.py")):
        rel = str(path.relative_to(repo))
        if rel in CLI_PROTOCOL_PRINTS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "print":
                found.append(f"{rel}:{node.lineno}")
    return found


def test_no_log_callables_are_left() -> None:
    assert log_callables(REPO) == []


def test_the_cli_prints_only_through_its_printer() -> None:
    assert cli_prints(REPO) == []


def test_a_planted_log_callable_and_print_are_found(tmp_path: Path) -> None:
    (tmp_path / "harness" / "cli").mkdir(parents=True)
    (tmp_path / "harness" / "x.py").write_text(
        "from collections.abc import Callable\n"
        "def a(log: Callable[[str], None]) -> None: ...\n"
        "def b(x: int, log=print) -> None: ...\n"
        "def c(*, echo=lambda m: None) -> None: ...\n"
        "def d(out=None, log_dir=print) -> None: ...\n"  # not a speaking name: fine
        "b(1, log=lambda m: None)\n")
    (tmp_path / "harness" / "cli" / "cmd.py").write_text(
        "def f(out):\n    out('fine')\n    print('not fine')\n")
    assert log_callables(tmp_path, ("harness",)) == [
        "harness/x.py:2: a(log)", "harness/x.py:3: b(log)", "harness/x.py:4: c(echo)",
        "harness/x.py:6: log=lambda m: None"]
    assert cli_prints(tmp_path) == ["harness/cli/cmd.py:3"]

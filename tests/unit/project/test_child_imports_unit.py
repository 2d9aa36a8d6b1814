"""Children of ours never import from their working directory (issue 17, defect 2):
root runs rxe-power, often from a folder others can write, and a `harness/` or
`clients/` planted there must not run in place of ours."""

from __future__ import annotations

import ast
import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clients.kernel import nvme_host
from clients.userspace import policy_import_roots
from harness.cli import doctor
from harness.cli.doctor import Status
from harness.core import proc
from harness.core.errors import OsCallError
from harness.core.proc import PACKAGES_ROOT, child_import_path, python_child
from harness.core.state import StateFile
from harness.system import nvme_fabrics

ROOT = Path(__file__).resolve().parents[3]
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
    res = run_in(tmp_path, python_child("clients.userspace.worker", "--help"))
    assert res.returncode == 0, res.stderr
    assert not marker.exists(), "the child imported the planted clients/ package"
    # the same command without -P does import it: the test can see the defect
    res = run_in(tmp_path, [sys.executable, "-m", "clients.userspace.worker", "--help"])
    assert marker.exists()


# --- the static check: every Python child through python_child (-P) --------------------

PACKAGES = ("harness", "power", "clients")
SPAWNERS = frozenset({"Popen", "run", "call", "check_call", "check_output", "run_bounded",
                      "run_cmd", "spawn", "execv", "execve", "execvp", "execvpe", "execl",
                      "execlp", "spawnv", "spawnve", "posix_spawn", "posix_spawnp",
                      "create_subprocess_exec"})
WRAPPERS = frozenset({"str", "fspath", "realpath", "abspath", "which"})
PYTHON_NAME = re.compile(r"python[0-9.]*$|interpreter", re.IGNORECASE)
# a python started from a shell script: its options, then -c, -m or a script
SHELL_PYTHON = re.compile(r"(?:^|[\s;&|(`\"'])(?:\S*/)?python[0-9.]*((?:\s+-[A-Za-z]+)*)"
                          r"\s+(?:-[cm]\b|\S+\.py\b)")


def _called(call: ast.Call) -> str | None:
    return getattr(call.func, "attr", getattr(call.func, "id", None))


def _names_python(node: ast.expr) -> bool:
    """Does this expression name a Python interpreter to run (sys.executable, a `python`
    variable, "/usr/bin/python3", str(...), realpath(...) or which(...) of one)? A Path
    of one is a file looked at (python_copy), not an argv head."""
    if isinstance(node, ast.Attribute):
        return node.attr == "executable" or bool(PYTHON_NAME.search(node.attr))
    if isinstance(node, ast.Name):
        return bool(PYTHON_NAME.search(node.id))
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(PYTHON_NAME.match(node.value.rsplit("/", 1)[-1]))
    if isinstance(node, ast.Call) and len(node.args) == 1 and _called(node) in WRAPPERS:
        return _names_python(node.args[0])
    return False


def python_children(source: str) -> list[tuple[int, bool]]:
    """Every Python child a source starts: (line, whether it is given -P). An argv whose
    head names a Python (a list or tuple, or the first argument of a spawning call)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List | ast.Tuple) and node.elts:
            head, rest = node.elts[0], node.elts[1:]
        elif (isinstance(node, ast.Call) and node.args
              and _called(node) in SPAWNERS):
            head, rest = node.args[0], node.args[1:]
        else:
            continue
        if _names_python(head):
            given_p = any(isinstance(e, ast.Constant) and e.value == "-P" for e in rest)
            found.append((node.lineno, given_p))
    return found


def shell_python_children(text: str) -> list[tuple[int, bool]]:
    """Every python a shell script starts with -c, -m or a script: (line, given -P)."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for m in SHELL_PYTHON.finditer(line):
            found.append((lineno, "-P" in m.group(1).split()))
    return found


def test_the_static_check_sees_every_form_of_a_python_child() -> None:
    """Negative control: the forms defect 1 of issue 22 had (doctor's `-c` probe, the nvme
    host's `-c` write), `-m`, a script, an exec, a shell line: each is seen."""
    for source in ('run([python, "-c", _PYVERBS_PROBE], 20.0)',
                   'run_bounded([sys.executable, "-c", _FABRICS_WRITE, opts], 60.0)',
                   'subprocess.Popen([sys.executable, "-m", "clients.userspace.worker"])',
                   'subprocess.run(("/usr/bin/python3", "tool.py"))',
                   'os.execv(sys.executable, argv)',
                   'subprocess.run([str(sys.executable), "-c", "pass"])',
                   'subprocess.run([shutil.which("python3"), "x.py"])'):
        assert python_children(source) == [(1, False)], source
    assert python_children('run([sys.executable, "-P", "-c", "pass"])') == [(1, True)]
    assert python_children('run_bounded(python_child("m", "a"), 1.0)') == []
    assert python_children('vng = Path(sys.executable).parent / "vng"') == []
    assert python_children('trees = [Path(os.path.realpath(sys.executable)), stdlib]') == []
    for line in ('/usr/bin/python3 -m harness.topology up', 'x=$(python3 -c "import sys")',
                 '.venv/bin/python -I ci/patch.py', 'exec env A=1 python3.11 -m venv .venv'):
        assert shell_python_children(line) == [(1, False)], line
    assert shell_python_children('/usr/bin/python3 -P -m harness.topology up') == [(1, True)]
    assert shell_python_children('echo "$(/usr/bin/python3 -V)"; apt install python3-venv') == []


def test_every_python_child_is_started_through_python_child() -> None:
    """No Python child in the packages but python_child's own argv (harness/core/proc.py,
    with -P); none without -P in ci/ and the scripts root runs (Python or shell)."""
    children = {}
    for path in [p for pkg in PACKAGES for p in ROOT.joinpath(pkg).rglob("*.py")]:
        for line, given_p in python_children(path.read_text()):
            children[f"{path.relative_to(ROOT)}:{line}"] = given_p
    assert {where for where in children if not where.startswith("harness/core/proc.py:")} == set()
    assert children and all(children.values()), children
    scripts = {p: python_children for p in ROOT.joinpath("ci").glob("*.py")}
    for path in [*ROOT.joinpath("ci").glob("*.sh"), *ROOT.joinpath("harness").rglob("*.sh"),
                 ROOT / ".ci" / "run", ROOT / "rxe-power"]:
        scripts[path] = shell_python_children
    without_p = [f"{path.relative_to(ROOT)}:{line}" for path, find in scripts.items()
                 for line, given_p in find(path.read_text()) if not given_p]
    assert without_p == []


# --- planted modules in the working directory of a real child --------------------------


def plant_modules(cwd: Path, names: tuple[str, ...]) -> Path:
    """Modules (`json.py`) and packages (`pyverbs/`) in `cwd` that append their name to a
    marker file when imported."""
    marker = cwd / "PWNED-MODULES"
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in names:
        if name.endswith("/"):
            (cwd / name).mkdir()
            (cwd / name / "__init__.py").write_text(code)
        else:
            (cwd / f"{name}.py").write_text(code)
    return marker


def test_doctors_pyverbs_probe_imports_nothing_from_its_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 defect 1: root runs `doctor` in a folder holding a planted json.py and
    pyverbs/; the real probe (a child importing pyverbs, which this host has) runs
    none of them and finds the installed pyverbs."""
    marker = plant_modules(tmp_path, ("json", "pyverbs/", "harness/"))
    monkeypatch.chdir(tmp_path)
    found = doctor.check_pyverbs()
    assert not marker.exists(), f"the probe imported {marker.read_text().split()} from its cwd"
    assert found.status is Status.OK, found
    assert str(tmp_path) not in found.detail and "pyverbs/__init__.py" in found.detail


def test_nvme_hosts_fabrics_write_imports_nothing_from_its_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nvme-rdma connect's child (the write to /dev/nvme-fabrics) run for real from a
    folder with planted modules: this host has no /dev/nvme-fabrics, so it fails with
    ENOENT, from our module, having imported nothing planted; and it was started by
    python_child (-P). (The `-c` child it replaced imported nothing after its start
    either, so what fails on that code is the last assertion: it had no -P.)"""
    if Path(nvme_fabrics.FABRICS).exists():
        pytest.skip("this host has /dev/nvme-fabrics: a real connect would be attempted")
    marker = plant_modules(tmp_path, ("json", "harness/", "clients/"))
    ran: list[list[str]] = []

    def spied(argv: list[str], *args: object, **kw: object) -> object:
        ran.append(list(argv))
        return proc.run_bounded(argv, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(nvme_host, "modprobe", lambda *a: None)  # this host has no modules
    monkeypatch.setattr(nvme_host, "run_bounded", spied)
    monkeypatch.chdir(tmp_path)
    cfg = nvme_host.HostConfig("nqn.test", "198.18.0.2", 4420, "198.18.0.1")
    host = nvme_host.NvmeHost(cfg, state=StateFile(tmp_path / "state.json"))
    with pytest.raises(OsCallError) as failed:
        host.connect()
    assert not marker.exists(), f"the child imported {marker.read_text().split()} from its cwd"
    assert failed.value.errno == errno.ENOENT, failed.value
    assert ran == [python_child("harness.system.nvme_fabrics", ran[0][-1])]


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
    argv = python_child("clients.userspace.worker", "--help")
    assert argv[1:3] == ["-P", "-S"] and argv[5].split(argv[6]) == path
    assert argv[7:] == ["clients.userspace.worker", "--help"]
    res = run_in(tmp_path, argv)
    assert res.returncode == 0 and "usage: clients.userspace.worker" in res.stdout, res.stderr

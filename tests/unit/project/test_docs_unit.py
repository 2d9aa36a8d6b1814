"""The docs stay in shape: README.md is a README (at most README_MAX_LINES lines: what it
is, the two commands, how to read what `run` prints, where to go next), every relative
link in README.md and docs/*.md points at a file that exists (and an anchor at a heading
of that page), every docs/*.md page is linked from the README, .ci/run runs the test
command the README gives, and docs/architecture.md's floor map is the import-linter
contract's. Each check has a negative control (a defect planted in a copy is found)."""


from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.helpers.doc_links import DOCS, README, anchors, links, pages
from tests.unit.project.test_floors_unit import contract_layers

REPO = Path(__file__).resolve().parents[3]
README_MAX_LINES = 300
CI_RUN = ".ci/run"
ARCHITECTURE = "docs/architecture.md"

TWO_COMMANDS = "## The two commands"


def too_long(readme: Path, limit: int = README_MAX_LINES) -> str:
    n = len(readme.read_text().splitlines())
    return f"{readme.name} has {n} lines, more than {limit}: move the rest to docs/" \
        if n > limit else ""


def link_problems(root: Path) -> list[str]:
    """Every relative link that points at nothing, or at an anchor its page lacks; every
    docs page the README does not link."""
    out = []
    top = root.resolve()
    linked: set[Path] = set()
    for page in pages(root):
        for link in links(page):
            if link.external:
                continue
            where = f"{page.relative_to(root)}:{link.line}: ({link.target})"
            target = link.resolved()
            if not target.is_relative_to(top):
                out.append(f"{where} points outside the repository")
                continue
            if not target.exists():
                out.append(f"{where} points at {target.relative_to(top)}, which does not "
                           "exist")
                continue
            if page.name == README and page.parent == root:
                linked.add(target)
            if link.anchor is not None and target.suffix == ".md" \
                    and link.anchor not in anchors(target):
                out.append(f"{where} names #{link.anchor}, which is no heading of "
                           f"{target.relative_to(top)}")
    for page in pages(root):
        if page.parent.name == DOCS and page.resolve() not in linked:
            out.append(f"{page.relative_to(root)} is linked from no line of {README}")
    return out


def two_commands(readme_text: str) -> list[str]:
    """The commands of the README's sh block under "The two commands" (comments cut)."""
    section = readme_text.split(TWO_COMMANDS, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, f"no sh block under {TWO_COMMANDS!r}"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()
            if line.split("#")[0].strip()]


def ci_command(ci_text: str) -> str:
    """What .ci/run runs in the end: its `exec` line, the comment cut."""
    execs = [line.split("#")[0].strip()[len("exec "):].strip()
             for line in ci_text.splitlines() if line.strip().startswith("exec ")]
    assert len(execs) == 1, f"{CI_RUN} should end in one exec line, has {execs}"
    return execs[0]


def test_the_readme_is_a_readme() -> None:
    assert too_long(REPO / README) == ""


def test_every_relative_link_points_at_something() -> None:
    found = [link for page in pages(REPO) for link in links(page) if not link.external]
    # not vacuous: the README links every page, and every page links somewhere
    assert len(found) >= 40, found
    assert {link.doc.name for link in found} >= {p.name for p in pages(REPO)}
    assert link_problems(REPO) == []


def test_ci_runs_the_readme_test_command() -> None:
    commands = two_commands((REPO / README).read_text())
    assert commands == ["./rxe-power run", "./rxe-power test"]
    assert ci_command((REPO / CI_RUN).read_text()) in commands
    assert ci_command((REPO / CI_RUN).read_text()) == "./rxe-power test"


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    """README.md and docs/ copied, with every other file they link to (so that the copy
    is whole: the check passes on it before a defect is planted)."""
    shutil.copy(REPO / README, tmp_path / README)
    shutil.copytree(REPO / DOCS, tmp_path / DOCS)
    for page in pages(REPO):
        for link in links(page):
            target = link.resolved()
            if link.external or not target.is_relative_to(REPO):
                continue
            copy = tmp_path / target.relative_to(REPO)
            if target.is_dir():
                copy.mkdir(parents=True, exist_ok=True)
            elif not copy.exists():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(target, copy)
    return tmp_path


def test_a_planted_broken_link_is_found(docs_copy: Path) -> None:
    """Negative controls: a link to a file that is not there, to a heading that is not
    there, out of the repository, and a page nobody links, each named with its page and
    line; a link shown as code is no link."""
    assert link_problems(docs_copy) == []
    topology = docs_copy / DOCS / "topology.md"
    lines = topology.read_text().splitlines()
    lines[2:2] = ["See [the gone page](gone.md) and [the VM](vm.md#no-such-heading).",
                  "Not a link: `[x](also-gone.md)`.",
                  "Out: [up](../../outside.md), and [a link that",
                  "wraps](gone-too.md)."]
    topology.write_text("\n".join(lines) + "\n")
    (docs_copy / DOCS / "orphan.md").write_text("# Nobody links me\n")
    readme = docs_copy / README
    readme.write_text(readme.read_text().replace("(docs/vm.md)", "(docs/vn.md)", 1))
    found = link_problems(docs_copy)
    assert found[0] == ("README.md:" + str(next(
        n for n, line in enumerate(readme.read_text().splitlines(), 1)
        if "(docs/vn.md)" in line)) + ": (docs/vn.md) points at docs/vn.md, which does "
        "not exist")
    assert "docs/topology.md:3: (gone.md) points at docs/gone.md, which does not exist" \
        in found
    assert "docs/topology.md:3: (vm.md#no-such-heading) names #no-such-heading, which is " \
        "no heading of docs/vm.md" in found
    assert "docs/topology.md:5: (../../outside.md) points outside the repository" in found
    assert "docs/topology.md:6: (gone-too.md) points at docs/gone-too.md, which does not " \
        "exist" in found
    assert "docs/orphan.md is linked from no line of README.md" in found
    assert not any("also-gone" in f for f in found), found
    assert len(found) == 6, found



def test_a_long_readme_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / README
    readme.write_text("line\n" * README_MAX_LINES)
    assert too_long(readme) == ""
    readme.write_text("line\n" * (README_MAX_LINES + 1))
    assert too_long(readme) == f"README.md has {README_MAX_LINES + 1} lines, more than " \
        f"{README_MAX_LINES}: move the rest to docs/"


def test_a_ci_that_runs_another_command_is_caught() -> None:
    """Negative control: a .ci/run that runs pytest itself, or the test command with
    other arguments, is not the README's test command."""
    commands = two_commands((REPO / README).read_text())
    ci = (REPO / CI_RUN).read_text()
    for other in ("exec .venv/bin/pytest -q", "exec ./rxe-power test -- -m 'not rxe'"):
        changed = re.sub(r"^exec .*$", other, ci, flags=re.M)
        assert changed != ci
        assert ci_command(changed) not in commands


def floor_table(architecture_text: str) -> list[set[str]]:
    """The floors of docs/architecture.md's table, lowest first, each as the set of its
    modules (`harness/peer/` and `harness/vm/` -> {harness.peer, harness.vm})."""
    out = []
    for line in architecture_text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and re.match(r"^\d+( \((bottom|top)\))?$", cells[1]):
            out.append({m.replace("/", ".") for m in re.findall(r"`([a-z_/]+?)(?:/|\.py)`",
                                                               cells[2])})
    return out


def test_the_floor_map_is_the_contract() -> None:
    """docs/architecture.md lists the floors of the contract named Layers, lowest first."""
    layers = contract_layers(REPO / "pyproject.toml")
    assert floor_table((REPO / ARCHITECTURE).read_text()) == layers[::-1]


def test_a_floor_map_out_of_order_is_caught() -> None:
    """Negative control: two floors swapped, or one left out, no longer match."""
    text = (REPO / ARCHITECTURE).read_text()
    layers = contract_layers(REPO / "pyproject.toml")[::-1]
    rows = [line for line in text.splitlines() if line.startswith(("| 1 ", "| 2 "))]
    assert len(rows) == 2
    swapped = text.replace(rows[0], "\0").replace(rows[1], rows[0]).replace("\0", rows[1])
    assert floor_table(swapped) != layers
    assert floor_table(text.replace(rows[1] + "\n", "")) != layers

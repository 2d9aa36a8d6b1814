"""Every module of harness/, clients/ and power/ stays at MAX_MODULE_LINES lines or fewer
(issue 23): a module that grows past it is split by role, into modules whose names say what
each one is. OVER_THE_LIMIT holds the modules still waiting for their split, each with the
length it may not grow past; the list only shrinks (a module split below the limit must
leave it). Each check has a negative control."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).parents[3]
ROOTS = ("harness", "clients", "power")
MAX_MODULE_LINES = 400
# waiting for their split (owned elsewhere): the length each had when this test came
OVER_THE_LIMIT: dict[str, int] = {}


def module_lengths(repo: Path) -> dict[str, int]:
    """`path: lines` of every Python module under the roots."""
    return {str(p.relative_to(repo)): len(p.read_text().splitlines())
            for root in ROOTS for p in sorted((repo / root).rglob("*.py"))}


def size_problems(lengths: dict[str, int], waiting: dict[str, int],
                  limit: int = MAX_MODULE_LINES) -> list[str]:
    """What is wrong with the modules' lengths: one line per problem, [] when none."""
    out = []
    for path, n in sorted(lengths.items()):
        allowed = waiting.get(path)
        if allowed is None and n > limit:
            out.append(f"{path} has {n} lines, more than {limit}: split it by role")
        elif allowed is not None and n > allowed:
            out.append(f"{path} has {n} lines, more than the {allowed} it had when it was "
                       f"listed as waiting for its split (and the limit is {limit})")
        elif allowed is not None and n <= limit:
            out.append(f"{path} has {n} lines now, within the limit: take it off "
                       "OVER_THE_LIMIT")
    out += [f"{path} is listed in OVER_THE_LIMIT and does not exist: take it off"
            for path in sorted(set(waiting) - set(lengths))]
    return out


def test_every_module_is_within_the_limit() -> None:
    lengths = module_lengths(REPO)
    assert len(lengths) > 100  # the tree was found
    assert size_problems(lengths, OVER_THE_LIMIT) == []


def test_a_long_module_is_found(tmp_path: Path) -> None:
    (tmp_path / "harness" / "run").mkdir(parents=True)
    (tmp_path / "clients").mkdir()
    (tmp_path / "power").mkdir()
    (tmp_path / "harness" / "run" / "long.py").write_text("x = 1\n" * 401)
    (tmp_path / "harness" / "run" / "ok.py").write_text("x = 1\n" * 400)
    (tmp_path / "power" / "waiting.py").write_text("x = 1\n" * 405)
    (tmp_path / "clients" / "split.py").write_text("x = 1\n" * 10)
    lengths = module_lengths(tmp_path)
    assert lengths["harness/run/ok.py"] == 400
    assert size_problems(lengths, {"power/waiting.py": 405}) == [
        "harness/run/long.py has 401 lines, more than 400: split it by role"]
    assert size_problems(lengths, {"power/waiting.py": 404, "clients/split.py": 420,
                                   "harness/gone.py": 500}) == [
        "clients/split.py has 10 lines now, within the limit: take it off OVER_THE_LIMIT",
        "harness/run/long.py has 401 lines, more than 400: split it by role",
        "power/waiting.py has 405 lines, more than the 404 it had when it was listed as "
        "waiting for its split (and the limit is 400)",
        "harness/gone.py is listed in OVER_THE_LIMIT and does not exist: take it off"]

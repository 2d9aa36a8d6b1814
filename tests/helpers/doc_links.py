"""The docs' links, read as GitHub renders them: the markdown links of README.md and
docs/*.md outside code, each resolved against its page's folder; the anchors a page's
headings give. Pure text, no network: used by the docs tests
(tests/unit/project/test_docs_unit.py, tests/unit/project/test_measurements_unit.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = "README.md"
DOCS = "docs"
FENCE = re.compile(r"^(```|~~~)")
# an inline code span: it may wrap onto the next line, not past a blank line
CODE_SPAN = re.compile(r"(`+)(?:(?!\1)(?!\n[ \t]*\n)[\s\S])+?\1")
# [text](target) or ![alt](target "title"); the text may hold one level of brackets
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Link:
    doc: Path  # the page it is on
    line: int  # 1-based
    target: str  # as written

    @property
    def external(self) -> bool:
        return bool(SCHEME.match(self.target))

    @property
    def path_part(self) -> str:
        return self.target.split("#", 1)[0]

    @property
    def anchor(self) -> str | None:
        return self.target.split("#", 1)[1] if "#" in self.target else None

    def resolved(self) -> Path:
        """The file it points at (the page itself for a bare `#anchor`)."""
        return (self.doc.parent / self.path_part if self.path_part else self.doc).resolve()


def pages(root: Path) -> list[Path]:
    """README.md and every docs/*.md, the pages the docs tests read."""
    return [p for p in [root / README, *sorted((root / DOCS).glob("*.md"))] if p.is_file()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced and indented code blocks."""
    out, fenced, in_indented, prev_blank = [], False, False, True
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced, prev_blank = not fenced, False
            continue
        if not line.strip():
            prev_blank = True
            continue
        in_indented = line.startswith("    ") and (prev_blank or in_indented)
        prev_blank = False
        if not fenced and not in_indented:
            out.append((n, line))
    return out


def links(doc: Path) -> list[Link]:
    """The links of a page, outside code (a link shown as code is no link; a link may
    wrap onto the next line), each with the line its target is on."""
    raw = doc.read_text()
    kept = dict(prose_lines(raw))
    text = "\n".join(kept.get(n, "") for n in range(1, len(raw.splitlines()) + 1))
    text = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return [Link(doc, text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in LINK.finditer(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (backticks, colons,
    dots, parentheses, slashes...), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """The anchors of a page's headings (a repeated one gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(doc.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out

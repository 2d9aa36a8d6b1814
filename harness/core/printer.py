"""The one way the harness speaks to a person: a Printer.

Every function that reports progress takes `out: Printer` (never a `log` callable, a
`lambda m: None` or a bare `print`): the CLI makes one at the edge (harness.cli.main) and
passes it down, a library call that wants silence passes nothing (`out` defaults to
`NULL`), and a part that speaks for itself adds its prefix.

    out = STDOUT                         # the CLI's: sys.stdout as it is at each line
    out("setting up rxe0")               # one line: "setting up rxe0"
    vm = STDERR.prefixed("rxe-power vm: ")   # "rxe-power vm: booting ..." on stderr
    out.to(buf)                          # the same prefix, another stream
    err = out.to_stderr()                # the same prefix, on stderr
    quiet = NULL                         # says nothing (library use, tests)
    rec = RecordingPrinter()             # tests: rec.lines

A Printer is callable, so it stands wherever a `Callable[[str], None]` stood. STDOUT and
STDERR write to sys.stdout and sys.stderr as they are when a line is written, not when the
printer was made (pytest's capture and contextlib.redirect_stdout replace them later).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol


class Stream(Protocol):
    """Where a Printer writes: a text stream (sys.stdout, a file, io.StringIO)."""

    def write(self, s: str, /) -> int: ...

    def flush(self) -> None: ...


class StandardStream:
    """sys.stdout or sys.stderr as it is at each write (never the one of import time)."""

    def __init__(self, name: str) -> None:
        if name not in ("stdout", "stderr"):
            raise ValueError(f"StandardStream({name!r}): stdout or stderr")
        self.name = name

    def _now(self) -> Stream:
        return sys.stderr if self.name == "stderr" else sys.stdout

    def write(self, s: str, /) -> int:
        return self._now().write(s)

    def flush(self) -> None:
        self._now().flush()

    def __repr__(self) -> str:
        return f"StandardStream({self.name!r})"


@dataclass(frozen=True)
class Printer:
    """Writes one line per call, with a prefix, to a stream (flushed: a person or a
    parent process reads it as it comes)."""

    stream: Stream | None = None  # None: sys.stdout at the time of the call
    prefix: str = ""

    def __call__(self, msg: str) -> None:
        self.say(msg)

    def say(self, msg: str) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        print(f"{self.prefix}{msg}", file=stream, flush=True)

    def prefixed(self, prefix: str) -> Printer:
        """The same stream, `prefix` added after this printer's own."""
        return type(self)(self.stream, self.prefix + prefix)

    def to(self, stream: Stream) -> Printer:
        """The same prefix, another stream."""
        return type(self)(stream, self.prefix)

    def to_stderr(self) -> Printer:
        """The same prefix, on sys.stderr as it is at each line (errors, and progress
        beside a stdout that carries a JSON document)."""
        return self.to(StandardStream("stderr"))


@dataclass(frozen=True)
class NullPrinter(Printer):
    """Says nothing."""

    def say(self, msg: str) -> None:
        return None


@dataclass(frozen=True)
class RecordingPrinter(Printer):
    """Keeps every line it is given (with its prefix), for tests."""

    lines: list[str] = field(default_factory=list)

    def say(self, msg: str) -> None:
        self.lines.append(f"{self.prefix}{msg}")

    def prefixed(self, prefix: str) -> Printer:
        return RecordingPrinter(self.stream, self.prefix + prefix, self.lines)

    def to(self, stream: Stream) -> Printer:
        return RecordingPrinter(stream, self.prefix, self.lines)


NULL = NullPrinter()
STDOUT = Printer(StandardStream("stdout"))
STDERR = Printer(StandardStream("stderr"))

"""The one way the harness speaks to a person: a Printer.

Every function that reports progress takes a `Printer` (never a `log` callable, a
`lambda m: None` or a bare `print`): the CLI makes one at the edge, a library call that
wants silence passes `NULL`, and a layer that speaks for a part adds its prefix.

    out = Printer(sys.stdout)            # the CLI's
    out("setting up rxe0")               # one line: "setting up rxe0"
    vm = out.prefixed("rxe-power vm: ")  # "rxe-power vm: booting ..."
    vm.to(sys.stderr)                    # the same prefix, another stream
    quiet = NULL                         # says nothing (library use, tests)
    rec = RecordingPrinter()             # tests: rec.lines

A Printer is callable, so it stands wherever a `Callable[[str], None]` stood.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO


@dataclass(frozen=True)
class Printer:
    """Writes one line per call, with a prefix, to a stream (flushed: a person or a
    parent process reads it as it comes)."""

    stream: TextIO | None = None  # None: sys.stdout at the time of the call
    prefix: str = ""

    def __call__(self, msg: str) -> None:
        self.say(msg)

    def say(self, msg: str) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        print(f"{self.prefix}{msg}", file=stream, flush=True)

    def prefixed(self, prefix: str) -> Printer:
        """The same stream, `prefix` added after this printer's own."""
        return type(self)(self.stream, self.prefix + prefix)

    def to(self, stream: TextIO) -> Printer:
        """The same prefix, another stream."""
        return type(self)(stream, self.prefix)


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

    def to(self, stream: TextIO) -> Printer:
        return RecordingPrinter(stream, self.prefix, self.lines)


NULL = NullPrinter()
STDOUT = Printer()
STDERR = Printer(sys.stderr)

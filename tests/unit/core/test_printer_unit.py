"""The Printer: one line per call, prefixes that add up, a null and a recording one."""

from __future__ import annotations

import io

import pytest

from harness.core.printer import (
    NULL,
    STDERR,
    STDOUT,
    Printer,
    RecordingPrinter,
    StandardStream,
)


def test_a_printer_writes_one_prefixed_line_per_call() -> None:
    buf = io.StringIO()
    out = Printer(buf)
    out("a")
    vm = out.prefixed("rxe-power vm: ")
    vm.say("booting")
    vm.prefixed("guest: ")("up")
    assert buf.getvalue().splitlines() == ["a", "rxe-power vm: booting",
                                           "rxe-power vm: guest: up"]
    other = io.StringIO()
    vm.to(other)("moved")
    assert other.getvalue() == "rxe-power vm: moved\n" and "moved" not in buf.getvalue()


def test_the_null_printer_says_nothing_and_stays_null(capsys) -> None:
    NULL("x")
    NULL.prefixed("p: ").say("y")
    NULL.to(io.StringIO())("z")
    assert capsys.readouterr() == ("", "")


def test_a_recording_printer_keeps_every_line_of_its_children() -> None:
    rec = RecordingPrinter()
    rec("one")
    rec.prefixed("k: ")("two")
    assert rec.lines == ["one", "k: two"]


def test_stdout_and_stderr_are_the_streams_of_the_moment(capsys) -> None:
    """STDOUT and STDERR write to sys.stdout/sys.stderr as they are at each line (capsys
    replaced them after harness.core.printer was imported)."""
    STDOUT("o")
    STDERR("e")
    STDERR.prefixed("p: ")("x")
    Printer().to_stderr()("y")
    STDOUT.prefixed("a: ").to_stderr()("z")
    assert capsys.readouterr() == ("o\n", "e\np: x\ny\na: z\n")


def test_null_and_recording_printers_keep_their_kind_on_stderr(capsys) -> None:
    NULL.to_stderr()("x")
    assert capsys.readouterr() == ("", "")
    rec = RecordingPrinter()
    rec.prefixed("k: ").to_stderr()("on stderr")
    rec.to(io.StringIO())("elsewhere")
    assert rec.lines == ["k: on stderr", "elsewhere"] and capsys.readouterr() == ("", "")


def test_a_standard_stream_is_stdout_or_stderr() -> None:
    assert repr(StandardStream("stderr")) == "StandardStream('stderr')"
    with pytest.raises(ValueError, match="stdout or stderr"):
        StandardStream("stdin")

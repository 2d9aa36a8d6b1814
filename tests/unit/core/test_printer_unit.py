"""The Printer: one line per call, prefixes that add up, a null and a recording one."""

from __future__ import annotations

import io

from harness.core.printer import NULL, Printer, RecordingPrinter


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

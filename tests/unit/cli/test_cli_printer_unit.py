"""The CLI speaks through one Printer: main() makes it (or takes the caller's) and hands it
to the command; the command's lines and the CLI's errors go through it, the errors on
stderr; nothing of the CLI prints around it."""

from __future__ import annotations

import pytest

from harness.cli import doctor, main
from harness.cli.doctor import Finding, Status
from harness.core.printer import RecordingPrinter
from harness.topology import command_line as topology_command_line


def test_a_command_speaks_through_the_printer_main_hands_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fs = [Finding("root", Status.FAIL, "uid 1000", "sudo")]
    monkeypatch.setattr(doctor, "run_checks", lambda probe, mode: fs)
    rec = RecordingPrinter()
    assert main.main(["doctor"], out=rec) == 1
    assert rec.lines == ["\n".join(doctor.render(fs))]
    assert capsys.readouterr() == ("", "")  # nothing printed beside the printer


def test_the_default_printer_is_stdout_and_errors_go_to_stderr(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fs = [Finding("root", Status.OK, "running as root")]
    monkeypatch.setattr(doctor, "run_checks", lambda probe, mode: fs)
    assert main.main(["doctor"]) == 0
    assert capsys.readouterr().out == "\n".join(doctor.render(fs)) + "\n"
    rec = RecordingPrinter()
    assert main.main(["report", "/nonexistent/results.jsonl"], out=rec) == \
        main.HARNESS_ERROR_EXIT
    assert len(rec.lines) == 1 and rec.lines[0].startswith("rxe-power: error: ")
    assert main.main(["report", "/nonexistent/results.jsonl"]) == main.HARNESS_ERROR_EXIT
    out, err = capsys.readouterr()
    assert out == "" and err == rec.lines[0] + "\n"


def test_the_topology_command_line_speaks_through_the_printer_it_is_given(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`rxe-power show` (harness.topology.command_line) hands its lines and its error to
    the CLI's printer; with --json the progress would go to stderr, the JSON alone to
    stdout."""
    from harness.core.errors import NoRxe

    def no_topology(cfg: object) -> object:
        raise NoRxe("no rxe here", "modprobe rdma_rxe")

    monkeypatch.setattr(topology_command_line, "discover", no_topology)
    rec = RecordingPrinter()
    assert topology_command_line.main(["show"], prog="rxe-power", out=rec) == 2
    assert rec.lines[0].startswith("rxe-power: error: no rxe here")
    assert capsys.readouterr() == ("", "")

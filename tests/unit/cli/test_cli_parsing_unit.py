"""The command line's argument parsing. Pure logic: any host."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_cli_vm_passes_its_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import main as cli_main
    from harness.vm import command_line as vm_command_line

    seen: list[list[str]] = []
    monkeypatch.setattr(vm_command_line, "main", lambda argv, prog="": seen.append(argv) or 7)
    assert cli_main.main(["vm", "--timeout-s", "5", "--", "true"]) == 7
    assert seen == [["--timeout-s", "5", "--", "true"]]


def test_cli_bad_mode_names_its_source(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main as cli_main

    monkeypatch.setenv("RXE_POWER_MODE", "sideways")
    assert cli_main.main(["run"]) == cli_main.HARNESS_ERROR_EXIT
    assert "environment variable RXE_POWER_MODE" in capsys.readouterr().err


def test_cli_native_mode_without_rxe_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import launch
    from harness.cli import main as cli_main

    monkeypatch.setattr(launch, "native_rxe_available", lambda: (False, "no rdma_rxe here"))
    assert cli_main.main(["test", "--mode", "native"]) == cli_main.HARNESS_ERROR_EXIT
    err = capsys.readouterr().err
    assert "no rdma_rxe here" in err and "--mode vm" in err


def test_test_command_combines_the_host_and_vm_exit_codes() -> None:
    """`rxe-power test` in VM mode runs the pure-logic tests on the host and the rxe tests in
    the guest: one failing part fails the whole; "no tests collected" (5) in one part is
    fine when the other ran."""
    from harness.cli.suite import combined_pytest_exit

    assert combined_pytest_exit(0, 0) == 0
    assert combined_pytest_exit(5, 0) == 0 and combined_pytest_exit(0, 5) == 0
    assert combined_pytest_exit(5, 5) == 5
    assert combined_pytest_exit(1, 0) == 1 and combined_pytest_exit(0, 1) == 1
    assert combined_pytest_exit(5, 2) == 2 and combined_pytest_exit(1, 3) == 1


def test_a_marker_selection_is_split_between_host_and_guest() -> None:
    """`rxe-power test -- -m EXPR`: the caller's expression is kept on both sides, and a
    guest part that cannot select any rxe test boots no guest (it used to run the whole
    selection, pure logic included, in the TCG guest)."""
    from harness.cli.suite import selects_nothing, side_expressions, split_marker_expression

    assert split_marker_expression(["-m", "not rxe", "-q"]) == ("not rxe", ["-q"])
    assert split_marker_expression(["-mslow", "t.py"]) == ("slow", ["t.py"])
    assert split_marker_expression(["-m=a or b", "-m", "c"]) == ("c", [])
    assert split_marker_expression(["tests/rxe/x.py", "-k", "m"]) == (None,
                                                                     ["tests/rxe/x.py", "-k", "m"])
    assert side_expressions(None) == ("not rxe", "rxe")
    assert side_expressions("slow") == ("(slow) and not rxe", "(slow) and rxe")
    assert selects_nothing(side_expressions("not rxe")[1])
    assert not selects_nothing(side_expressions("rxe")[1])
    assert not selects_nothing(side_expressions("slow")[1])  # slow and rxe: a guest test
    assert not selects_nothing(side_expressions("not removal")[1])
    assert selects_nothing(side_expressions("slow and not rxe")[1])


def test_the_guest_collects_only_the_rxe_tests_unless_given_paths(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the pure-logic modules in the guest only to deselect them cost 33 s under
    TCG: with no path of the caller's, the guest gets tests/rxe (tests/conftest.py refuses
    an rxe test anywhere else)."""
    from harness.cli.suite import RXE_TESTS, guest_paths

    monkeypatch.chdir(Path(__file__).parents[3])
    assert guest_paths([]) == [RXE_TESTS] == guest_paths(["-s", "-k", "clients", "-x"])
    assert guest_paths(["--durations", "0", "-p", "no:cacheprovider"]) == [RXE_TESTS]
    assert guest_paths(["tests/rxe/test_power.py", "-s"]) == []
    assert guest_paths(["tests/rxe/test_power.py::test_client_veto_answer"]) == []
    assert guest_paths(["tests/unit"]) == [] == guest_paths(["-k", "clients", "tests"])

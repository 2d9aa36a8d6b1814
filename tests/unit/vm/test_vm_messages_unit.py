"""How the VM runner speaks: harness.vm.messages.say is a Printer on stderr whose lines are
byte for byte what the runner always printed ("rxe-power vm: ...")."""

from __future__ import annotations

from harness.core.printer import Printer
from harness.vm.messages import PREFIX, say


def test_say_is_a_prefixed_printer_on_stderr(capsys) -> None:
    assert isinstance(say, Printer) and PREFIX == "rxe-power vm: "
    say("kernel 6.8.0, accel tcg (forced)")
    say.prefixed("probe: ")("ok")
    assert capsys.readouterr() == ("", "rxe-power vm: kernel 6.8.0, accel tcg (forced)\n"
                                       "rxe-power vm: probe: ok\n")

"""How the VM runner speaks: one prefixed line on stderr, through a Printer.

    say(f"kernel {version}")   # stderr: "rxe-power vm: kernel 6.8.0-..."
"""

from __future__ import annotations

from harness.core.printer import STDERR, Printer

PREFIX = "rxe-power vm: "
say: Printer = STDERR.prefixed(PREFIX)

"""How the VM runner speaks: one prefixed line on stderr."""

from __future__ import annotations

import sys


def say(msg: str) -> None:
    print(f"rxe-power vm: {msg}", file=sys.stderr, flush=True)

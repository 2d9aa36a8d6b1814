"""Upper bounds of the numeric options, each named with its unit, and the one check every
validator uses. A value must be a finite number inside its range: NaN, infinity and
values too large for a sleep or a timer are refused before anything starts (a hold of
1e20 ms used to raise OverflowError with the device down, `inf` seconds to wait forever).
"""

from __future__ import annotations

import math

from harness.core.errors import SettingError

MAX_HOLD_MS = 3_600_000  # a transition's hold (the device stays down): 1 hour
MAX_WAIT_S = 3600.0  # --veto-wait-s, --quiesce-timeout-s: 1 hour
MAX_TIMEOUT_S = 7 * 86400.0  # --timeout-s of a whole (VM) run: 1 week
MAX_RATE_PER_S = 1_000_000.0  # --rate: requests per second per client
MAX_CYCLES = 1_000_000  # --cycles, --stress-cycles, --maxfail: transitions in one run
MAX_ITERATIONS = 100_000_000  # --lat-iters and other repeat counts


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_number(option: str, value: object, lo: float, hi: float, unit: str, bound: str,
                 *, lo_open: bool = False) -> None:
    """Refuse `value` unless it is a finite int/float with lo <= value <= hi (lo < value
    when `lo_open`); the message names the option, the range with its unit, and `bound`
    (the constant that sets the upper end)."""
    low = f"greater than {_num(lo)}" if lo_open else f"at least {_num(lo)}"
    fix = f"give {option} a number {low} and at most {_num(hi)} {unit} ({bound})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingError(f"{option} {value!r} is not a number", fix)
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{option} {value!r} is not a finite number", fix)
    if value < lo or (lo_open and value == lo):
        why = "is negative" if value < 0 <= lo else f"must be {low} {unit}"
        raise SettingError(f"{option} {value!r} {why}", fix)
    if value > hi:
        raise SettingError(f"{option} {value!r} is over {bound}={_num(hi)} {unit}", fix)

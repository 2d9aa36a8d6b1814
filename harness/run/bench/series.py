"""Summary statistics of a series of figures: percentiles, median and quartiles."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def spread(values: list[float]) -> dict[str, float]:
    """median, min, max and the quartiles of a series (rounded to 0.1)."""
    if not values:
        return {}
    return {k: round(v, 1) for k, v in (
        ("median", statistics.median(values)), ("min", min(values)), ("max", max(values)),
        ("q1", percentile(values, 25)), ("q3", percentile(values, 75)))} | {"n": len(values)}

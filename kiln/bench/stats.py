"""Percentiles of measured times, shared by the benchmarks."""

from __future__ import annotations

import math

PERCENTILES = (50, 90, 99)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def distribution_ms(seconds: list[float]) -> dict[str, float]:
    """{"mean_ms", "p50_ms", "p90_ms", "p99_ms"} of times given in seconds (zeros for none)."""
    ms = [v * 1000.0 for v in seconds]
    d = {"mean_ms": sum(ms) / len(ms) if ms else 0.0}
    for q in PERCENTILES:
        d[f"p{q}_ms"] = percentile(ms, q)
    return d

"""Latency statistics: percentiles and the summary every benchmark row carries (pure, numpy-free)."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    The same definition as numpy's default (`method="linear"`): position (n - 1) * q / 100 in the
    sorted values, interpolated between its two neighbours.
    """
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    xs = sorted(float(v) for v in values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def summarize(seconds: Sequence[float], *, per: int = 1) -> dict:
    """min, median, p90, p95, p99, max, mean (milliseconds) and n of `seconds`, each divided by `per`.

    `per` is the batch size when `seconds` are batch latencies: the summary is then per window.
    """
    if not seconds:
        raise ValueError("no timings to summarize")
    if per < 1:
        raise ValueError(f"per={per} must be >= 1")
    ms = [1000.0 * float(s) / per for s in seconds]
    out = {"min": min(ms), "median": percentile(ms, 50)}
    out.update({f"p{q}": percentile(ms, q) for q in PERCENTILES})
    out.update({"max": max(ms), "mean": sum(ms) / len(ms), "n": len(ms)})
    return {k: (v if k == "n" else round(v, 4)) for k, v in out.items()}


def throughput(median_ms_per_window: float) -> float:
    """Windows per second at a median latency per window (ms)."""
    if median_ms_per_window <= 0:
        raise ValueError("latency must be positive")
    return 1000.0 / median_ms_per_window


def tflops(flops_per_window: float | None, windows_per_s: float | None) -> float | None:
    """Achieved TFLOP/s: counted FLOPs per window times windows per second."""
    if not flops_per_window or not windows_per_s:
        return None
    return flops_per_window * windows_per_s / 1e12


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of ys against xs; None with fewer than two distinct xs."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return slope, my - slope * mx

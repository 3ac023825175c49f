"""Latency statistics: percentiles as numpy's linear interpolation, the summary, fits and ratios."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseg.bench.stats import linear_fit, percentile, ratio, summarize, tflops, throughput

SAMPLE = [12.0, 3.0, 7.5, 1.0, 9.0, 4.0, 15.0, 2.5, 8.0, 5.5]  # ten values, unsorted


@pytest.mark.parametrize("q", [0, 10, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear_on_a_known_sample(q):
    assert percentile(SAMPLE, q) == pytest.approx(float(np.percentile(SAMPLE, q, method="linear")), rel=1e-12)


def test_percentile_by_hand():
    # sorted: 1, 2.5, 3, 4, 5.5, 7.5, 8, 9, 12, 15; p90 sits at position 8.1: 12 + 0.1 * (15 - 12)
    assert percentile(SAMPLE, 90) == pytest.approx(12.3)
    assert percentile(SAMPLE, 50) == pytest.approx((5.5 + 7.5) / 2)
    assert percentile([4.0], 99) == 4.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=40),
       st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy_on_any_sample(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def test_percentile_refuses_empty_and_out_of_range():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_is_per_window_in_ms_and_ordered():
    seconds = [0.4, 0.2, 0.3, 0.8, 0.25]  # batch latencies of a batch of 2
    s = summarize(seconds, per=2)
    per_window_ms = [1000 * t / 2 for t in seconds]
    assert s["n"] == 5
    assert s["min"] == pytest.approx(100.0) and s["max"] == pytest.approx(400.0)
    assert s["median"] == pytest.approx(float(np.median(per_window_ms)))
    for q in (90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(float(np.percentile(per_window_ms, q)), abs=1e-3)
    assert s["mean"] == pytest.approx(float(np.mean(per_window_ms)))
    assert s["min"] <= s["median"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0], per=0)


def test_throughput_tflops_and_ratio():
    assert throughput(250.0) == pytest.approx(4.0)
    # 636 GFLOPs per window at 4 windows/s is 2.544 TFLOP/s
    assert tflops(636e9, 4.0) == pytest.approx(2.544)
    assert tflops(None, 4.0) is None
    assert ratio(3.0, 1.5) == pytest.approx(2.0)
    assert ratio(1.0, 0) is None and ratio(None, 1.0) is None


def test_linear_fit_recovers_a_line():
    slope, intercept = linear_fit([1, 2, 4, 8], [3.5, 5.5, 9.5, 17.5])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(1.5)
    assert linear_fit([2, 2], [1, 3]) is None

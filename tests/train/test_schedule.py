"""The warm-up + cosine learning-rate schedule that pretraining and adaptation share."""

from __future__ import annotations

import pytest

from edgeseg.train.schedule import warmup_cosine


def test_warm_up_rises_linearly_to_the_peak_then_the_cosine_reaches_zero_at_the_end():
    lrs = [warmup_cosine(s, 10, 2, 1e-3) for s in range(11)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[2] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # never rises after the warm-up
    assert lrs[6] == pytest.approx(5e-4)  # half-way through the cosine: half the peak
    assert lrs[10] == pytest.approx(0.0, abs=1e-18)


def test_a_cycle_shorter_than_its_warm_up_stays_in_the_warm_up():
    assert [warmup_cosine(s, 3, 100, 1.0) for s in range(3)] == pytest.approx([0.01, 0.02, 0.03])

"""The learning-rate schedule of every training loop here: a linear warm-up, then a cosine to 0."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, steps: int, warmup: int, peak: float) -> float:
    """Learning rate of `step` (0-based) in a cycle of `steps`: `warmup` steps rising linearly to `peak`,
    then half a cosine down to 0 at the cycle's end."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

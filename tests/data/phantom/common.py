"""What several phantom test files share: cheap settings and where an organ lies in world space."""

from __future__ import annotations

import numpy as np

from edgeseg.data.phantom import PhantomCase

COARSE = (5.0, 5.0, 5.0)
WHOLE = (-280.0, 230.0)  # reference z range holding every organ
SEEDS = (0, 1, 2, 3, 4, 5)


def centroid_world(case: PhantomCase, organ: str) -> np.ndarray:
    idx = np.argwhere(case.labels[organ] > 0)
    assert idx.size, f"{organ} is empty"
    return (case.affine @ np.append(idx.mean(axis=0), 1.0))[:3]

"""Smooth random fields: cubic B-spline coefficients on a fixed knot grid in patient space.

They make the organs' displacement, the tissue texture, the bowel pattern, the lung vessels and the
pancreas's lobules. The knots live in mm, not voxels, so a field is the same physical pattern at any
spacing and field of view.
"""

from __future__ import annotations

import math

import numpy as np

from edgeseg.data.phantom.geometry import _F32


_FIELD_LO = np.array([-280.0, -240.0, -420.0])
_FIELD_HI = np.array([280.0, 240.0, 440.0])
_BSPLINE_NORM = 1.0 / (0.48 ** 1.5)  # makes unit-variance coefficients give a field of std ~1


def _bspline_basis(coords: np.ndarray, lo: float, step: float, n: int) -> np.ndarray:
    t = (np.asarray(coords, float) - lo) / step
    u = np.abs(t[:, None] - np.arange(n)[None, :])
    b = np.where(u < 1, 2.0 / 3.0 - u ** 2 + 0.5 * u ** 3, np.where(u < 2, (2 - u) ** 3 / 6.0, 0.0))
    return b.astype(_F32)


class _Field:
    """Random smooth field(s) on a knot grid of spacing `step` (mm) covering the fixed patient box.

    The number of random draws depends only on `step` and `n`, never on the sampling grid, so a
    field is the same physical pattern at any spacing and field of view. Evaluated as a tensor
    product (three small matrix products), so a full volume costs about one pass over memory.
    """

    def __init__(self, rng: np.random.Generator, step: float, n: int = 1, scale: float = 1.0, lo=None, hi=None):
        self.step = float(step)
        self.lo = np.asarray(_FIELD_LO if lo is None else lo, float)
        self.hi = np.asarray(_FIELD_HI if hi is None else hi, float)
        self.n = [int(math.ceil((h - l) / step)) + 1 for l, h in zip(self.lo, self.hi)]
        self.coef = (rng.standard_normal((n, *self.n), dtype=_F32) * _F32(scale * _BSPLINE_NORM))

    def max_abs(self, comp: int = 0) -> float:
        """Largest |value| over the patient box, sampled every 8 mm (the knots are >= 60 mm apart) plus a
        small allowance for what lies between the samples."""
        if not hasattr(self, "_max"):
            axes = [np.arange(lo + 20.0, hi - 20.0, 8.0) for lo, hi in zip(self.lo, self.hi)]
            self._max = [float(np.abs(self.eval(*axes, comp=i)).max()) for i in range(self.coef.shape[0])]
        return self._max[comp] * 1.02 + 0.5

    def eval(self, xs, ys, zs, comp: int = 0) -> np.ndarray:
        bases, cuts = [], []
        for axis, c in enumerate((xs, ys, zs)):
            b = _bspline_basis(c, self.lo[axis], self.step, self.n[axis])
            cols = np.nonzero(b.any(axis=0))[0]
            if cols.size == 0:
                return np.zeros((len(xs), len(ys), len(zs)), _F32)
            cuts.append(slice(int(cols[0]), int(cols[-1]) + 1))
            bases.append(b[:, cuts[-1]])
        bx, by, bz = bases
        C = self.coef[comp][cuts[0], cuts[1], cuts[2]]
        t = np.tensordot(C, bz, axes=([2], [1]))  # (i, j, nz)
        t = np.einsum("ijz,yj->iyz", t, by)  # (i, ny, nz)
        out = bx @ t.reshape(t.shape[0], -1)
        return out.reshape(len(xs), len(ys), len(zs))


def _make_fields(rng: np.random.Generator) -> dict:
    return {
        "texture": _Field(rng, 7.0),
        "bowel": _Field(rng, 13.0),
        "bowel_content": _Field(rng, 22.0),
        "vessels": _Field(rng, 11.0, n=2),
        "lobules": _Field(rng, 6.0, lo=(-160, -100, -80), hi=(140, 120, 140)),  # around the pancreas
    }

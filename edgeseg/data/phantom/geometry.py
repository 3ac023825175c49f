"""Small geometry in continuous mm: rotations, orthonormal frames, an organ's pose, ellipsoids.

Voxel-wise arithmetic throughout the phantom is float32 (`_F32`): changing a dtype changes the
phantoms' bits, and the shipped model and results were made from them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


_F32 = np.float32


def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx (radians)."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _frame(long_axis: Sequence[float], toward: Sequence[float]) -> np.ndarray:
    """Orthonormal frame (columns u, v, w): w along `long_axis`, u as close to `toward` as possible."""
    w = np.asarray(long_axis, float)
    w = w / np.linalg.norm(w)
    u = np.asarray(toward, float)
    u = u - w * (u @ w)
    u = u / np.linalg.norm(u)
    v = np.cross(w, u)
    return np.stack([u, v, w], axis=1)


class _Pose:
    """An organ's random rigid-plus-scale change about its reference centre c:
    p = c + t + R (S (p_ref - c)). `to_ref` maps reference-frame coordinates back."""

    def __init__(self, c, t=(0, 0, 0), s=(1, 1, 1), R=None):
        self.c = np.asarray(c, float)
        self.t = np.asarray(t, float)
        self.s = np.asarray(s, float)
        self.R = np.eye(3) if R is None else np.asarray(R, float)

    def fwd(self, pts) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(pts, float))
        return self.c + self.t + ((pts - self.c) * self.s) @ self.R.T

    def to_ref(self, X, Y, Z):
        o = self.c + self.t
        dx, dy, dz = X - _F32(o[0]), Y - _F32(o[1]), Z - _F32(o[2])
        Rt = self.R.T.astype(_F32)
        out = []
        for i in range(3):
            v = Rt[i, 0] * dx + Rt[i, 1] * dy + Rt[i, 2] * dz
            v *= _F32(1.0 / self.s[i])
            v += _F32(self.c[i])
            out.append(v)
        return out

    def bbox(self, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
        p = self.fwd(corners)
        return p.min(0), p.max(0)


def _ellipsoid_q(X, Y, Z, c, r, R=None):
    """Normalised ellipsoid radius squared (<1 inside); frame R columns are the local axes."""
    dx, dy, dz = X - _F32(c[0]), Y - _F32(c[1]), Z - _F32(c[2])
    if R is None:
        return (dx / _F32(r[0])) ** 2 + (dy / _F32(r[1])) ** 2 + (dz / _F32(r[2])) ** 2
    R = np.asarray(R, _F32)
    q = None
    for i in range(3):
        u = (R[0, i] * dx + R[1, i] * dy + R[2, i] * dz) / _F32(r[i])
        q = u * u if q is None else q + u * u
    return q


def _local(X, Y, Z, c, R):
    """Coordinates in a local frame (columns of R) centred at c."""
    dx, dy, dz = X - _F32(c[0]), Y - _F32(c[1]), Z - _F32(c[2])
    R = np.asarray(R, _F32)
    return [R[0, i] * dx + R[1, i] * dy + R[2, i] * dz for i in range(3)]

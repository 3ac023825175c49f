"""The canvas painting works on: one case's grid mapped into the patient's reference frame.

It holds each voxel's reference coordinates (displaced by the patient's smooth field), the body
outline, muscle wall and cavity computed once, the diaphragm's height on the slices where it can be,
and the tissue map being painted. Each organ is evaluated on its own box of the grid only, in slabs
so the float temporaries stay small: `box`, `_sub`, `_slab_pairs` and a tube's signed distance work
on such boxes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edgeseg.data.phantom.anatomy import (
    _CORE_A,
    _CORE_BA,
    _CORE_BP,
    _SQUARE,
    _Z_KNOTS,
    _Anatomy,
    _spine_geometry,
    _Tube,
)
from edgeseg.data.phantom.geometry import _F32
from edgeseg.data.phantom.tissues import _T, _TISSUE_TABLE


def _slabs(shape, target: int = 1 << 18):
    """Slices along the first axis holding about `target` voxels each."""
    per = max(1, target // max(1, shape[1] * shape[2]))
    return [slice(i, min(shape[0], i + per)) for i in range(0, shape[0], per)]


def _slab_pairs(box, target: int = 1 << 17):
    """Split a box along its first axis: (absolute sub-box, the sub-box relative to `box`) pairs."""
    ny = box[1].stop - box[1].start
    nz = box[2].stop - box[2].start
    per = max(1, target // max(1, ny * nz))
    out = []
    for i in range(box[0].start, box[0].stop, per):
        j = min(box[0].stop, i + per)
        rel = (slice(i - box[0].start, j - box[0].start), slice(None), slice(None))
        out.append(((slice(i, j), box[1], box[2]), rel))
    return out


def _sub(box_outer, box_inner):
    """`box_inner` relative to `box_outer` (both absolute slices), or None if they do not meet."""
    if box_inner is None:
        return None
    rel = tuple(slice(max(s.start, o.start) - o.start, min(s.stop, o.stop) - o.start)
                for s, o in zip(box_inner, box_outer))
    return rel if all(r.stop > r.start for r in rel) else None


class _Canvas:
    def __init__(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, anat: _Anatomy):
        self.xs, self.ys, self.zs = xs, ys, zs
        self.shape = (len(xs), len(ys), len(zs))
        self.anat = anat
        s = anat.scale
        self.dmax = max(anat.deform.max_abs(i) for i in range(3))
        coords = []
        for i, (ax, sh) in enumerate(((xs, (-1, 1, 1)), (ys, (1, -1, 1)), (zs, (1, 1, -1)))):
            c = anat.deform.eval(xs, ys, zs, comp=i)
            c += ax.astype(_F32).reshape(sh)
            c *= _F32(1.0 / s[i])
            coords.append(c)
        self.X, self.Y, self.Z = coords
        # Reference z of each slice, displacement ignored: for quantities that vary slowly with z
        # (outline radii, spine position), looked up per slice instead of per voxel.
        self.zref = zs / s[2]
        self.tissue = np.zeros(self.shape, np.uint8)
        self.seen: set[str] = set()
        self.full = tuple(slice(0, n) for n in self.shape)
        f = anat.fat
        X, Y = self.X, self.Y
        # Body outline, muscle wall (core) and cavity, and below-the-diaphragm: computed in slabs along
        # the first axis so the float temporaries stay in cache.
        self.body = np.empty(self.shape, bool)
        self.core = np.empty(self.shape, bool)
        self.cav = np.empty(self.shape, bool)
        self.below = np.empty(self.shape, bool)
        # The domes are evaluated only on the slab of slices where they can be; below it everything is
        # abdomen, above it everything is thorax.
        zlo, zhi = (150.0 + anat.breath - 200.0) * s[2], (150.0 + anat.breath + 10.0) * s[2]
        zpat = self.zref * s[2]
        k = np.nonzero((zpat + self.dmax >= zlo) & (zpat - self.dmax <= zhi))[0]
        if k.size:
            k0, k1 = int(k[0]), int(k[-1]) + 1
            self.below[:, :, :k0] = True
            self.below[:, :, k1:] = False
            self._zd = np.empty((self.shape[0], self.shape[1], k1 - k0), _F32)
        else:
            k0 = k1 = 0 if zpat[0] > zhi else self.shape[2]
            self.below[:] = k0 == self.shape[2]
            self._zd = None
        self.zd_slab = (k0, k1)
        for c in _slabs(self.shape):
            b = (c, slice(None), slice(None))
            x, y = X[b], Y[b]
            self.body[b] = self.outline_n(self.full, x, y, grow=(0.8 * f, f, 0.55 * f)) < 1.0
            self.core[b] = self.outline_n(self.full, x, y) < 1.0
            self.cav[b] = self.outline_n(self.full, x, y, grow=(-12.0, -10.0, -12.0)) < 1.0
            if k1 > k0:
                sl = (c, slice(None), slice(k0, k1))
                zd = self.diaphragm_z(X[sl], Y[sl])
                self._zd[c] = zd
                self.below[sl] = self.Z[sl] < zd - _F32(4.0)

    def box(self, lo, hi, margin: float = 2.0):
        """Voxel slices covering the reference-frame box [lo, hi] (None if outside the grid)."""
        s = self.anat.scale
        out = []
        for axis, coords in enumerate((self.xs, self.ys, self.zs)):
            a = lo[axis] * s[axis] - self.dmax - margin
            b = hi[axis] * s[axis] + self.dmax + margin
            step = coords[1] - coords[0] if len(coords) > 1 else 1.0
            i0 = int(max(0, math.ceil((a - coords[0]) / step)))
            i1 = int(min(len(coords), math.floor((b - coords[0]) / step) + 1))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def coords(self, box):
        return self.X[box], self.Y[box], self.Z[box]

    def paint(self, box, mask: np.ndarray, tissue: str, *, where: Sequence[str] | None = None) -> None:
        view = self.tissue[box]
        if where is not None:
            allowed = np.zeros(256, bool)
            allowed[[_T[w] for w in where]] = True
            mask = mask & allowed[view]
        if not mask.any():
            return
        view[mask] = _T[tissue]
        organ = _TISSUE_TABLE[_T[tissue]][1]
        if organ is not None:
            self.seen.add(organ)

    # ---- outlines -------------------------------------------------------------------------------

    def outline_axes(self, box, *, grow=(0.0, 0.0, 0.0)):
        """Core outline half axes (a, b_ant, b_post) per slice of the box, grown by `grow` mm."""
        z = self.zref[box[2]]
        a = np.interp(z, _Z_KNOTS, _CORE_A) + grow[0]
        ba = np.interp(z, _Z_KNOTS, _CORE_BA) + grow[1]
        bp = np.interp(z, _Z_KNOTS, _CORE_BP) + grow[2]
        return [np.maximum(v, 5.0).astype(_F32)[None, None, :] for v in (a, ba, bp)]

    def outline_n(self, box, X, Y, *, grow=(0.0, 0.0, 0.0), bp_factor: float = 1.0):
        """Squarish-ellipse norm of the body core outline grown by `grow` (< 1 inside)."""
        a, ba, bp = self.outline_axes(box, grow=grow)
        if bp_factor != 1.0:
            bp = bp * _F32(bp_factor)
        u2 = X * (_F32(1.0) / a)
        u2 *= u2
        v2 = Y * np.where(Y >= 0, _F32(1.0) / ba, _F32(1.0) / bp)
        v2 *= v2
        n = u2 * v2
        n *= -_SQUARE
        n += u2
        n += v2
        return n

    def cavity(self, box):
        """Inside the muscle wall (where the organs live)."""
        return self.cav[box]

    def abdomen(self, box):
        """Inside the muscle wall and below the diaphragm."""
        return self.cav[box] & self.below[box]

    def spine(self, box):
        """Vertebral body centre y and radii (rx, ry), per slice of the box, shaped (1, 1, nz)."""
        y, rx, ry = _spine_geometry(self.zref[box[2]])
        return [np.asarray(v, _F32)[None, None, :] for v in (y, rx, ry)]

    def retro_mid(self, box, X, Y):
        """The midline retroperitoneum (spine, crura, aorta): no intraperitoneal organ goes there."""
        yv, rx, ry = self.spine(box)
        return ((X + _F32(6)) / _F32(28)) ** 2 + ((Y - yv - _F32(4)) / (ry + _F32(14))) ** 2 < 1.0

    def diaphragm_z(self, X, Y):
        """Height of the diaphragm's upper surface (reference mm): two domes and the central tendon.

        The domes peak in front of the midcoronal plane and fall steeply behind it (the posterior
        costophrenic recesses reach lowest)."""
        top = _F32(150.0 + self.anat.breath)
        ya = Y - _F32(15)
        ry2 = np.where(ya > 0, _F32(1.0 / 150.0 ** 2), _F32(1.0 / 100.0 ** 2))
        yy = ya * ya * ry2
        zr = top - _F32(70.0) * (((X - _F32(70)) / _F32(95)) ** 2 + yy)
        zl = (top - _F32(12.0)) - _F32(70.0) * (((X + _F32(72)) / _F32(90)) ** 2 + yy)
        zc = (top - _F32(28.0)) - _F32(30.0) * ((X / _F32(60)) ** 2 + ((Y - _F32(30)) / _F32(80)) ** 2)
        zd = np.maximum(np.maximum(zr, zl), zc)
        post = np.clip((-Y - _F32(20)) / _F32(50), 0, 1)
        zd -= _F32(25) * post * post
        return zd


def _tube_sdf(cv: _Canvas, box, X, Y, Z, tube: _Tube) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to a chain of tapered capsules, on `box`."""
    sdf = np.full(X.shape, np.inf, _F32)
    pts, rad = tube.points, tube.radii
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        r = max(ra, rb)
        rel = _sub(box, cv.box(np.minimum(a, b) - r, np.maximum(a, b) + r))
        if rel is None:
            continue
        x, y, z = X[rel], Y[rel], Z[rel]
        ab = (b - a).astype(_F32)
        L2 = float(ab @ ab) or 1e-6
        dx, dy, dz = x - _F32(a[0]), y - _F32(a[1]), z - _F32(a[2])
        t = dx * ab[0]
        t += dy * ab[1]
        t += dz * ab[2]
        t *= _F32(1.0 / L2)
        np.clip(t, 0, 1, out=t)
        dx -= t * ab[0]
        dy -= t * ab[1]
        dz -= t * ab[2]
        dx *= dx
        dy *= dy
        dz *= dz
        dx += dy
        dx += dz
        d = np.sqrt(dx, out=dx)
        d -= _F32(ra) + t * _F32(rb - ra)
        np.minimum(sdf[rel], d, out=sdf[rel])
    return sdf


def _tube_box(cv: _Canvas, tube: _Tube):
    r = float(tube.radii.max())
    return cv.box(tube.points.min(0) - r, tube.points.max(0) + r)

"""Painting the skeleton: the pelvis (bone, but no label), the spine and the ribs."""

from __future__ import annotations

import math

import numpy as np

from edgeseg.data.phantom.anatomy import _LEVELS, _Tube
from edgeseg.data.phantom.canvas import _Canvas, _slab_pairs, _tube_box, _tube_sdf
from edgeseg.data.phantom.geometry import _F32
from edgeseg.data.phantom.tissues import _T, _TISSUE_TABLE


def _paint_pelvis(cv: _Canvas) -> None:
    """Unlabelled bone: sacrum, iliac wings, acetabula, femoral heads and pubic/ischial rami."""
    # Sacrum: a wedge tilting backwards below L5.
    box = cv.box((-60, -125, -264), (60, 0, -140))
    if box is not None:
        X, Y, Z = cv.coords(box)
        t = np.clip((-_F32(146) - Z) / _F32(110), 0, 1)
        ys = _F32(-24) - _F32(62) * t * t - _F32(10) * t
        rxs = _F32(50) - _F32(38) * t
        rys = _F32(17) - _F32(7) * t
        qs = (X / rxs) ** 2 + ((Y - ys) / rys) ** 2
        sac = (qs < 1.0) & (Z < _F32(-146)) & (Z > _F32(-262)) & cv.core[box]
        cv.paint(box, sac & (qs <= 0.7), "bone")
        cv.paint(box, sac & (qs > 0.7), "bone_cortex")
    for s in (1.0, -1.0):
        # Iliac wing: a curved plate from the sacroiliac joint sweeping laterally and forwards.
        box = cv.box((min(30 * s, 150 * s), -90, -230), (max(30 * s, 150 * s), 50, -92))
        if box is not None:
            X, Y, Z = cv.coords(box)
            ax = X * _F32(s)
            tw = np.clip((Z + _F32(100)) / _F32(-125), 0, 1)  # 0 at the crest .. 1 near the acetabulum
            cx = _F32(40) + _F32(22) * tw
            rwx = _F32(84) - _F32(46) * tw
            rwy = _F32(58) - _F32(26) * tw
            qw = np.sqrt(((ax - cx) / rwx) ** 2 + ((Y + _F32(10)) / rwy) ** 2)
            dist = np.abs(qw - _F32(1.0)) * np.minimum(rwx, rwy)
            half = _F32(3.5) + _F32(6) * tw
            wing = (dist < half) & (ax > cx - _F32(8)) & (Y < _F32(12) + _F32(14) * tw)
            wing &= (Z < _F32(-98)) & (Z > _F32(-228))
            wing &= cv.core[box]
            cv.paint(box, wing & (dist <= half - _F32(1.8)), "bone")
            cv.paint(box, wing & (dist > half - _F32(1.8)), "bone_cortex")
        # Femoral head in its acetabulum.
        c = np.array([92 * s, 10.0, -258.0])
        box = cv.box(c - 36, c + 36)
        if box is not None:
            X, Y, Z = cv.coords(box)
            q = (X - _F32(c[0])) ** 2 + (Y - _F32(c[1])) ** 2 + (Z - _F32(c[2])) ** 2
            head = q < _F32(24.0 ** 2)
            acet = (q < _F32(32.0 ** 2)) & (q > _F32(26.0 ** 2)) & (X * _F32(s) < _F32(98)) & (Z > _F32(-272))
            ok = cv.core[box]
            cv.paint(box, ok & ((head & (q <= _F32(21.5 ** 2))) | (acet & (q < _F32(30 ** 2)))), "bone")
            cv.paint(box, ok & ((head & (q > _F32(21.5 ** 2))) | (acet & (q >= _F32(30 ** 2)))), "bone_cortex")
        for pts, r in (([(75, 28, -252), (8, 72, -262)], 10.0),
                       ([(70, -8, -252), (56, -22, -300)], 13.0),
                       ([(52, -42, -168), (86, 2, -236)], 15.0)):
            p = np.array(pts, float)
            p[:, 0] *= s
            tb = _Tube(p, np.array([r, r]))
            box = _tube_box(cv, tb)
            if box is None:
                continue
            X, Y, Z = cv.coords(box)
            sdf = _tube_sdf(cv, box, X, Y, Z, tb)
            ok = cv.core[box]
            cv.paint(box, ok & (sdf < -2.5), "bone")
            cv.paint(box, ok & (sdf < 0) & (sdf >= -2.5), "bone_cortex")


def _paint_spine(cv: _Canvas) -> None:
    box = cv.box((-70, -130, -150), (70, 30, 360))
    if box is None:
        return
    for sub, _ in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        zc = np.array([z for _, z, _ in _LEVELS], float)  # ascending
        pitch = np.array([p for _, _, p in _LEVELS], float)
        edges = np.concatenate([[zc[0] - pitch[0] / 2], (zc[:-1] + zc[1:]) / 2, [zc[-1] + pitch[-1] / 2]])
        k = np.clip(np.searchsorted(edges, Z) - 1, 0, len(zc) - 1)
        dz = Z - zc.astype(_F32)[k]
        half = (pitch.astype(_F32)[k] - _F32(7.0)) / _F32(2)  # body half height (disc 7 mm)
        in_level = (Z >= _F32(edges[0])) & (Z <= _F32(edges[-1]))
        yv, rx, ry = cv.spine(sub)
        qb = (X / rx) ** 2 + ((Y - yv) / ry) ** 2
        section = (qb < 1.0) & in_level
        body = section & (np.abs(dz) <= half)
        disc = section & (np.abs(dz) > half)
        body_cortex = body & ((qb > (1 - _F32(2.2) / ry) ** 2) | (np.abs(dz) > half - _F32(1.6)))
        # Posterior elements around the canal: pedicles and laminae, spinous and transverse processes.
        yc = yv - ry - _F32(10)
        qc = (X / _F32(11)) ** 2 + ((Y - yc) / _F32(9)) ** 2
        canal = (qc < 1.0) & in_level
        arch = (qc >= 1.0) & ((X / _F32(19)) ** 2 + ((Y - yc) / _F32(16)) ** 2 < 1.0) & (Y < yv - ry + _F32(3))
        arch &= np.abs(dz) < half + _F32(1)
        spinous = ((X / _F32(4.5)) ** 2 + ((Y - yc + _F32(26)) / _F32(16)) ** 2 + ((dz + _F32(6)) / _F32(9)) ** 2) < 1.0
        lumbar = Z < _F32(35)
        tp_len = np.where(lumbar, _F32(46), _F32(34))
        transverse = (((np.abs(X) - tp_len / 2) / (tp_len / 2)) ** 2 + ((Y - yc - _F32(3)) / _F32(5.5)) ** 2
                      + ((dz - _F32(2)) / _F32(6)) ** 2) < 1.0
        post = (arch | spinous | transverse) & in_level
        cv.paint(sub, disc, "disc")
        cv.paint(sub, canal, "canal")
        cv.paint(sub, body & ~body_cortex, "vb_cancellous")
        cv.paint(sub, post & ~canal, "vb_arch")
        cv.paint(sub, body_cortex, "vb_cortex")


def _paint_ribs(cv: _Canvas) -> None:
    zpost = np.array([z + 6.0 for name, z, _ in _LEVELS if name.startswith("T")], float)  # T12..T1, ascending
    nums = np.array([int(name[1:]) for name, _, _ in _LEVELS if name.startswith("T")])
    drop = 125.0
    phi0 = 0.42
    phi_end = np.where(nums >= 12, 1.25, np.where(nums == 11, 1.75, np.where(nums >= 8, 2.3, 2.5)))
    phi_cart = np.where(nums >= 11, phi_end, np.where(nums >= 8, 2.75, 2.95))
    box = cv.box((-200, -150, zpost.min() - drop - 10), (200, 150, 440))
    if box is None:
        return
    thick = _F32(7.0)
    hh = _F32(4.5)
    zpost32 = zpost.astype(_F32)
    for sub, _ in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        # The rib ring: just inside the body core, deeper near the spine (under the erector spinae).
        n = cv.outline_n(sub, X, Y, grow=(-3.0, -2.0, -2.0))
        deep = np.clip((_F32(75) - np.abs(X)) / _F32(45), 0, 1) * (Y < 0)
        n /= (_F32(1.0) - _F32(0.22) * deep) ** 2
        cand = (n < 1.0) & (n > _F32(0.78)) & cv.core[sub]
        idx = np.nonzero(cand)
        if idx[0].size == 0:
            continue
        x, y, z, nn = X[idx], Y[idx], Z[idx], n[idx]
        r = np.sqrt(x * x + y * y)
        depth = r * (_F32(1.0) / np.sqrt(nn) - _F32(1.0))  # distance inside the ring, mm (approx.)
        phi = np.arctan2(np.abs(x), -y)  # 0 at the back, pi at the front
        sl = np.clip((phi - _F32(phi0)) / _F32(math.pi - phi0), 0, 1)
        # Ribs run down towards the front, steepest at the side.
        zr = z + _F32(drop) * (_F32(0.3) * sl + _F32(0.35) * (_F32(1) - np.cos(sl * _F32(math.pi))))
        j = np.clip(np.searchsorted(zpost32, zr), 1, len(zpost) - 1)
        k = np.where(np.abs(zr - zpost32[j - 1]) < np.abs(zr - zpost32[j]), j - 1, j)
        dz = np.abs(zr - zpost32[k])
        shape_ok = (depth < thick) & (dz < hh) & (phi > _F32(phi0))
        bone = shape_ok & (phi < phi_end.astype(_F32)[k])
        cart = shape_ok & ~bone & (phi < phi_cart.astype(_F32)[k])
        cortex = bone & ((dz > hh - _F32(1.6)) | (depth < _F32(1.6)) | (depth > thick - _F32(1.6)))
        t = cv.tissue[sub]
        for mask, name in ((cart, "cartilage"), (bone & ~cortex, "rib_marrow"), (bone & cortex, "rib_cortex")):
            if mask.any():
                t[idx[0][mask], idx[1][mask], idx[2][mask]] = _T[name]
                if _TISSUE_TABLE[_T[name]][1]:
                    cv.seen.add(_TISSUE_TABLE[_T[name]][1])

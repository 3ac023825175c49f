"""Painting the abdominal organs and vessels: liver, gallbladder, spleen, stomach, pancreas, kidneys,
bladder, and tubes with or without a lumen (vessels; duodenum and esophagus)."""

from __future__ import annotations

import math

import numpy as np

from edgeseg.data.phantom.anatomy import _Tube
from edgeseg.data.phantom.canvas import _Canvas, _slab_pairs, _tube_box, _tube_sdf
from edgeseg.data.phantom.geometry import _F32, _ellipsoid_q, _frame, _local, _Pose, _rot


def _paint_vessel(cv: _Canvas, tube: _Tube, tissue: str, where=None, clip=None) -> None:
    box = _tube_box(cv, tube)
    if box is None:
        return
    X, Y, Z = cv.coords(box)
    m = _tube_sdf(cv, box, X, Y, Z, tube) < 0
    if clip is not None:
        m &= clip(box)
    cv.paint(box, m, tissue, where=where)


def _paint_liver(cv: _Canvas) -> None:
    an = cv.anat
    p = an.poses["liver"]
    lo, hi = p.bbox((-90, -100, -60), (180, 130, 200))
    box = cv.box(lo, hi)
    if box is None:
        return
    Rr, Rl = _rot(0, math.radians(-12), 0), _rot(math.radians(10), math.radians(12), 0)
    for sub, _ in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        Xr, Yr, Zr = p.to_ref(X, Y, Z)
        right = _ellipsoid_q(Xr, Yr, Zr, (72, 4, 84), (84, 100, 98), Rr)
        left = _ellipsoid_q(Xr, Yr, Zr, (2, 40, 104), (82, 46, 42), Rl)
        left_ok = Xr > _F32(-82) + _F32(0.6) * (Zr - _F32(100))  # the left lobe tapers to a wedge
        # The inferior surface rises medially and anteriorly.
        floor = _F32(-22) + _F32(0.45) * np.maximum(_F32(45) - Xr, 0) + _F32(0.25) * np.maximum(Yr - _F32(20), 0)
        m = ((right < 1.0) | ((left < 1.0) & left_ok)) & (Zr > floor)
        m &= cv.abdomen(sub)
        m &= ~cv.retro_mid(sub, X, Y)
        cv.paint(sub, m, "liver")
    for name in ("portal_right", "portal_left", "hepatic_vein_right", "hepatic_vein_middle", "hepatic_vein_left"):
        _paint_vessel(cv, an.tubes[name], "liver_vessel", where=("liver",))


def _paint_gallbladder(cv: _Canvas) -> None:
    an = cv.anat
    pl, pg = an.poses["liver"], an.poses["gallbladder"]
    c_ref = np.array([44.0, 46.0, 22.0])  # in the liver's reference frame
    R = _frame((0.15, 0.6, -0.8), (1, 0, 0))
    lo, hi = pl.bbox(c_ref - 60, c_ref + 60)
    box = cv.box(lo, hi)
    if box is None:
        return
    # The gallbladder's own size and tilt, about its centre in the liver's frame.
    g = _Pose(c_ref, pg.t, pg.s, pg.R)
    rw = _F32(40.0)
    for sub, _ in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        Xg, Yg, Zg = g.to_ref(*pl.to_ref(X, Y, Z))
        u, v, w = _local(Xg, Yg, Zg, c_ref, R)
        r = _F32(17.0) * (_F32(0.7) + _F32(0.3) * np.clip(w / rw, -1, 1))  # pear: fundus (w > 0) wider
        m = (u * u + v * v) / (r * r) + (w / rw) ** 2 < 1.0
        m &= cv.abdomen(sub)
        cv.paint(sub, m, "gallbladder")


def _paint_spleen(cv: _Canvas) -> None:
    an = cv.anat
    p = an.poses["spleen"]
    c = np.array([-88.0, -44.0, 70.0])
    lo, hi = p.bbox(c - 80, c + 80)
    box = cv.box(lo, hi)
    if box is None:
        return
    R = _rot(math.radians(-18), 0, math.radians(35))
    for sub, _ in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        Xr, Yr, Zr = p.to_ref(X, Y, Z)
        q = _ellipsoid_q(Xr, Yr, Zr, c, (28, 64, 56), R)
        hilum = _ellipsoid_q(Xr, Yr, Zr, c + np.array([30.0, 22.0, 0.0]), (22, 40, 38), R)
        m = (q < 1.0) & (hilum > 1.0)
        m &= cv.abdomen(sub)
        m &= ~cv.retro_mid(sub, X, Y)
        cv.paint(sub, m, "spleen")


def _paint_stomach(cv: _Canvas) -> None:
    an = cv.anat
    tube = an.tubes["stomach"]
    box = _tube_box(cv, tube)
    if box is None:
        return
    X, Y, Z = cv.coords(box)
    sdf = _tube_sdf(cv, box, X, Y, Z, tube)
    m = (sdf < 0) & cv.abdomen(box) & ~cv.retro_mid(box, X, Y)
    if not m.any():
        return
    lumen = m & (sdf < -4.0)
    # Supine patient: air floats to the front; the air cap is the front-most `stomach_air_mm` of the lumen.
    ytop = float(Y[lumen].max()) if lumen.any() else 0.0
    air = lumen & (Y > _F32(ytop - an.params["stomach_air_mm"]))
    content = "stomach_food" if an.params["stomach_content"] == "food" else "stomach_fluid"
    cv.paint(box, m & ~lumen, "stomach_wall")
    cv.paint(box, lumen & ~air, content)
    cv.paint(box, air, "stomach_air")


def _paint_hollow_tube(cv: _Canvas, tube: _Tube, wall: str, fluid: str, air: str | None, air_mm: float,
                       *, wall_mm: float = 3.0, clip=None) -> None:
    box = _tube_box(cv, tube)
    if box is None:
        return
    X, Y, Z = cv.coords(box)
    sdf = _tube_sdf(cv, box, X, Y, Z, tube)
    m = sdf < 0
    if clip is not None:
        m &= clip(box)
    if not m.any():
        return
    lumen = m & (sdf < -wall_mm)
    cv.paint(box, m & ~lumen, wall)
    if air is not None and air_mm > 0 and lumen.any():
        top = float(Y[lumen].max())
        a = lumen & (Y > _F32(top - air_mm))
        cv.paint(box, lumen & ~a, fluid)
        cv.paint(box, a, air)
    else:
        cv.paint(box, lumen, fluid)


def _paint_pancreas(cv: _Canvas, fields: dict) -> None:
    an = cv.anat
    tube = an.tubes["pancreas"]
    box = _tube_box(cv, tube)
    if box is None:
        return
    X, Y, Z = cv.coords(box)
    sdf = _tube_sdf(cv, box, X, Y, Z, tube)
    # Lobulated outline: a fine random field nudges the surface by a few millimetres.
    lob = fields["lobules"].eval(cv.xs[box[0]], cv.ys[box[1]], cv.zs[box[2]])
    m = (sdf + _F32(2.0) * lob < 0) & cv.abdomen(box)
    cv.paint(box, m, "pancreas")


def _paint_kidney(cv: _Canvas, side: str) -> None:
    an = cv.anat
    p = an.poses[f"kidney_{side}"]
    sgn = 1.0 if side == "right" else -1.0
    c = p.c
    lo, hi = p.bbox(c - 70, c + 70)
    box = cv.box(lo, hi)
    if box is None:
        return
    for sub, _ in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        Xr, Yr, Zr = p.to_ref(X, Y, Z)
        # Long axis: upper pole medial and posterior; hilum facing medially and forwards.
        R = _frame((-0.28 * sgn, -0.25, 1.0), (-sgn, 0.65, 0.0))
        u, v, w = _local(Xr, Yr, Zr, c, R)
        ru, rv, rw = _F32(26.0), _F32(21.0), _F32(55.0)
        q = (u / ru) ** 2 + (v / rv) ** 2 + (w / rw) ** 2
        sinus = _ellipsoid_q(u, v, w, (0.75 * ru, 0, 0), (0.6 * ru, 0.5 * rv, 0.42 * rw)) < 1.0
        pelvis = _ellipsoid_q(u, v, w, (0.42 * ru, 0, 0), (0.32 * ru, 0.34 * rv, 0.3 * rw)) < 1.0
        ok = cv.core[sub] & cv.below[sub]
        kid = (q < 1.0) & ~sinus & ok
        # Medullary pyramids: inner kidney, in sectors around the sinus.
        ang = np.arctan2(v, w * _F32(0.5))
        pyramids = (q < 0.55) & (np.cos(ang * _F32(7.0)) > -0.2)
        cv.paint(sub, (q < 1.0) & sinus & ok, "renal_sinus_fat")
        cv.paint(sub, kid, f"kidney_{side}_cortex")
        cv.paint(sub, kid & pyramids & ~pelvis, f"kidney_{side}_medulla")
        cv.paint(sub, (q < 1.0) & pelvis & ok, f"kidney_{side}_pelvis")


def _paint_bladder(cv: _Canvas) -> None:
    an = cv.anat
    p = an.poses["bladder"]
    c = np.array([0.0, 42.0, -212.0])
    lo, hi = p.bbox(c - 60, c + 60)
    box = cv.box(lo, hi)
    if box is None:
        return
    for sub, _ in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        Xr, Yr, Zr = p.to_ref(X, Y, Z)
        r = np.array([44.0, 36.0, 34.0])
        dz = (Zr - _F32(c[2])) / _F32(r[2])
        flat = _F32(1.0) + _F32(0.35) * np.clip(-dz, 0, None)  # flatter floor
        q = ((Xr - _F32(c[0])) / _F32(r[0])) ** 2 + ((Yr - _F32(c[1])) / _F32(r[1])) ** 2 + (dz * flat) ** 2
        m = (q < 1.0) & cv.cavity(sub)
        inner = q < (1.0 - 3.0 / 36.0) ** 2
        cv.paint(sub, m & ~inner, "bladder_wall")
        cv.paint(sub, m & inner, "urine")

"""Painting the body and what the organs sit in: fat and muscle wall, the table, paraspinal muscles
and psoas, small bowel and colon, and the thorax (diaphragm, heart, lungs and their vessels)."""

from __future__ import annotations

import numpy as np

from edgeseg.data.phantom.canvas import _Canvas, _slab_pairs, _sub, _tube_box, _tube_sdf
from edgeseg.data.phantom.geometry import _F32, _ellipsoid_q, _frame
from edgeseg.data.phantom.tissues import _T


def _paint_body(cv: _Canvas) -> None:
    cv.tissue[cv.body] = _T["subcut_fat"]
    cv.tissue[cv.core] = _T["muscle"]
    cv.tissue[cv.cav] = _T["visceral_fat"]


def _paint_table(cv: _Canvas) -> None:
    an = cv.anat
    box = cv.box((-400, -400, -1000), (400, -40, 1000))
    if box is None:
        return
    X, Y, _ = cv.coords(box)
    _, _, bp = cv.outline_axes(box, grow=(0, 0, 0.55 * an.fat))
    back = -bp - _F32(an.params["table_gap_mm"])
    # A gently curved tabletop, 12 mm thick, under the patient.
    yt = back + _F32(0.0006) * X * X
    m = (Y < yt) & (Y > yt - _F32(12.0)) & (np.abs(X) < _F32(230.0))
    m &= cv.tissue[box] == _T["air"]
    cv.tissue[box][m] = _T["table"]


def _paint_paraspinal_and_psoas(cv: _Canvas) -> None:
    box = cv.box((-90, -110, -400), (90, 30, 420))
    if box is None:
        return
    yv, rx, ry = cv.spine(box)
    zr = cv.zref[box[2]].astype(_F32)[None, None, :]
    grow = np.clip((_F32(40) - zr) / _F32(220), 0, 1)
    pr = _F32(4) + _F32(20) * grow
    cx = rx + pr + _F32(2) + _F32(30) * grow * grow
    for sub, _ in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        ax = np.abs(X)
        # Erector spinae: either side of the spinous processes, behind the transverse processes.
        para = ((ax - _F32(36)) / _F32(34)) ** 2 + ((Y - (yv - ry - _F32(30))) / _F32(27)) ** 2 < 1.0
        # Psoas: alongside the lumbar vertebral bodies, growing towards the pelvis.
        psoas = ((ax - cx) / pr) ** 2 + ((Y - yv - _F32(4)) / (pr * _F32(1.1))) ** 2 < 1.0
        psoas &= (Z < _F32(50)) & (Z > _F32(-230))
        # Quadratus lumborum: a flat band behind the kidneys.
        ql = ((ax - _F32(62)) / _F32(24)) ** 2 + ((Y - yv + _F32(30)) / _F32(10)) ** 2 < 1.0
        ql &= (Z < _F32(60)) & (Z > _F32(-110))
        cv.paint(sub, para | psoas | ql, "muscle", where=("visceral_fat", "muscle"))


def _paint_bowel(cv: _Canvas, fields: dict) -> None:
    an = cv.anat
    box = cv.box((-200, -120, -275), (200, 140, 140))
    if box is None:
        return
    xs, ys, zs = cv.xs[box[0]], cv.ys[box[1]], cv.zs[box[2]]
    yv, _, ry = cv.spine(box)
    f = fields["bowel"].eval(xs, ys, zs)
    g = fields["bowel_content"].eval(xs, ys, zs)
    level = _F32(an.params["bowel_level"] + 0.6 * (an.visceral - 0.5))
    for sub, rel in _slab_pairs(box):
        X, Y = cv.X[sub], cv.Y[sub]
        inside = cv.tissue[sub] == _T["visceral_fat"]
        inside &= cv.below[sub]
        inside &= Y > yv + ry + _F32(8) - _F32(28) * (np.abs(X) > _F32(45))  # in front of the retroperitoneum
        fs, gs = f[rel], g[rel]
        lumen = inside & (fs > level + _F32(0.22))
        cv.paint(sub, inside & (fs > level) & ~lumen, "bowel_wall")
        cv.paint(sub, lumen & (gs > 1.25), "bowel_air")
        cv.paint(sub, lumen & (gs < -0.9), "feces")
        cv.paint(sub, lumen & (gs <= 1.25) & (gs >= -0.9), "bowel_fluid")
    del f
    # The colon: a framed tube of air and stool around the small bowel.
    colon = an.tubes["colon"]
    cbox = _tube_box(cv, colon)
    if cbox is not None:
        Xc, Yc, Zc = cv.coords(cbox)
        sdf = _tube_sdf(cv, cbox, Xc, Yc, Zc, colon)
        ok = cv.abdomen(cbox)
        gc = fields["bowel_content"].eval(cv.xs[cbox[0]], cv.ys[cbox[1]], cv.zs[cbox[2]], comp=0)
        inner = sdf < -2.5
        cv.paint(cbox, ok & (sdf < 0) & ~inner, "bowel_wall")
        cv.paint(cbox, ok & inner & (gc > 0.5), "bowel_air")
        cv.paint(cbox, ok & inner & (gc <= 0.5), "feces")


def _paint_thorax(cv: _Canvas, fields: dict) -> None:
    """Diaphragm, heart, mediastinum and lungs (above the diaphragm)."""
    an = cv.anat
    k0, k1 = cv.zd_slab
    box = cv.box((-220, -160, 20 + an.breath), (220, 160, 440))
    if box is None:
        return
    box = (box[0], box[1], slice(max(box[2].start, k0), box[2].stop))
    if box[2].stop <= box[2].start:
        return
    n_slab = max(0, min(k1, box[2].stop) - box[2].start)
    yv, rx, ry = cv.spine(box)
    hp = an.poses["heart"]
    hc = np.array([-18.0, 42.0, 190.0])
    hbox = cv.box(*hp.bbox(hc - 75, hc + 75))
    Rh = _frame((-0.55, 0.45, -0.7), (0, 1, 0))
    xs, ys, zs = cv.xs[box[0]], cv.ys[box[1]], cv.zs[box[2]]
    f1 = fields["vessels"].eval(xs, ys, zs, comp=0)
    f2 = fields["vessels"].eval(xs, ys, zs, comp=1)
    for sub, rel in _slab_pairs(box):
        X, Y, Z = cv.coords(sub)
        # Diaphragm height: cached on its slab; above it the whole slice is thorax.
        zd = np.full(X.shape, -np.inf, _F32)
        if n_slab and cv._zd is not None:
            zd[:, :, :n_slab] = cv._zd[sub[0], sub[1], box[2].start - k0: box[2].start - k0 + n_slab]
        cav = cv.cavity(sub)
        above = Z > zd
        # Diaphragm muscle: a 4 mm sheet on the domes.
        cv.paint(sub, cav & (Z > zd - _F32(4)) & ~above, "muscle")
        # Heart: an ellipsoid on the central tendon, apex to the left, front and down.
        heart_q = np.full(X.shape, np.inf, _F32)
        hrel = _sub(sub, hbox)
        if hrel is not None:
            Xh, Yh, Zh = hp.to_ref(X[hrel], Y[hrel], Z[hrel])
            heart_q[hrel] = _ellipsoid_q(Xh, Yh, Zh, hc, (52, 46, 70), Rh)
            heart = cav & above & (heart_q < 1.0)
            cv.paint(sub, heart & (heart_q >= 0.62), "heart_muscle")
            cv.paint(sub, heart & (heart_q < 0.62), "heart_blood")
        # Lungs: the rest of the thoracic cavity, minus the mediastinum and the paravertebral gutter.
        lung = cav & (Z > zd + _F32(1)) & (heart_q > 1.15)
        lung &= ~((np.abs(X + _F32(4)) < _F32(14) + _F32(8) * (Y > _F32(0))) & (Y > yv - ry))
        lung &= ((X / (rx + _F32(10))) ** 2 + ((Y - yv) / (ry + _F32(8))) ** 2 >= 1.0)
        lung &= ~((np.abs(X) < rx + _F32(6)) & (Y < yv))
        lung &= ((X + _F32(24)) / _F32(22)) ** 2 + ((Y + _F32(14)) / _F32(22)) ** 2 >= 1.0
        if not lung.any():
            continue
        right = X > _F32(-4)
        lung &= cv.tissue[sub] == _T["visceral_fat"]  # not the paraspinal muscles
        cv.paint(sub, lung & right, "lung_right")
        cv.paint(sub, lung & ~right, "lung_left")
        # Lung vessels: where two smooth random fields both cross zero (curves in 3D), thicker at the hila.
        hilum = np.exp(-(((np.abs(X) - _F32(45)) / _F32(50)) ** 2 + ((Z - _F32(200)) / _F32(90)) ** 2))
        t = _F32(0.05) + _F32(0.13) * hilum
        ves = lung & (np.abs(f1[rel]) < t) & (np.abs(f2[rel]) < t)
        cv.paint(sub, ves & right, "lung_vessel_right")
        cv.paint(sub, ves & ~right, "lung_vessel_left")

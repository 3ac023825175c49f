"""The order the anatomy is painted in: lowest priority first, since a later tissue overwrites an
earlier one, so every voxel carries at most one label. Last, everything outside the body outline
becomes air and the table goes under the patient. Reordering these calls changes the phantoms."""

from __future__ import annotations

import numpy as np

from edgeseg.data.phantom.canvas import _Canvas
from edgeseg.data.phantom.paint_body import (
    _paint_body,
    _paint_bowel,
    _paint_paraspinal_and_psoas,
    _paint_table,
    _paint_thorax,
)
from edgeseg.data.phantom.paint_bones import _paint_pelvis, _paint_ribs, _paint_spine
from edgeseg.data.phantom.paint_organs import (
    _paint_bladder,
    _paint_gallbladder,
    _paint_hollow_tube,
    _paint_kidney,
    _paint_liver,
    _paint_pancreas,
    _paint_spleen,
    _paint_stomach,
    _paint_vessel,
)
from edgeseg.data.phantom.tissues import _T


def _paint_anatomy(cv: _Canvas, fields: dict) -> np.ndarray:
    an = cv.anat
    _paint_body(cv)
    _paint_paraspinal_and_psoas(cv)
    _paint_bowel(cv, fields)
    _paint_thorax(cv, fields)
    t = an.tubes
    for name in ("portal_vein", "splenic_vein", "smv", "renal_vein_left", "renal_vein_right", "iliac_vein_right",
                 "iliac_vein_left"):
        _paint_vessel(cv, t[name], "portal_vein" if name in ("portal_vein", "splenic_vein", "smv") else "vein",
                      clip=cv.cavity)
    for name in ("sma", "celiac", "splenic_artery", "hepatic_artery", "renal_artery_left", "renal_artery_right",
                 "iliac_artery_right", "iliac_artery_left"):
        _paint_vessel(cv, t[name], "artery", clip=cv.cavity)
    _paint_liver(cv)
    _paint_spleen(cv)
    _paint_stomach(cv)
    _paint_pancreas(cv, fields)
    _paint_hollow_tube(cv, t["duodenum"], "duodenum_wall", "duodenum_fluid",
                       "duodenum_air" if an.params["duodenum_air"] else None, 8.0, clip=cv.abdomen)
    _paint_gallbladder(cv)
    _paint_kidney(cv, "right")
    _paint_kidney(cv, "left")
    _paint_bladder(cv)
    _paint_hollow_tube(cv, t["esophagus"], "esophagus", "esophagus", "esophagus_air", 2.5, wall_mm=5.0, clip=cv.cavity)
    _paint_vessel(cv, t["ivc"], "ivc", clip=cv.cavity)
    _paint_vessel(cv, t["aorta"], "aorta", clip=cv.cavity)
    _paint_pelvis(cv)
    _paint_ribs(cv)
    _paint_spine(cv)
    # Guard: nothing outside the body outline (every label inside the body).
    cv.tissue[~cv.body] = _T["air"]
    _paint_table(cv)
    return cv.body

"""One patient: the reference anatomy (mm) and the random draws that make a patient from it.

The reference anatomy: body outline by height, vertebral levels, organ centres, and tubes (vessels,
hollow organs) as chains of points with radii. A patient draws sizes, poses, breath-hold level,
contents and per-tissue HU jitter from the anatomy stream. Nothing here depends on the voxel grid,
so the same seed is the same patient at any spacing. x > 0 is the patient's right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.data.phantom.domains import Domain
from edgeseg.data.phantom.fields import _Field
from edgeseg.data.phantom.geometry import _F32, _Pose, _rot
from edgeseg.data.phantom.tissues import _T, TISSUES


# Body "core" (inside the subcutaneous fat): half width, anterior and posterior half depth by z.
_Z_KNOTS = np.array([-340, -260, -200, -140, -80, 0, 80, 160, 240, 350], float)
_CORE_A = np.array([150, 158, 152, 140, 133, 133, 137, 138, 136, 130], float)
_CORE_BA = np.array([95, 100, 100, 97, 96, 98, 100, 104, 106, 104], float)
_CORE_BP = np.array([85, 86, 86, 85, 85, 85, 87, 90, 92, 92], float)
_SQUARE = _F32(0.35)  # 0 = ellipse; > 0 squarer cross-sections

# Spine: vertebra name, centre z, pitch (body + disc).
_LEVELS = [
    ("L5", -126, 36), ("L4", -90, 36), ("L3", -54, 36), ("L2", -18, 36), ("L1", 18, 35),
    ("T12", 52, 33), ("T11", 84, 31), ("T10", 114, 29), ("T9", 142, 27), ("T8", 169, 26),
    ("T7", 195, 25), ("T6", 220, 24), ("T5", 244, 23), ("T4", 267, 22), ("T3", 289, 21), ("T2", 310, 20),
    ("T1", 330, 20),
]
_SPINE_Y_Z = np.array([-140, -60, 0, 60, 150, 250, 360], float)
_SPINE_Y = np.array([-28, -22, -24, -30, -36, -38, -36], float)


def _spine_geometry(z: np.ndarray):
    """Vertebral body centre y and radii (rx, ry) at reference height z."""
    y = np.interp(z, _SPINE_Y_Z, _SPINE_Y)
    t = np.clip((z - 0.0) / 80.0, 0.0, 1.0)  # 0 lumbar .. 1 thoracic
    rx = 25.0 - 7.0 * t
    ry = 17.5 - 3.0 * t
    return y, rx, ry


def _jit(rng: np.random.Generator, sd: float, clip: float = 2.5) -> float:
    return float(np.clip(rng.normal(0.0, sd), -clip * sd, clip * sd))


def _jit3(rng, sd) -> np.ndarray:
    return np.array([_jit(rng, sd) for _ in range(3)])


def _uni(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


@dataclass
class _Tube:
    points: np.ndarray  # (n, 3) reference mm
    radii: np.ndarray  # (n,)


def _tube(rng, pts, radii, *, jitter=3.0, rscale=(1.0, 1.0)) -> _Tube:
    p = np.asarray(pts, float) + np.stack([_jit3(rng, jitter) for _ in pts])
    r = np.asarray(radii, float) * _uni(rng, *rscale) * np.array([1.0 + _jit(rng, 0.05) for _ in radii])
    return _Tube(p, r)


@dataclass
class _Anatomy:
    """One patient, in reference mm; everything the renderer needs and nothing grid-specific."""

    scale: np.ndarray  # frame scale (x, y, z)
    fat: float
    visceral: float
    deform: _Field  # 3 components, patient mm
    breath: float  # diaphragm shift, mm (+ = higher)
    poses: dict  # organ -> _Pose
    tubes: dict  # name -> _Tube
    params: dict  # scalars
    hu_jitter: np.ndarray  # per tissue, HU


def _sample_anatomy(rng: np.random.Generator, domain: Domain) -> _Anatomy:
    # Uniform draws are mapped onto the domain's ranges so the same seed is the same patient elsewhere.
    u = rng.uniform(size=4)
    fat = float(domain.fat_mm[0] + u[0] * (domain.fat_mm[1] - domain.fat_mm[0]))
    visceral = float(domain.visceral_fat[0] + u[1] * (domain.visceral_fat[1] - domain.visceral_fat[0]))
    scale = np.clip(1.0 + rng.normal(0, 0.045, 3), 0.88, 1.12)
    scale[2] = np.clip(1.0 + rng.normal(0, 0.04), 0.9, 1.1)
    deform_amp = _uni(rng, 2.0, 6.0)
    deform = _Field(rng, 95.0, n=3, scale=deform_amp)
    breath = _jit(rng, 9.0)
    b = np.array([0, 0, breath])
    bk = b * 0.5  # the kidneys move about half as far

    def pose(c, t_sd=5.0, s_sd=0.05, r_sd_deg=5.0, size=(1.0, 1.0), shift=(0, 0, 0)):
        size_f = _uni(rng, *size)
        s = np.clip(size_f * (1.0 + rng.normal(0, s_sd, 3)), 0.6, 1.6)
        R = _rot(*np.radians([_jit(rng, r_sd_deg) for _ in range(3)]))
        return _Pose(c, _jit3(rng, t_sd) + np.asarray(shift, float), s, R)

    poses = {
        "liver": pose((70, 10, 75), size=(0.88, 1.15), shift=b),
        "spleen": pose((-88, -44, 70), size=(0.85, 1.2), shift=b),
        "kidney_right": pose((72, -36, -6), t_sd=4.0, size=(0.9, 1.1), shift=bk),
        "kidney_left": pose((-72, -34, 10), t_sd=4.0, size=(0.9, 1.1), shift=bk),
        "stomach": pose((-50, 15, 85), t_sd=4.0, s_sd=0.05, shift=b * 0.8),
        "gallbladder": pose((0, 0, 0), t_sd=3.0, s_sd=0.08, r_sd_deg=10.0, size=(0.8, 1.3)),  # in the liver's frame
        "bladder": pose((0, 42, -212), t_sd=4.0, s_sd=0.08, size=(0.65, 1.25)),
        "heart": pose((-18, 42, 190), t_sd=4.0, s_sd=0.05, size=(0.9, 1.1), shift=b),
    }
    tubes = {
        "aorta": _tube(rng, [(-26, -16, 360), (-24, -16, 240), (-14, -6, 130), (-10, 3, 60), (-10, 4, 0),
                             (-9, 4, -50), (-4, 3, -92)], [14, 13.5, 12.5, 12, 11.5, 11, 10], jitter=2.0,
                       rscale=(0.85, 1.15)),
        "ivc": _tube(rng, [(20, 0, -95), (24, 1, -40), (25, 0, 10), (27, -4, 60), (26, -6, 100), (20, 0, 140),
                           (12, 12, 165)], [10, 11, 11.5, 12, 13, 14, 15], jitter=2.0, rscale=(0.85, 1.15)),
        "esophagus": _tube(rng, [(4, -8, 360), (4, -8, 240), (2, 2, 170), (-12, 16, 128), (-32, 18, 112)],
                           [8, 8, 8, 8.5, 9], jitter=2.0),
        "stomach": _tube(rng, [(-52, -18, 122), (-70, 2, 95), (-64, 28, 62), (-28, 50, 45), (0, 50, 46), (16, 44, 48)],
                         [36, 36, 31, 24, 18, 12], jitter=4.0, rscale=(0.75, 1.15)),
        "duodenum": _tube(rng, [(16, 44, 48), (42, 32, 50), (58, 14, 40), (62, 10, 5), (52, 16, -26), (10, 22, -32),
                                (-24, 20, -26), (-34, 16, 0), (-34, 22, 14)],
                          [12, 15, 13, 13, 12, 11, 11, 11, 10], jitter=3.0, rscale=(0.85, 1.15)),
        "pancreas": _tube(rng, [(24, 8, -2), (40, 16, 14), (10, 26, 30), (-28, 22, 38), (-66, 2, 52), (-86, -14, 60)],
                          [11, 17, 11, 12, 10, 8], jitter=3.0, rscale=(0.85, 1.15)),
        # unlabelled vessels
        "portal_vein": _tube(rng, [(6, 14, 30), (30, 14, 62), (48, 8, 78)], [7, 7, 6], jitter=2.0),
        "splenic_vein": _tube(rng, [(-80, -24, 66), (-46, 8, 42), (6, 14, 30)], [5, 5, 6], jitter=2.0),
        "smv": _tube(rng, [(6, 14, 30), (8, 34, 0), (10, 44, -40), (12, 40, -80)], [6, 6, 5, 4], jitter=2.0),
        "sma": _tube(rng, [(-10, 12, 34), (-8, 30, 8), (-6, 40, -35), (-4, 38, -75)], [4.5, 4.5, 4, 3], jitter=2.0),
        "celiac": _tube(rng, [(-10, 12, 52), (-10, 22, 54)], [4, 4], jitter=1.0),
        "splenic_artery": _tube(rng, [(-10, 22, 54), (-44, 10, 58), (-78, -20, 70)], [3, 3, 3], jitter=3.0),
        "hepatic_artery": _tube(rng, [(-10, 22, 54), (24, 22, 60), (44, 12, 74)], [3, 3, 2.5], jitter=3.0),
        "renal_vein_left": _tube(rng, [(-48, -26, 10), (-12, 14, 12), (22, 2, 8)], [5, 5, 6], jitter=1.5),
        "renal_vein_right": _tube(rng, [(50, -28, -4), (24, 0, 2)], [5, 6], jitter=1.5),
        "renal_artery_left": _tube(rng, [(-10, -4, 18), (-48, -30, 12)], [3.5, 3], jitter=1.5),
        "renal_artery_right": _tube(rng, [(-8, -4, 16), (22, -14, 8), (50, -30, -2)], [3.5, 3.5, 3], jitter=1.5),
        "iliac_artery_right": _tube(rng, [(-4, 3, -92), (40, -2, -150), (64, 14, -210), (74, 32, -255)],
                                    [7, 6.5, 6, 5.5], jitter=2.0),
        "iliac_artery_left": _tube(rng, [(-4, 3, -92), (-44, -2, -150), (-66, 14, -210), (-76, 32, -255)],
                                   [7, 6.5, 6, 5.5], jitter=2.0),
        "iliac_vein_right": _tube(rng, [(20, 0, -95), (36, -18, -150), (60, -4, -210), (72, 20, -255)],
                                  [9, 8, 7.5, 7], jitter=2.0),
        "iliac_vein_left": _tube(rng, [(20, 0, -95), (-38, -16, -150), (-62, -4, -210), (-74, 20, -255)],
                                 [9, 8, 7.5, 7], jitter=2.0),
        "hepatic_vein_right": _tube(rng, [(22, -2, 132), (60, -6, 118), (100, -4, 95)], [6, 5, 3.5], jitter=3.0),
        "hepatic_vein_middle": _tube(rng, [(20, 0, 134), (40, 26, 110), (55, 48, 80)], [5.5, 4.5, 3], jitter=3.0),
        "hepatic_vein_left": _tube(rng, [(16, 2, 136), (-8, 30, 124), (-34, 44, 110)], [5, 4, 3], jitter=3.0),
        "portal_right": _tube(rng, [(48, 8, 78), (80, 0, 70), (104, -10, 58)], [5, 4, 3], jitter=3.0),
        "portal_left": _tube(rng, [(48, 8, 78), (20, 30, 92), (-10, 44, 98)], [4.5, 3.5, 3], jitter=3.0),
        "colon": _tube(rng, [(66, 12, -112), (82, -2, -60), (84, 4, -10), (70, 30, 14), (30, 62, 6), (-30, 62, 16),
                             (-78, 18, 58), (-92, -8, 10), (-90, -6, -60), (-84, 4, -112), (-50, 34, -158),
                             (-10, 20, -172), (4, -30, -196), (2, -52, -250)],
                       [28, 25, 22, 22, 22, 22, 21, 18, 18, 18, 18, 17, 17, 15], jitter=6.0, rscale=(0.8, 1.15)),
    }
    # The stomach and its inlet/outlet follow the stomach's pose; the pancreas's tail follows the spleen a little.
    st = poses["stomach"]
    tubes["stomach"].points = st.fwd(tubes["stomach"].points)
    tubes["esophagus"].points[-2:] = st.fwd(tubes["esophagus"].points[-2:])
    tubes["duodenum"].points[0] = tubes["stomach"].points[-1]
    liver = poses["liver"]
    for name in ("portal_right", "portal_left", "hepatic_vein_right", "hepatic_vein_middle", "hepatic_vein_left"):
        tubes[name].points = liver.fwd(tubes[name].points)
    for side in ("left", "right"):
        kp = poses[f"kidney_{side}"]
        tubes[f"renal_vein_{side}"].points[0] = kp.fwd(tubes[f"renal_vein_{side}"].points[0])[0]
        tubes[f"renal_artery_{side}"].points[-1] = kp.fwd(tubes[f"renal_artery_{side}"].points[-1])[0]
    params = {
        "stomach_air_mm": _uni(rng, 0.0, 35.0),  # depth of the air cap (anterior, patient supine)
        "stomach_content": ["fluid", "fluid", "food"][int(rng.integers(3))],
        "duodenum_air": bool(rng.uniform() < 0.4),
        "bone_density": _uni(rng, 0.7, 1.2),
        "liver_native_hu": _uni(rng, 38.0, 70.0),
        "bowel_level": _uni(rng, -0.1, 0.5),
        "table_gap_mm": _uni(rng, 0.0, 6.0),
    }
    hu_jitter = rng.normal(0.0, 4.0, len(TISSUES))
    hu_jitter[_T["air"]] = 0.0
    return _Anatomy(scale=scale, fat=fat, visceral=visceral, deform=deform, breath=breath, poses=poses,
                    tubes=tubes, params=params, hu_jitter=hu_jitter)

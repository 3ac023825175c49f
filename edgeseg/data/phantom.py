"""Deterministic phantom abdominal CT with TotalSegmentator-style labels (numpy/scipy/nibabel only).

Why: the project must work offline, without public labelled CT. Phantoms pretrain a small model, test
every stage, and give a source/target domain pair for few-shot experiments.

How a case is made
------------------
1. A "patient" is drawn from the case seed: body size and fat, organ sizes, positions, rotations,
   breath-hold level, bowel pattern, contrast uptake, and a smooth random displacement field.
2. The anatomy is a set of shapes defined in continuous physical coordinates (mm). Each voxel centre
   p of the chosen grid is mapped to the anatomy's reference frame, q = (p + D(p)) / s (D the smooth
   displacement, s the patient's frame scale); each organ is evaluated on its own bounding box only.
3. Tissues are painted into one integer map in priority order (later organs carve earlier ones),
   so a voxel carries at most one label, and everything is clipped to the body.
4. HU per tissue and contrast phase, a smooth texture, partial-volume blur matched to the spacing,
   correlated noise, a HU offset; rounded to int16.

Coordinates: NIfTI world space, RAS+ -- +x is the patient's Right, +y Anterior, +z Superior (so the
liver, on the patient's right, has *larger* x than the spleen). The reference anatomy has z = 0 near
the L1/L2 disc, x = 0 on the midline, y = 0 at the body's centre. An LPS-ordered output
(`orientation="LPS"`, like many DICOM-derived files) holds the same voxels flipped along the first two
axes, with an affine that says so: the anatomy is the same in world space.

Determinism: one `np.random.SeedSequence(seed)` is split into independent streams (anatomy, scan
settings, field of view, texture, noise), so the same seed and parameters give bit-identical arrays
(on one machine and numpy version: the smooth fields go through BLAS), and the same seed at another
spacing, field of view or contrast phase gives the same patient. A dataset's case i uses
`case_seed(dataset_seed, i)`.

Speed (2-core CPU): about 0.2-0.4 s per case at 3 mm, 3-4 s at 0.8 x 0.8 x 3 mm (~ 480 x 380 x 115 voxels).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from edgeseg.runtime.atomic import atomic_path
from edgeseg.runtime.errors import InputError

PHANTOM_VERSION = 1

ORGANS: tuple[str, ...] = (
    "liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "gallbladder", "aorta",
    "inferior_vena_cava", "esophagus", "duodenum", "urinary_bladder", "lung_left", "lung_right", "spine", "ribs",
)
PHASES: tuple[str, ...] = ("native", "arterial", "portal")
ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS")
DEFAULT_MAX_VOXELS = 32_000_000

_F32 = np.float32


# ==================================================================================================
# Domain: scanner and population knobs
# ==================================================================================================


@dataclass(frozen=True)
class Domain:
    """What a scanner and protocol (and, a little, its population) look like. Ranges are sampled per case.

    noise_hu: (low, high) standard deviation of the image noise, HU.
    hu_offset: calibration offset added to every voxel, HU; hu_offset_jitter: its per-case std.
    phases: (phase, weight) pairs for the contrast phase; contrast_strength: (low, high) multiplier
        of the enhancement (phase HU - native HU).
    inplane_mm: (low, high) in-plane spacing; slice_mm: slice spacings to choose from (uniformly;
        repeat a value to weight it).
    psf_mm: in-plane blur (Gaussian sigma, mm) of the reconstruction; slice_profile: slice blur as a
        fraction of the slice spacing. The same blur shapes the noise (a softer kernel, coarser grain).
    z_top_mm / z_bottom_mm: (low, high) range of the scan's top and bottom (reference z, mm): a low
        top cuts off the lungs, a high bottom the bladder.
    margin_mm: (low, high) air around the body in-plane.
    fat_mm: (low, high) subcutaneous fat thickness; visceral_fat: (low, high) 0..1 share of fat
        between the bowel loops.
    """

    name: str
    noise_hu: tuple[float, float] = (8.0, 14.0)
    hu_offset: float = 0.0
    hu_offset_jitter: float = 3.0
    phases: tuple[tuple[str, float], ...] = (("portal", 0.7), ("arterial", 0.2), ("native", 0.1))
    contrast_strength: tuple[float, float] = (0.85, 1.15)
    inplane_mm: tuple[float, float] = (0.6, 1.0)
    slice_mm: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 5.0)
    psf_mm: float = 0.5
    slice_profile: float = 0.35
    z_top_mm: tuple[float, float] = (110.0, 230.0)
    z_bottom_mm: tuple[float, float] = (-295.0, -110.0)
    margin_mm: tuple[float, float] = (2.0, 20.0)
    fat_mm: tuple[float, float] = (8.0, 32.0)
    visceral_fat: tuple[float, float] = (0.2, 0.6)

    def __post_init__(self) -> None:
        problems = []
        for key in ("noise_hu", "contrast_strength", "inplane_mm", "z_top_mm", "z_bottom_mm", "margin_mm",
                    "fat_mm", "visceral_fat"):
            v = getattr(self, key)
            if len(v) != 2 or not (float(v[0]) <= float(v[1])):
                problems.append(f"{key}={v!r} must be a (low, high) pair with low <= high")
        if self.noise_hu[0] < 0:
            problems.append(f"noise_hu={self.noise_hu!r} must be >= 0")
        if min(self.inplane_mm) <= 0 or not self.slice_mm or min(self.slice_mm) <= 0:
            problems.append("spacings must be positive")
        weights = [w for _, w in self.phases]
        if not self.phases or any(p not in PHASES for p, _ in self.phases) or min(weights) < 0 or sum(weights) <= 0:
            problems.append(f"phases={self.phases!r}: use (phase, weight) pairs with phase in {PHASES}, weights >= 0")
        if self.z_bottom_mm[1] >= self.z_top_mm[0]:
            problems.append(f"z_bottom_mm {self.z_bottom_mm} must lie below z_top_mm {self.z_top_mm}")
        if problems:
            raise InputError(f"invalid phantom domain {self.name!r}: " + "; ".join(problems),
                             fix="start from SOURCE or TARGET with dataclasses.replace(...)")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


SOURCE = Domain("source")
TARGET = Domain(
    "target",
    noise_hu=(20.0, 32.0),
    hu_offset=20.0,
    hu_offset_jitter=5.0,
    phases=(("native", 0.35), ("arterial", 0.45), ("portal", 0.2)),
    contrast_strength=(0.65, 1.0),
    inplane_mm=(0.7, 0.98),
    slice_mm=(2.0, 4.0, 5.0),
    psf_mm=0.9,
    slice_profile=0.45,
    z_top_mm=(90.0, 200.0),
    z_bottom_mm=(-280.0, -100.0),
    fat_mm=(14.0, 45.0),
    visceral_fat=(0.35, 0.8),
)
DOMAINS: dict[str, Domain] = {"source": SOURCE, "target": TARGET}


# ==================================================================================================
# Tissues: HU per phase (native, arterial, portal-venous), texture amplitude, label
# ==================================================================================================

# name, organ label (or None), native, arterial, portal, texture HU (std of the smooth texture)
_TISSUE_TABLE: list[tuple[str, str | None, float, float, float, float]] = [
    ("air", None, -1000, -1000, -1000, 0),
    ("table", None, -300, -300, -300, 40),
    ("subcut_fat", None, -105, -105, -105, 10),
    ("visceral_fat", None, -95, -95, -95, 14),
    ("muscle", None, 50, 56, 62, 7),
    ("bowel_wall", None, 40, 90, 100, 10),
    ("bowel_fluid", None, 12, 12, 15, 8),
    ("bowel_air", None, -960, -960, -960, 25),
    ("feces", None, -70, -70, -70, 140),
    ("heart_muscle", None, 45, 100, 110, 8),
    ("heart_blood", None, 40, 270, 165, 10),
    ("cartilage", None, 110, 110, 110, 20),
    ("bone", None, 260, 260, 260, 70),
    ("bone_cortex", None, 750, 750, 750, 90),
    ("disc", None, 85, 85, 90, 10),
    ("canal", None, 25, 25, 28, 6),
    ("renal_sinus_fat", None, -80, -80, -80, 15),
    ("artery", None, 42, 310, 160, 8),
    ("portal_vein", None, 40, 95, 185, 8),
    ("vein", None, 40, 80, 150, 8),
    ("lung_right", "lung_right", -860, -860, -860, 40),
    ("lung_left", "lung_left", -860, -860, -860, 40),
    ("lung_vessel_right", "lung_right", 0, 180, 130, 40),
    ("lung_vessel_left", "lung_left", 0, 180, 130, 40),
    ("liver", "liver", 60, 75, 110, 7),
    ("liver_vessel", "liver", 38, 60, 170, 8),
    ("spleen", "spleen", 48, 115, 125, 9),
    ("kidney_right_cortex", "kidney_right", 35, 200, 175, 8),
    ("kidney_right_medulla", "kidney_right", 30, 75, 150, 8),
    ("kidney_right_pelvis", "kidney_right", 10, 10, 15, 5),
    ("kidney_left_cortex", "kidney_left", 35, 200, 175, 8),
    ("kidney_left_medulla", "kidney_left", 30, 75, 150, 8),
    ("kidney_left_pelvis", "kidney_left", 10, 10, 15, 5),
    ("stomach_wall", "stomach", 40, 85, 100, 8),
    ("stomach_fluid", "stomach", 12, 12, 14, 6),
    ("stomach_food", "stomach", 35, 35, 35, 45),
    ("stomach_air", "stomach", -960, -960, -960, 25),
    ("pancreas", "pancreas", 42, 120, 90, 14),
    ("gallbladder", "gallbladder", 18, 18, 20, 4),
    ("aorta", "aorta", 42, 310, 160, 8),
    ("ivc", "inferior_vena_cava", 40, 85, 145, 8),
    ("esophagus", "esophagus", 42, 60, 70, 6),
    ("esophagus_air", "esophagus", -900, -900, -900, 30),
    ("duodenum_wall", "duodenum", 40, 85, 100, 8),
    ("duodenum_fluid", "duodenum", 12, 12, 15, 6),
    ("duodenum_air", "duodenum", -960, -960, -960, 25),
    ("bladder_wall", "urinary_bladder", 40, 60, 75, 6),
    ("urine", "urinary_bladder", 8, 8, 10, 4),
    ("vb_cancellous", "spine", 230, 230, 230, 45),
    ("vb_cortex", "spine", 560, 560, 560, 70),
    ("vb_arch", "spine", 400, 400, 400, 70),
    ("rib_marrow", "ribs", 220, 220, 220, 40),
    ("rib_cortex", "ribs", 560, 560, 560, 70),
]
TISSUES: tuple[str, ...] = tuple(t[0] for t in _TISSUE_TABLE)
_T = {name: i for i, name in enumerate(TISSUES)}
_TISSUE_LABEL = np.array([0 if t[1] is None else ORGANS.index(t[1]) + 1 for t in _TISSUE_TABLE], dtype=np.uint8)
_TISSUE_HU = np.array([t[2:5] for t in _TISSUE_TABLE], dtype=np.float64)  # (n_tissues, 3 phases)
_TISSUE_TEX = np.array([t[5] for t in _TISSUE_TABLE], dtype=np.float32)
assert len(TISSUES) < 256


# ==================================================================================================
# Small geometry helpers
# ==================================================================================================


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


# ==================================================================================================
# Smooth random fields: cubic B-spline coefficients on a fixed knot grid in patient space
# ==================================================================================================

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


# ==================================================================================================
# Reference anatomy (mm). x > 0 is the patient's right.
# ==================================================================================================

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


# ==================================================================================================
# The canvas: grid, reference coordinates, cached outlines and the tissue map
# ==================================================================================================


def _slabs(shape, target: int = 1 << 18):
    """Slices along the first axis holding about `target` voxels each."""
    per = max(1, target // max(1, shape[1] * shape[2]))
    return [slice(i, min(shape[0], i + per)) for i in range(0, shape[0], per)]


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


# ==================================================================================================
# Painting the anatomy, lowest priority first
# ==================================================================================================


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


def _paint_vessel(cv: _Canvas, tube: _Tube, tissue: str, where=None, clip=None) -> None:
    box = _tube_box(cv, tube)
    if box is None:
        return
    X, Y, Z = cv.coords(box)
    m = _tube_sdf(cv, box, X, Y, Z, tube) < 0
    if clip is not None:
        m &= clip(box)
    cv.paint(box, m, tissue, where=where)


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


def _sub(box_outer, box_inner):
    """`box_inner` relative to `box_outer` (both absolute slices), or None if they do not meet."""
    if box_inner is None:
        return None
    rel = tuple(slice(max(s.start, o.start) - o.start, min(s.stop, o.stop) - o.start)
                for s, o in zip(box_inner, box_outer))
    return rel if all(r.stop > r.start for r in rel) else None


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

# ==================================================================================================
# Scanner: grid, intensities, blur, noise
# ==================================================================================================


@dataclass
class _Scan:
    phase: str
    contrast: float
    noise_hu: float
    hu_offset: float


def _sample_scan(rng: np.random.Generator, domain: Domain, phase: str | None) -> _Scan:
    names = [p for p, _ in domain.phases]
    w = np.array([w for _, w in domain.phases], float)
    drawn = names[int(rng.choice(len(names), p=w / w.sum()))]
    contrast = _uni(rng, *domain.contrast_strength)
    noise = _uni(rng, *domain.noise_hu)
    offset = domain.hu_offset + _jit(rng, domain.hu_offset_jitter)
    return _Scan(phase=phase or drawn, contrast=contrast, noise_hu=noise, hu_offset=offset)


@dataclass
class _Grid:
    spacing: tuple[float, float, float]
    origin: np.ndarray  # patient mm of voxel (0, 0, 0)
    shape: tuple[int, int, int]
    world_offset: np.ndarray
    z_range: tuple[float, float]
    coarsened: bool

    def axes(self):
        return [self.origin[i] + self.spacing[i] * np.arange(self.shape[i]) for i in range(3)]


def _parse_spacing(spacing) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    if np.isscalar(spacing):
        spacing = (spacing,) * 3
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        sp = ()
    if len(sp) != 3 or not all(math.isfinite(s) and 0.05 <= s <= 50 for s in sp):
        raise InputError(f"spacing {spacing!r} must be one or three numbers between 0.05 and 50 mm",
                         fix="e.g. spacing=(3, 3, 3) for cheap data, or leave it unset to sample one per case")
    return sp  # type: ignore[return-value]


def _sample_grid(rng: np.random.Generator, domain: Domain, anat: _Anatomy, spacing, z_range, max_voxels: int) -> _Grid:
    inplane = round(_uni(rng, *domain.inplane_mm), 4)
    thick = float(domain.slice_mm[int(rng.integers(len(domain.slice_mm)))])
    top = _uni(rng, *domain.z_top_mm)
    bottom = _uni(rng, *domain.z_bottom_mm)
    margins = rng.uniform(*domain.margin_mm, size=4)
    world_offset = np.round(np.array([_uni(rng, -25, 25), _uni(rng, -60, 60) - 150.0, _uni(rng, -900, -150)]), 2)
    if z_range is not None:
        try:
            lo, hi = (float(v) for v in z_range)
        except (TypeError, ValueError):
            lo, hi = float("nan"), float("nan")
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo and lo >= -400 and hi <= 420):
            raise InputError(f"z_range {z_range!r} must be (bottom, top) in reference mm, -400 <= bottom < top <= 420",
                             fix="e.g. z_range=(-280, 200) for the whole abdomen")
        bottom, top = lo, hi
    s = anat.scale
    zlo, zhi = bottom * s[2], top * s[2]
    zk = np.linspace(bottom, top, 64)
    f = anat.fat
    dm = max(anat.deform.max_abs(i) for i in range(3))
    half_x = float(np.interp(zk, _Z_KNOTS, _CORE_A).max() + 0.8 * f) * s[0] + dm
    ant = float(np.interp(zk, _Z_KNOTS, _CORE_BA).max() + f) * s[1] + dm
    post = float(np.interp(zk, _Z_KNOTS, _CORE_BP).max() + 0.55 * f) * s[1] + dm + 6.0
    x0, x1 = -half_x - margins[0], half_x + margins[1]
    y0, y1 = -post - margins[2] - 8.0, ant + margins[3]
    given = _parse_spacing(spacing)
    sp = given if given is not None else (inplane, inplane, thick)
    ext = np.array([x1 - x0, y1 - y0, zhi - zlo])

    def shape_for(sp_):
        return tuple(int(math.floor(e / d + 1e-9)) + 1 for e, d in zip(ext, sp_))

    shape = shape_for(sp)
    coarsened = False
    n = int(np.prod(shape))
    if n > max_voxels:
        if given is not None:
            raise InputError(
                f"spacing {sp} mm gives {shape} = {n:,} voxels, above max_voxels={max_voxels:,}",
                fix="choose a coarser spacing, a smaller z_range, or raise max_voxels")
        f_ = (n / max_voxels) ** (1.0 / 3.0)
        while True:
            sp = tuple(round(v * f_, 4) for v in sp)
            shape = shape_for(sp)
            if int(np.prod(shape)) <= max_voxels:
                break
            f_ = 1.02
        coarsened = True
    origin = np.array([x0, y0, zlo])
    return _Grid(spacing=tuple(float(v) for v in sp), origin=origin, shape=shape, world_offset=world_offset,
                 z_range=(float(bottom), float(top)), coarsened=coarsened)


def _tissue_hu(anat: _Anatomy, scan: _Scan) -> np.ndarray:
    col = PHASES.index(scan.phase)
    native = _TISSUE_HU[:, 0].copy()
    native[_T["liver"]] = anat.params["liver_native_hu"]
    enh = _TISSUE_HU[:, col] - _TISSUE_HU[:, 0]
    hu = native + scan.contrast * enh + anat.hu_jitter
    bd = anat.params["bone_density"]
    for t in ("bone", "vb_cancellous", "rib_marrow"):
        hu[_T[t]] = _TISSUE_HU[_T[t], 0] * bd + anat.hu_jitter[_T[t]]
    hu[_T["air"]] = -1000.0
    return hu.astype(_F32)


def _gauss_kernel_sq_sum(sigma: float, truncate: float = 4.0) -> float:
    if sigma <= 0:
        return 1.0
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=float)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float((w ** 2).sum())


def _render_hu(cv: _Canvas, anat: _Anatomy, scan: _Scan, grid: _Grid, domain: Domain, fields: dict,
               rng_noise: np.random.Generator) -> np.ndarray:
    """Tissue map -> HU: per-tissue HU and texture, white noise, then one blur (the scanner's point
    spread and slice profile, which also give the noise its texture), the HU offset, int16."""
    lut = _tissue_hu(anat, scan)
    t = cv.tissue
    sp = np.asarray(grid.spacing)
    sig = np.array([
        math.hypot(domain.psf_mm, 0.3 * sp[0]) / sp[0],
        math.hypot(domain.psf_mm, 0.3 * sp[1]) / sp[1],
        math.hypot(domain.slice_profile * sp[2], 0.3 * domain.psf_mm) / sp[2],
    ])
    truncate = 3.0
    hu = fields["texture"].eval(cv.xs, cv.ys, cv.zs)
    if scan.noise_hu > 0:
        # White noise scaled so that, after the blur below, its standard deviation is noise_hu.
        gain = 1.0 / math.sqrt(float(np.prod([_gauss_kernel_sq_sum(v, truncate) for v in sig])))
        noise = rng_noise.standard_normal(hu.shape, dtype=_F32)
    for sub, _ in _slab_pairs(cv.full, 1 << 18):
        ts = t[sub]
        h = hu[sub]
        h *= _TISSUE_TEX[ts]
        h += lut[ts]
        if scan.noise_hu > 0:
            n = noise[sub]
            n *= _F32(scan.noise_hu * gain)
            h += n
    if scan.noise_hu > 0:
        del noise
    hu = ndimage.gaussian_filter(hu, sigma=sig, truncate=truncate, mode="nearest")
    hu += _F32(scan.hu_offset)
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    return hu.astype(np.int16)


# ==================================================================================================
# Public API
# ==================================================================================================


@dataclass
class PhantomCase:
    """One phantom scan: int16 HU, one uint8 0/1 mask per organ in ORGANS (zeros when absent), all on one grid."""

    ct: np.ndarray
    labels: dict[str, np.ndarray]
    affine: np.ndarray
    meta: dict
    body: np.ndarray | None = field(default=None, repr=False)  # bool, the body outline (no table)


def label_map(case: PhantomCase | Mapping[str, np.ndarray]) -> np.ndarray:
    """One uint8 map: 0 background, i + 1 for ORGANS[i]."""
    labels = case.labels if isinstance(case, PhantomCase) else case
    out = None
    for i, name in enumerate(ORGANS):
        m = labels.get(name)
        if m is None:
            continue
        if out is None:
            out = np.zeros(m.shape, np.uint8)
        out[np.asarray(m) > 0] = i + 1
    if out is None:
        raise ValueError("no organ masks given")
    return out


def case_seed(dataset_seed: int, index: int) -> int:
    """The seed of case `index` of a dataset made with `dataset_seed` (independent streams per case)."""
    return int(np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _make_fields(rng: np.random.Generator) -> dict:
    return {
        "texture": _Field(rng, 7.0),
        "bowel": _Field(rng, 13.0),
        "bowel_content": _Field(rng, 22.0),
        "vessels": _Field(rng, 11.0, n=2),
        "lobules": _Field(rng, 6.0, lo=(-160, -100, -80), hi=(140, 120, 140)),  # around the pancreas
    }


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"seed {seed!r} must be a non-negative integer", fix="e.g. --seed 0")
    return int(seed)


def _domain(domain) -> Domain:
    if isinstance(domain, Domain):
        return domain
    if isinstance(domain, str) and domain.lower() in DOMAINS:
        return DOMAINS[domain.lower()]
    raise InputError(f"domain {domain!r} is not known", fix=f"use one of {sorted(DOMAINS)} or a Domain(...)")


def generate_case(
    seed: int,
    domain: Domain | str = SOURCE,
    *,
    spacing: float | Sequence[float] | None = None,
    z_range: tuple[float, float] | None = None,
    phase: str | None = None,
    orientation: str = "RAS",
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> PhantomCase:
    """Make one phantom CT with its organ masks.

    seed: the case's seed (see `case_seed` for a dataset's cases).
    domain: scanner/protocol knobs (SOURCE, TARGET, or your own Domain).
    spacing: (x, y, z) mm (or one number), overriding the domain's sampled spacing.
    z_range: (bottom, top) of the scan in reference mm (z = 0 near L1/L2), overriding the sampled range;
        e.g. (-280, 230) always holds every organ.
    phase: "native", "arterial" or "portal", overriding the domain's sampled phase.
    orientation: "RAS" or "LPS" voxel order (the anatomy in world space is the same).
    max_voxels: a sampled spacing is coarsened (uniformly) to stay under this; an explicit one is refused.
    """
    seed = _check_seed(seed)
    domain = _domain(domain)
    if phase is not None and phase not in PHASES:
        raise InputError(f"phase {phase!r} is not one of {PHASES}", fix="use native, arterial or portal")
    if orientation not in ORIENTATIONS:
        raise InputError(f"orientation {orientation!r} is not one of {ORIENTATIONS}", fix="use RAS or LPS")
    if int(max_voxels) < 1000:
        raise InputError(f"max_voxels={max_voxels} is too small", fix="allow at least 1000 voxels")
    ss = np.random.SeedSequence(seed)
    r_anat, r_scan, r_grid, r_tex, r_noise = (np.random.default_rng(s) for s in ss.spawn(5))
    anat = _sample_anatomy(r_anat, domain)
    scan = _sample_scan(r_scan, domain, phase)
    grid = _sample_grid(r_grid, domain, anat, spacing, z_range, int(max_voxels))
    fields = _make_fields(r_tex)
    xs, ys, zs = grid.axes()
    cv = _Canvas(xs, ys, zs, anat)
    body = _paint_anatomy(cv, fields)
    del cv.X, cv.Y, cv.Z, cv.core, cv.cav, cv.below, cv._zd  # free memory before the intensities
    ct = _render_hu(cv, anat, scan, grid, domain, fields, r_noise)
    lmap = _TISSUE_LABEL[cv.tissue]
    del cv.tissue

    sp = grid.spacing
    affine = np.diag([sp[0], sp[1], sp[2], 1.0])
    affine[:3, 3] = grid.origin + grid.world_offset
    if orientation == "LPS":
        nx, ny, _ = grid.shape
        flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        affine = affine @ flip
        ct = np.ascontiguousarray(ct[::-1, ::-1, :])
        lmap = np.ascontiguousarray(lmap[::-1, ::-1, :])
        body = np.ascontiguousarray(body[::-1, ::-1, :])

    counts = np.bincount(lmap.ravel(), minlength=len(ORGANS) + 1)
    voxel_ml = float(np.prod(sp)) / 1000.0
    labels = {}
    for i, (name, bb) in enumerate(zip(ORGANS, ndimage.find_objects(lmap, max_label=len(ORGANS)))):
        m = np.zeros(lmap.shape, np.uint8)
        if bb is not None:
            np.equal(lmap[bb], i + 1, out=m[bb], casting="unsafe")
        labels[name] = m
    present = [name for i, name in enumerate(ORGANS) if counts[i + 1] > 0]
    meta = {
        "generator": "edgeseg.data.phantom",
        "version": PHANTOM_VERSION,
        "seed": seed,
        "domain": domain.name,
        "domain_knobs": domain.to_dict(),
        "phase": scan.phase,
        "contrast_strength": round(scan.contrast, 4),
        "noise_hu": round(scan.noise_hu, 3),
        "hu_offset": round(scan.hu_offset, 3),
        "spacing": [float(v) for v in sp],
        "shape": [int(v) for v in ct.shape],
        "orientation": orientation,
        "affine": [[float(v) for v in row] for row in affine],
        "z_range_mm": list(grid.z_range),
        "spacing_coarsened": grid.coarsened,
        "organs_present": present,
        "organs_absent": [o for o in ORGANS if o not in present],
        # Organs some voxel of which was drawn and then entirely covered by others (should stay empty).
        "organs_carved_away": sorted(o for o in cv.seen if o not in present),
        "volumes_ml": {name: round(float(counts[i + 1]) * voxel_ml, 3) for i, name in enumerate(ORGANS)},
        "patient": {
            "frame_scale": [round(float(v), 4) for v in anat.scale],
            "fat_mm": round(anat.fat, 2),
            "visceral_fat": round(anat.visceral, 3),
            "breath_mm": round(anat.breath, 2),
            **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in anat.params.items()},
        },
    }
    return PhantomCase(ct=ct, labels=labels, affine=affine, meta=meta, body=body)


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, *, force: bool) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path, force=force) as tmp:
        nib.save(img, str(tmp))


def write_case(case: PhantomCase, case_dir: str | Path, *, force: bool = False) -> Path:
    """Write one case in TotalSegmentator layout: ct.nii.gz, segmentations/<organ>.nii.gz, meta.json."""
    case_dir = Path(case_dir)
    if case_dir.exists() and any(case_dir.iterdir()) and not force:
        raise InputError("case folder already exists; refusing to overwrite it", path=case_dir,
                         fix="pass --force to overwrite, or choose another output folder")
    seg = case_dir / "segmentations"
    seg.mkdir(parents=True, exist_ok=True)
    for name in ORGANS:
        _save_nifti(np.asarray(case.labels[name], np.uint8), case.affine, seg / f"{name}.nii.gz", force=force)
    _save_nifti(np.asarray(case.ct, np.int16), case.affine, case_dir / "ct.nii.gz", force=force)
    # meta.json last: its presence means the case is complete.
    with atomic_path(case_dir / "meta.json", force=force) as tmp:
        tmp.write_text(json.dumps(case.meta, indent=1) + "\n")
    return case_dir


def write_dataset(
    out: str | Path,
    n: int,
    seed: int,
    domain: Domain | str = SOURCE,
    *,
    spacing: float | Sequence[float] | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    orientation: str = "RAS",
    z_range: tuple[float, float] | None = None,
    phase: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> list[Path]:
    """Write `n` phantom cases OUT/s0000 .. in TotalSegmentator layout plus OUT/phantoms.json.

    Case i uses seed `case_seed(seed, i)`. Existing cases are refused (before anything is written)
    unless `force`. `progress(i, n)` is called after each case with i = 1..n.
    """
    seed = _check_seed(seed)
    domain = _domain(domain)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise InputError(f"n={n!r} must be a positive integer", fix="e.g. --n 20")
    n = int(n)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("is a file, not a folder", path=out, fix="give a folder for the phantom dataset")
    ids = [f"s{i:04d}" for i in range(n)]
    if not force:
        for cid in ids:
            d = out / cid
            if d.exists() and any(d.iterdir()):
                raise InputError("case folder already exists; refusing to overwrite it", path=d,
                                 fix="pass --force to overwrite, or choose another output folder")
        if (out / "phantoms.json").exists():
            raise InputError("already exists; refusing to overwrite it", path=out / "phantoms.json",
                             fix="pass --force to overwrite, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    dirs, cases = [], []
    for i, cid in enumerate(ids):
        cs = case_seed(seed, i)
        case = generate_case(cs, domain, spacing=spacing, z_range=z_range, phase=phase, orientation=orientation,
                             max_voxels=max_voxels)
        case.meta.update({"case_id": cid, "dataset_seed": seed, "index": i})
        dirs.append(write_case(case, out / cid, force=force))
        cases.append({k: case.meta[k] for k in ("seed", "phase", "spacing", "shape", "organs_present", "volumes_ml")}
                     | {"case_id": cid, "index": i})
        if progress is not None:
            progress(i + 1, n)
    summary = {
        "generator": "edgeseg.data.phantom",
        "version": PHANTOM_VERSION,
        "layout": "totalsegmentator",
        "n": n,
        "seed": seed,
        "domain": domain.name,
        "domain_knobs": domain.to_dict(),
        "spacing": None if spacing is None else list(_parse_spacing(spacing)),  # type: ignore[arg-type]
        "orientation": orientation,
        "organs": list(ORGANS),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cases": cases,
    }
    with atomic_path(out / "phantoms.json", force=force) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return dirs

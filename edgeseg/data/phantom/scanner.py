"""What one scan looks like, drawn from the domain: contrast phase and strength, noise, HU offset
(`_sample_scan`), and the voxel grid (`_sample_grid`): spacing, field of view around the patient's
body, world offset; a sampled spacing is coarsened to stay under max_voxels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeseg.data.phantom.anatomy import _CORE_A, _CORE_BA, _CORE_BP, _Z_KNOTS, _Anatomy, _jit, _uni
from edgeseg.data.phantom.domains import Domain
from edgeseg.runtime.errors import InputError


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

"""The tissue map to HU: each tissue's HU for the scan's phase and contrast, a smooth texture, noise,
one blur (the scanner's point spread and slice profile), the HU offset; rounded to int16."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from edgeseg.data.phantom.anatomy import _Anatomy
from edgeseg.data.phantom.canvas import _Canvas, _slab_pairs
from edgeseg.data.phantom.domains import Domain
from edgeseg.data.phantom.geometry import _F32
from edgeseg.data.phantom.scanner import _Grid, _Scan
from edgeseg.data.phantom.tissues import _T, _TISSUE_HU, _TISSUE_TEX, PHASES


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

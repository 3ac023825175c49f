"""One phantom case: `generate_case` runs the steps from one seed, and the case it returns.

The seed is split into independent streams (anatomy, scan settings, grid, fields, noise), so the
same seed at another spacing, field of view or phase is the same patient. `case_seed` gives a
dataset's case i its seed; `label_map` turns a case's masks into one map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from edgeseg.data.phantom.anatomy import _sample_anatomy
from edgeseg.data.phantom.canvas import _Canvas
from edgeseg.data.phantom.domains import SOURCE, Domain, _domain
from edgeseg.data.phantom.fields import _make_fields
from edgeseg.data.phantom.painting import _paint_anatomy
from edgeseg.data.phantom.rendering import _render_hu
from edgeseg.data.phantom.scanner import _sample_grid, _sample_scan
from edgeseg.data.phantom.tissues import _TISSUE_LABEL, ORGANS, PHASES
from edgeseg.runtime.errors import InputError


PHANTOM_VERSION = 1  # written into every case's meta and phantoms.json
ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS")
DEFAULT_MAX_VOXELS = 32_000_000


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


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"seed {seed!r} must be a non-negative integer", fix="e.g. --seed 0")
    return int(seed)


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

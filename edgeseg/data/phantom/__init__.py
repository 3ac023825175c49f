"""Deterministic phantom abdominal CT with TotalSegmentator-style labels (numpy/scipy/nibabel only).

Why: the project must work offline, without public labelled CT. Phantoms pretrain a small model, test
every stage, and give a source/target domain pair for few-shot experiments.

How a case is made (`cases.generate_case`)
------------------------------------------
1. A "patient" is drawn from the case seed (`anatomy`): body size and fat, organ sizes, positions,
   rotations, breath-hold level, bowel pattern, contrast uptake, and a smooth random displacement
   field (`fields`). The scan's phase, noise and grid are drawn from the domain (`domains`, `scanner`).
2. The anatomy is a set of shapes defined in continuous physical coordinates (mm, `geometry`). Each
   voxel centre p of the chosen grid is mapped to the anatomy's reference frame, q = (p + D(p)) / s
   (D the smooth displacement, s the patient's frame scale; `canvas`); each organ is evaluated on its
   own bounding box only.
3. Tissues (`tissues`) are painted into one integer map in priority order (`painting`: later organs
   carve earlier ones; `paint_body`, `paint_organs`, `paint_bones`), so a voxel carries at most one
   label, and everything is clipped to the body.
4. HU per tissue and contrast phase, a smooth texture, partial-volume blur matched to the spacing,
   correlated noise, a HU offset; rounded to int16 (`rendering`).
5. Optionally written in TotalSegmentator layout (`writing`).

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

from edgeseg.data.phantom.cases import (
    DEFAULT_MAX_VOXELS,
    ORIENTATIONS,
    PHANTOM_VERSION,
    PhantomCase,
    case_seed,
    generate_case,
    label_map,
)
from edgeseg.data.phantom.domains import DOMAINS, SOURCE, TARGET, Domain
from edgeseg.data.phantom.tissues import ORGANS, PHASES, TISSUES
from edgeseg.data.phantom.writing import write_case, write_dataset

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "DOMAINS",
    "Domain",
    "ORGANS",
    "ORIENTATIONS",
    "PHANTOM_VERSION",
    "PHASES",
    "PhantomCase",
    "SOURCE",
    "TARGET",
    "TISSUES",
    "case_seed",
    "generate_case",
    "label_map",
    "write_case",
    "write_dataset",
]

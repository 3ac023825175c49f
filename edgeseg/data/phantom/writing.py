"""Phantoms on disk in TotalSegmentator layout: one case (`write_case`: ct.nii.gz,
segmentations/<organ>.nii.gz, meta.json) or a dataset of cases plus its phantoms.json
(`write_dataset`). Every file is written atomically; existing output is refused unless `force`."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from edgeseg.data.phantom.cases import (
    DEFAULT_MAX_VOXELS,
    PHANTOM_VERSION,
    PhantomCase,
    _check_seed,
    case_seed,
    generate_case,
)
from edgeseg.data.phantom.domains import SOURCE, Domain, _domain
from edgeseg.data.phantom.scanner import _parse_spacing
from edgeseg.data.phantom.tissues import ORGANS
from edgeseg.runtime.atomic import atomic_path
from edgeseg.runtime.errors import InputError


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

"""Shared fixtures: the real CT shipped in edgeseg/assets and small synthetic NIfTI builders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from edgeseg.assets import EXAMPLE_CT as REAL_CT
from edgeseg.assets import EXAMPLE_CT_BODY as REAL_BODY


@pytest.fixture
def real_ct() -> Path:
    return REAL_CT


@pytest.fixture
def real_body() -> Path:
    return REAL_BODY


def ellipsoid_world(shape, affine, center_mm, radii_mm) -> np.ndarray:
    """A binary ellipsoid defined in world (mm) coordinates, sampled on a grid with this affine."""
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ idx + affine[:3, 3:4]
    d = ((world - np.asarray(center_mm)[:, None]) / np.asarray(radii_mm)[:, None]) ** 2
    return (d.sum(0) <= 1.0).reshape(shape).astype(np.uint8)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path

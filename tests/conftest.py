"""Shared fixtures: the real CT shipped in edgeseg/assets and small synthetic NIfTI builders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from edgeseg.runtime.preprocess import PreprocessSpec

from edgeseg.assets import EXAMPLE_CT as REAL_CT
from edgeseg.assets import EXAMPLE_CT_BODY as REAL_BODY
from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec

# A tiny trunk whose preprocessing spacing is 5 mm: phantoms written at 5 mm need no resampling and a
# whole abdomen is a few 64^3 windows, so caching and adaptation tests take seconds, not minutes.
PRE5 = PreprocessSpec(window=(64, 64, 64), spacing=(5.0, 5.0, 5.0))
SPEC5 = ModelSpec(**TINY_TEST_SPEC, out_channels=3, class_names=("liver", "spleen", "kidney_left"), preprocess=PRE5)


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


@pytest.fixture(scope="session")
def phantoms5(tmp_path_factory):
    """Three labelled support phantoms and one query scan at 5 mm: (support folder, query ct path)."""
    from edgeseg.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("phantoms5")
    write_dataset(root / "support", 3, seed=0, spacing=5.0, z_range=(-400, 420))
    write_dataset(root / "query", 1, seed=7, spacing=5.0, z_range=(-100, 200))
    return root / "support", root / "query" / "s0000" / "ct.nii.gz"


@pytest.fixture(scope="session")
def checkpoint5(tmp_path_factory):
    """The tiny SPEC5 SwinUNETR with seeded random weights, saved as safetensors."""
    import torch

    from edgeseg.model.checkpoint import save_checkpoint
    from edgeseg.model.swinunetr import build_swinunetr

    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt5") / "tiny.safetensors"
    save_checkpoint(build_swinunetr(SPEC5), SPEC5, ckpt)
    return ckpt


def _export5(checkpoint, out, cut):
    from edgeseg.export.trunk import export_trunk

    export_trunk(checkpoint, out, cut=cut, precisions=("fp32",), threads=2)
    return out


@pytest.fixture(scope="session")
def trunk5(checkpoint5, tmp_path_factory):
    """SPEC5 exported at the decoder1 cut, fp32 only."""
    return _export5(checkpoint5, tmp_path_factory.mktemp("trunk5"), "decoder1")


@pytest.fixture(scope="session")
def trunk5_pre(checkpoint5, tmp_path_factory):
    """SPEC5 exported at the pre-decoder1 cut (enc0 full resolution, dec0 half), fp32 only."""
    return _export5(checkpoint5, tmp_path_factory.mktemp("trunk5-pre"), "pre-decoder1")


@pytest.fixture(scope="session")
def engine5(trunk5, tmp_path_factory):
    """The tiny trunk (SPEC5: 64^3 windows at 5 mm, batch 1..4) fused with two linear probes (seeded weights):
    a real engine folder, as `edgeseg fuse` writes it."""
    import torch
    from edgeseg.export.adapter import save_adapter
    from edgeseg.export.fuse import fuse
    from edgeseg.runtime.artifacts.adapter import AdapterIO, AdapterManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest

    from edgeseg.adapters import build_adapter

    root = tmp_path_factory.mktemp("engine5")
    trunk = TrunkManifest.from_folder(trunk5)
    adapters = []
    for seed, organ in enumerate(("liver", "spleen")):
        torch.manual_seed(seed)
        save_adapter(build_adapter("lp", feature_size=trunk.feature_size), root / organ, AdapterManifest(
            adapter="lp", organ=organ, cut="decoder1", feature_size=trunk.feature_size, trunk_manifest_sha256=trunk.sha256,
            io=AdapterIO(tuple(trunk.io.outputs), "logits")))
        adapters.append(root / organ)
    fuse(trunk5, adapters, root / "engine", precisions=("fp32",), threads=2, log=lambda msg: None)
    return root / "engine"

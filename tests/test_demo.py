"""`edgeseg demo`: what it refuses before any stage runs, and its DICOM step on a tiny engine (the whole demo is the
README's main command, run by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseg.demo import run_demo
from edgeseg.runtime.errors import InputError


def test_the_torch_backend_is_refused_before_anything_is_written(tmp_path):
    """The predict stage runs the fused engine, which has no torch form: refuse at once, not after adapting."""
    out = tmp_path / "demo"
    with pytest.raises(InputError, match="no torch form") as e:
        run_demo(out, backend="torch")
    assert "--backend auto" in e.value.fix and not out.exists()


def test_unknown_or_repeated_organs_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "demo"
    for organs in (("kidney_left", "kidney_left"), ("heart",), ()):
        with pytest.raises(InputError, match="each must be a phantom organ"):
            run_demo(out, organs=organs)
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_engine(trunk5, phantoms5, tmp_path_factory):
    """A fused engine of the tiny test trunk and a liver adapter trained a few steps: the demo's engine in small."""
    from edgeseg.export.fuse import fuse
    from edgeseg.features import CacheConfig, build_cache
    from edgeseg.train.adapt import AdaptConfig, adapt

    support, _ = phantoms5
    work = tmp_path_factory.mktemp("demo-engine")
    build_cache(trunk5, support, "liver", work / "cache", CacheConfig(k=1, seed=0, backend="ort", threads=2, context=0),
                log=lambda m: None)
    adapt(work / "cache", work / "adapter", AdaptConfig(adapter="spatial", steps=12, crop=32, seed=0, threads=1))
    fuse(trunk5, [work / "adapter"], work / "engine", precisions=("fp32",), threads=2, log=lambda m: None)
    return work / "engine"


def test_the_dicom_step_segments_a_dicom_copy_of_the_real_ct_into_a_seg_with_the_niftis_masks(tiny_engine, tmp_path):
    pytest.importorskip("highdicom", reason="the demo's DICOM step needs pip install 'edgeseg[dicom]'")
    import nibabel as nib

    from edgeseg.assets import EXAMPLE_CT
    from edgeseg.demo import segment_dicom_copy
    from edgeseg.runtime.dicom import one_series
    from edgeseg.runtime.dicom.segread import read_seg_mask
    from edgeseg.runtime.engine import open_engine
    from edgeseg.runtime.predict import PredictOptions, predict_many

    lines: list[str] = []
    preds = tmp_path / "predictions"
    with open_engine(tiny_engine, backend="ort", threads=2) as engine:
        (nifti,) = predict_many(engine, [EXAMPLE_CT], preds, PredictOptions(force=True))
        first = segment_dicom_copy(engine, EXAMPLE_CT, tmp_path / "dicom", preds, nifti_case=nifti["case"],
                                   log=lines.append)
        again = segment_dicom_copy(engine, EXAMPLE_CT, tmp_path / "dicom", preds, log=lambda m: None)
    assert first["masks_equal_nifti"] is True and again["seg"] == first["seg"]  # stable UIDs: the same SEG path
    assert first["seg"].is_file() and first["case"].startswith("series1_example_ct_sm_")
    assert any(str(first["seg"]) in line and "masks equal the NIfTI's" in line for line in lines)
    series = one_series(first["series"])
    ct = nib.load(str(EXAMPLE_CT))
    assert series.shape == ct.shape and np.allclose(series.affine, ct.affine, atol=1e-4)
    mask = np.asarray(nib.load(str(preds / f"{nifti['case']}_liver.nii.gz")).dataobj)
    assert mask.any(), "the tiny engine finds some liver in the real CT (else the comparison proves little)"
    np.testing.assert_array_equal(read_seg_mask(first["seg"], series, "liver"), mask)
    assert first["read_seconds"] > 0 and json.loads(first["report"].read_text())["dicom"]["slices"] == ct.shape[2]

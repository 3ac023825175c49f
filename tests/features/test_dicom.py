"""`edgeseg cache` on supports in DICOM: phantom CTs written as DICOM series with their liver in a DICOM-SEG
give the cache that their NIfTI files give; a SEG of another series is refused, naming both."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need pip install 'edgeseg[dicom]'")
hd = pytest.importorskip("highdicom", reason="DICOM-SEG tests need pip install 'edgeseg[dicom]'")

from edgeseg.features import build_cache  # noqa: E402
from edgeseg.runtime.dicom import one_series  # noqa: E402
from edgeseg.runtime.dicom.seg import write_seg  # noqa: E402
from edgeseg.runtime.errors import InputError  # noqa: E402
from tests.features.conftest import arrays, config  # noqa: E402
from tests.runtime.dicom.writer import write_series  # noqa: E402

CASES = ("s0000", "s0001")


@pytest.fixture(scope="module")
def both(data, tmp_path_factory):
    """CSVs of two phantom supports: their NIfTI files, and the same scans as DICOM series (per-slice rescale,
    shuffled names) with a DICOM-SEG of liver, spleen and the left kidney each."""
    support, _ = data
    root = tmp_path_factory.mktemp("dicom-supports")
    nifti, dicom = ["case_id,image,label"], ["case_id,image,label"]
    for i, case in enumerate(CASES):
        img = nib.load(str(support / case / "ct.nii.gz"))
        write_series(root / case, np.asarray(img.dataobj), img.affine, series_number=i + 1, seed=i,
                     rescale=[(1.0, -1024.0), (0.5, -1000.0)])
        masks = {o: np.asarray(nib.load(str(support / case / "segmentations" / f"{o}.nii.gz")).dataobj).astype(np.uint8)
                 for o in ("spleen", "liver", "kidney_left")}
        write_seg(root / f"{case}_seg.dcm", one_series(root / case), masks, algorithm_version="test", engine_hash=None)
        nifti.append(f"{case},{support / case / 'ct.nii.gz'},{support / case / 'segmentations' / 'liver.nii.gz'}")
        dicom.append(f"{case},{root / case},{root / f'{case}_seg.dcm'}")
    (root / "nifti.csv").write_text("\n".join(nifti) + "\n")
    (root / "dicom.csv").write_text("\n".join(dicom) + "\n")
    return root


def test_a_dicom_series_with_its_seg_caches_what_its_nifti_caches(trunk_dir, both, tmp_path):
    made = {}
    for form in ("nifti", "dicom"):
        made[form] = build_cache(trunk_dir, both / f"{form}.csv", "liver", tmp_path / form, config(k=None),
                                 log=lambda m: None)
    a, b = arrays(tmp_path / "nifti" / "cases"), arrays(tmp_path / "dicom" / "cases")
    assert sorted(a) == sorted(b) and any(k.endswith("label.npy") for k in a) and any(k.endswith("features.npy") for k in a)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]), name  # the same voxels in, the same features out
    for cid in CASES:
        ma, mb = made["nifti"]["cases"][cid], made["dicom"]["cases"][cid]
        assert ma["organ_voxels"] == mb["organ_voxels"] > 0
        assert [r["box"] for r in ma["regions"]] == [r["box"] for r in mb["regions"]]
        assert mb["image"] == str(both / cid) and mb["label"] == str(both / f"{cid}_seg.dcm")
    # what the cache records of a DICOM support: paths and UIDs, never a patient attribute
    text = "\n".join(p.read_text() for p in (tmp_path / "dicom").rglob("*.json"))
    assert "Doe" not in text and "SECRET" not in text and "19510203" not in text


def test_a_seg_of_another_series_is_refused_naming_both(trunk_dir, both, tmp_path):
    (both / "swapped.csv").write_text(f"image,label\n{both / 's0000'},{both / 's0001_seg.dcm'}\n")
    with pytest.raises(InputError) as e:
        build_cache(trunk_dir, both / "swapped.csv", "liver", tmp_path / "out", config(k=None), log=lambda m: None)
    seg_series = pydicom.dcmread(both / "s0001_seg.dcm").ReferencedSeriesSequence[0].SeriesInstanceUID
    msg = str(e.value)
    assert f"a segmentation of series {seg_series}" in msg and one_series(both / "s0000").series_instance_uid in msg
    assert str(both / "s0001_seg.dcm") in msg
    assert not (tmp_path / "out" / "cache.json").exists()  # refused before a case: nothing left behind
    assert "pair the SEG with the series it was drawn on" in msg

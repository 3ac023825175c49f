"""Phantoms on disk (writing.py): TotalSegmentator layout, contents equal to the generator's, refusal
without force, LPS output."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from edgeseg.runtime.errors import InputError

from edgeseg.data.phantom import ORGANS, case_seed, generate_case, write_dataset


def load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def test_written_dataset_layout_and_contents(tmp_path):
    calls = []
    out = tmp_path / "phantoms"
    dirs = write_dataset(out, 2, seed=4, spacing=6, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 2), (2, 2)]
    assert [d.name for d in dirs] == ["s0000", "s0001"]
    summary = json.loads((out / "phantoms.json").read_text())
    assert summary["n"] == 2 and summary["seed"] == 4 and summary["organs"] == list(ORGANS)
    assert [c["case_id"] for c in summary["cases"]] == ["s0000", "s0001"]
    for i, d in enumerate(dirs):
        ct = load(d / "ct.nii.gz")
        assert ct.get_data_dtype() == np.int16
        meta = json.loads((d / "meta.json").read_text())
        assert meta["case_id"] == d.name and meta["index"] == i and meta["seed"] == case_seed(4, i)
        assert list(ct.shape) == meta["shape"] and np.allclose(ct.affine, meta["affine"])
        again = generate_case(case_seed(4, i), spacing=6)
        assert np.array_equal(np.asarray(ct.dataobj), again.ct)
        total = np.zeros(ct.shape, np.int32)
        for organ in ORGANS:
            seg = load(d / "segmentations" / f"{organ}.nii.gz")
            assert seg.get_data_dtype() == np.uint8
            assert seg.shape == ct.shape and np.array_equal(seg.affine, ct.affine)
            data = np.asarray(seg.dataobj)
            assert set(np.unique(data)) <= {0, 1}
            assert np.array_equal(data, again.labels[organ])
            assert (organ in meta["organs_present"]) == bool(data.any())
            total += data
        assert total.max() <= 1  # no voxel carries two labels
        assert not list(d.rglob(".*tmp*"))  # no leftovers of the atomic writes


def test_existing_output_is_refused_without_force(tmp_path):
    out = tmp_path / "ds"
    write_dataset(out, 1, seed=0, spacing=8)
    before = (out / "s0000" / "ct.nii.gz").read_bytes()
    with pytest.raises(InputError) as e:
        write_dataset(out, 1, seed=1, spacing=8)
    assert "--force" in e.value.fix
    assert (out / "s0000" / "ct.nii.gz").read_bytes() == before
    write_dataset(out, 1, seed=1, spacing=8, force=True)
    assert (out / "s0000" / "ct.nii.gz").read_bytes() != before
    assert json.loads((out / "phantoms.json").read_text())["seed"] == 1


def test_lps_output_is_the_same_anatomy(tmp_path):
    ras = write_dataset(tmp_path / "ras", 1, seed=3, spacing=6)[0]
    lps = write_dataset(tmp_path / "lps", 1, seed=3, spacing=6, orientation="LPS")[0]
    a, b = load(ras / "ct.nii.gz"), load(lps / "ct.nii.gz")
    assert nib.aff2axcodes(a.affine) == ("R", "A", "S")
    assert nib.aff2axcodes(b.affine) == ("L", "P", "S")
    assert not np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    ca, cb = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    assert np.allclose(ca.affine, cb.affine)
    assert np.array_equal(np.asarray(ca.dataobj), np.asarray(cb.dataobj))
    for organ in ("liver", "spleen"):
        sa, sb = load(ras / "segmentations" / f"{organ}.nii.gz"), load(lps / "segmentations" / f"{organ}.nii.gz")

        def centre(img):
            idx = np.argwhere(np.asarray(img.dataobj) > 0)
            return (img.affine @ np.append(idx.mean(0), 1.0))[:3]

        assert np.allclose(centre(sa), centre(sb), atol=1e-6)
    # Liver on the patient's right in world space, whatever the voxel order.
    liver = load(lps / "segmentations" / "liver.nii.gz")
    spleen = load(lps / "segmentations" / "spleen.nii.gz")
    xl = (liver.affine @ np.append(np.argwhere(np.asarray(liver.dataobj) > 0).mean(0), 1))[0]
    xs = (spleen.affine @ np.append(np.argwhere(np.asarray(spleen.dataobj) > 0).mean(0), 1))[0]
    assert xl > xs

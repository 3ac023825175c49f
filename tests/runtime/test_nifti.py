"""Reading scans: every bad file gets an error naming it and saying what to do; writing is atomic."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.nifti import load_scan, save_like

from tests.conftest import save_nifti

AFF = np.diag([1.5, 1.5, 2.0, 1.0])


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found") as e:
        load_scan(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in e.value.message and "fix:" in e.value.message


def test_not_a_nifti_name(tmp_path):
    p = tmp_path / "scan.dcm"
    p.write_bytes(b"DICM")
    with pytest.raises(InputError, match="not a NIfTI"):
        load_scan(p)


def test_truncated_gzip(tmp_path, real_ct):
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(real_ct.read_bytes()[:20000])
    with pytest.raises(InputError, match="corrupt or truncated") as e:
        load_scan(p)
    assert str(p) in e.value.message


def test_garbage_with_nifti_name(tmp_path):
    p = tmp_path / "junk.nii.gz"
    p.write_bytes(gzip.compress(b"hello, not a header" * 10))
    with pytest.raises(InputError, match="cannot be read as NIfTI"):
        load_scan(p)


@pytest.mark.parametrize("shape,ok", [((6, 5, 4), True), ((6, 5, 4, 1), True), ((6, 5), False), ((6, 5, 4, 3), False)])
def test_dimensionality(tmp_path, shape, ok):
    p = save_nifti(tmp_path / "s.nii.gz", np.zeros(shape, np.int16), AFF)
    if ok:
        assert load_scan(p, hu_check=False).shape == (6, 5, 4)
    else:
        with pytest.raises(InputError, match="3D volume is needed"):
            load_scan(p)


def test_nan_voxels_are_refused(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="1 NaN/Inf voxels"):
        load_scan(save_nifti(tmp_path / "nan.nii.gz", data, AFF))


def test_scaled_integers_are_read_in_hu(tmp_path):
    img = nib.Nifti1Image(np.array([[[0, 10]]], np.int16), AFF)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    scan = load_scan(tmp_path / "scaled.nii.gz", hu_check=False)  # two voxels: reading, not plausibility
    assert scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data.ravel(), [-1024.0, -1004.0])


def test_zero_spacing_is_refused(tmp_path):
    hdr = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), AFF).header.copy()
    hdr["srow_z"] = [0.0, 0.0, 0.0, 5.0]  # a collapsed slice axis, as some broken exporters write
    hdr["qform_code"] = 0
    hdr["sform_code"] = 1
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None, header=hdr), str(tmp_path / "z.nii.gz"))
    with pytest.raises(InputError, match="implausible"):
        load_scan(tmp_path / "z.nii.gz")


def test_save_like_refuses_overwrite_and_leaves_no_temporary(tmp_path, real_ct):
    scan = load_scan(real_ct)
    mask = np.zeros(scan.shape, np.uint8)
    out = save_like(mask, scan, tmp_path / "mask.nii.gz")
    with pytest.raises(InputError, match="--force"):
        save_like(mask, scan, out)
    mask[0, 0, 0] = 1
    save_like(mask, scan, out, force=True)
    assert np.asarray(nib.load(str(out)).dataobj)[0, 0, 0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


# --- the bad-input matrix (docs/faults.md) ---------------------------------------------------------


def test_corrupt_gzip_names_the_file_and_the_fix(tmp_path, real_ct):
    raw = bytearray(real_ct.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the compressed stream: a bad block or CRC
    p = tmp_path / "flipped.nii.gz"
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError) as e:
        load_scan(p)
    assert str(p) in e.value.message and "corrupt or truncated" in e.value.message and "copy it again" in e.value.fix


def test_4d_series_needs_a_volume_index(tmp_path):
    data = np.stack([np.full((6, 5, 4), 10 * t, np.int16) for t in range(3)], axis=-1)
    p = save_nifti(tmp_path / "series.nii.gz", data, AFF)
    with pytest.raises(InputError) as e:
        load_scan(p)
    assert str(p) in e.value.message and "4D series of 3 volumes" in e.value.problem
    assert "--volume INDEX (0 to 2)" in e.value.fix
    scan = load_scan(p, volume=2, hu_check=False)
    assert scan.shape == (6, 5, 4) and scan.data.dtype == np.float32 and np.all(scan.data == 20)
    np.testing.assert_array_equal(scan.affine, nib.load(str(p)).affine)
    with pytest.raises(InputError, match="--volume 3 is out of range: the scan holds 3 volumes") as e:
        load_scan(p, volume=3)
    assert "--volume 0 to 2" in e.value.fix


def test_volume_index_on_a_3d_scan_is_refused_unless_0(tmp_path):
    p = save_nifti(tmp_path / "s.nii.gz", np.zeros((6, 5, 4), np.int16), AFF)
    assert load_scan(p, volume=0, hu_check=False).shape == (6, 5, 4)
    with pytest.raises(InputError, match="single 3D volume.*--volume 1 does not exist") as e:
        load_scan(p, volume=1)
    assert "leave --volume out" in e.value.fix


def test_singleton_axes_are_read_and_zero_sized_axes_refused(tmp_path):
    p = save_nifti(tmp_path / "slab.nii.gz", np.ones((1, 5, 4), np.int16), AFF)
    assert load_scan(p, hu_check=False).shape == (1, 5, 4)
    p = tmp_path / "empty.nii"  # an image with no slices, as a failed export writes
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 0), np.int16), AFF), str(p))
    with pytest.raises(InputError, match="empty axis") as e:
        load_scan(p)
    assert str(p) in e.value.message and e.value.fix


def test_inf_voxels_are_refused_and_counted(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[0, 0, :2] = [np.inf, -np.inf]
    with pytest.raises(InputError, match="2 NaN/Inf voxels") as e:
        load_scan(save_nifti(tmp_path / "inf.nii.gz", data, AFF))
    assert "-1024 HU" in e.value.fix


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_every_stored_dtype_is_read_as_float32_hu_exactly(tmp_path, dtype):
    values = np.array([0, 1, 100, 127], dtype=dtype).reshape(1, 2, 2)
    scan = load_scan(save_nifti(tmp_path / f"{np.dtype(dtype).name}.nii.gz", values, AFF), hu_check=False)
    assert scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data, values.astype(np.float32))


@pytest.mark.parametrize("spacing", [0.0001, 250.0])
def test_extreme_spacing_is_refused(tmp_path, spacing):
    p = save_nifti(tmp_path / "s.nii.gz", np.zeros((4, 4, 4), np.int16), np.diag([1.0, 1.0, spacing, 1.0]))
    with pytest.raises(InputError, match="implausible") as e:
        load_scan(p)
    assert str(p) in e.value.message and "between 0.001 and 100 mm" in e.value.fix


def test_label_with_fractional_values_is_refused(tmp_path):
    p = save_nifti(tmp_path / "lab.nii.gz", np.full((3, 3, 3), 0.5, np.float32), AFF)
    with pytest.raises(InputError, match="non-integer") as e:
        load_scan(p, label=True)
    assert str(p) in e.value.message


def test_a_zero_voxel_size_in_pixdim_is_refused_not_read_as_1_mm(tmp_path):
    import struct

    p = tmp_path / "zero.nii"
    nib.save(nib.Nifti1Image(_ct_like(), np.diag([0.8, 0.7, 2.0, 1.0])), str(p))
    raw = bytearray(p.read_bytes())
    raw[76 + 4 * 2:76 + 4 * 3] = struct.pack("<f", 0.0)  # pixdim[2] = 0, as another tool wrote it
    p.write_bytes(bytes(raw))
    assert nib.load(str(p)).header.get_zooms()[1] == 1.0  # what nibabel alone would have used
    with pytest.raises(InputError, match="zero or non-finite voxel size") as e:
        load_scan(p)
    assert str(p) in e.value.message and "pixdim" in e.value.fix


def _ct_like(dtype=np.int16, offset=0.0, scale=1.0, shape=(16, 16, 8)):
    """Air around a body of soft tissue and bone, as HU, then stored as `dtype` * scale + offset."""
    hu = np.full(shape, -1000.0)
    hu[3:13, 3:13] = 40.0
    hu[7:9, 7:9] = 700.0
    hu += np.random.default_rng(0).normal(0, 10, shape)
    return (hu * scale + offset).astype(dtype)


@pytest.mark.parametrize("name,data,expect", [
    ("uint8", np.clip((_ct_like(np.float64) + 1000) / 8, 0, 255).astype(np.uint8), "8-bit display values"),
    ("stored+1024", _ct_like(np.uint16, offset=1024.0), "without their rescale"),
    ("normalised", ((_ct_like(np.float64) + 1000) / 1700).astype(np.float32), "normalised or mis-scaled"),
    ("mask", (_ct_like(np.float64) > 0).astype(np.uint8), "a mask or label map"),
    ("tiny slope", _ct_like(np.float64, scale=1e-30).astype(np.float32), "normalised or mis-scaled"),
])
def test_intensities_that_cannot_be_hounsfield_units_are_refused_with_what_they_look_like(tmp_path, name, data, expect):
    p = save_nifti(tmp_path / f"{name}.nii.gz", data, AFF)
    with pytest.raises(InputError, match="does not look like a CT in Hounsfield units") as e:
        load_scan(p)
    assert expect in e.value.problem and "--no-hu-check" in e.value.fix
    assert load_scan(p, hu_check=False).shape == data.shape  # the user who knows can override


def test_a_real_ct_and_a_phantom_pass_the_hounsfield_check(real_ct, tmp_path):
    assert load_scan(real_ct).data.min() <= -1000
    assert load_scan(save_nifti(tmp_path / "ct.nii.gz", _ct_like(), AFF)).shape == (16, 16, 8)


@pytest.mark.parametrize("name,affine,why", [
    ("shear", np.array([[1.0, np.tan(np.radians(30)), 0, 0], [0, 1, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]]),
     "meet at 60.00 degrees"),
    ("degenerate", np.array([[1.0, 1.0, 0, 0], [0, 0.001, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]]), "meet at 0.06 degrees"),
])
def test_a_sheared_or_degenerate_grid_is_refused(tmp_path, name, affine, why):
    p = save_nifti(tmp_path / f"{name}.nii.gz", _ct_like(), affine)
    with pytest.raises(InputError, match="not 90: a sheared or degenerate grid") as e:
        load_scan(p)
    assert why in e.value.problem and "dcm2niix" in e.value.fix


def test_qform_and_sform_that_place_the_volume_differently_are_refused(tmp_path):
    sform = np.diag([0.8, 0.8, 2.0, 1.0])
    qform = sform.copy()
    qform[:3, 3] = (0.0, 0.0, 5.0)  # 5 mm apart
    img = nib.Nifti1Image(_ct_like(), sform)
    img.header.set_sform(sform, code=1)
    img.header.set_qform(qform, code=1)
    p = tmp_path / "qs.nii.gz"
    nib.save(img, str(p))
    with pytest.raises(InputError, match="qform and sform disagree: they place the volume up to 5.0 mm apart"):
        load_scan(p)
    img.header.set_qform(sform, code=1)  # agreeing (up to rounding): fine
    nib.save(img, str(p))
    assert load_scan(p).shape == (16, 16, 8)


def test_compression_that_contradicts_the_file_name_gets_a_precise_message(tmp_path):
    import gzip

    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(_ct_like(), AFF), str(plain))
    renamed = tmp_path / "renamed.nii.gz"
    renamed.write_bytes(plain.read_bytes())
    with pytest.raises(InputError, match="named .nii.gz but is not gzip-compressed") as e:
        load_scan(renamed)
    assert "rename it to .nii" in e.value.fix
    zipped = tmp_path / "zipped.nii"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(InputError, match="gzip-compressed but named .nii") as e:
        load_scan(zipped)
    assert "rename it to .nii.gz" in e.value.fix


def test_an_implausible_scl_slope_is_refused_from_the_header(tmp_path):
    import struct

    p = tmp_path / "slope.nii"
    nib.save(nib.Nifti1Image(_ct_like(), AFF), str(p))
    raw = bytearray(p.read_bytes())
    raw[112:116] = struct.pack("<f", 1e36)  # scl_slope, as a broken converter wrote it
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="scl_slope 1e\\+36 is not a plausible intensity scaling"):
        load_scan(p)

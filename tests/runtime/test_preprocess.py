"""Preprocessing: model grid geometry, HU window, and the exact way back to the scan's grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.nifti import Scan, load_scan, save_like
from edgeseg.runtime.preprocess import (
    GridTransform,
    PreprocessSpec,
    mask_to_input_grid,
    plan_grid,
    preprocess,
    to_input_grid,
    to_model_grid,
    window_hu,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ellipsoid_world, save_nifti

SPEC = PreprocessSpec()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _affine(spacing, axcodes="RAS", origin=(-100.0, -80.0, -60.0)) -> np.ndarray:
    """An axis-aligned affine with these voxel sizes whose voxel axes point along `axcodes`."""
    ornt = nib.orientations.axcodes2ornt(axcodes)
    a = np.zeros((4, 4))
    for i, (ax, flip) in enumerate(ornt):
        a[int(ax), i] = flip * spacing[i]
    a[:3, 3] = origin
    a[3, 3] = 1
    return a


@pytest.mark.parametrize(
    "spacing,axcodes",
    [((0.8, 0.8, 3.0), "RAS"), ((0.8, 0.8, 3.0), "LPS"), ((3.0, 0.7, 0.9), "SLP"), ((1.5, 1.5, 1.5), "RAS")],
)
def test_label_round_trip_keeps_the_organ(tmp_path, spacing, axcodes):
    shape = (96, 80, 24) if axcodes != "SLP" else (24, 96, 80)
    affine = _affine(spacing, axcodes)
    centre = affine[:3, :3] @ (np.asarray(shape) / 2) + affine[:3, 3]
    label = ellipsoid_world(shape, affine, centre, (25.0, 18.0, 22.0))
    path = save_nifti(tmp_path / "label.nii.gz", label, affine)
    scan = load_scan(path, label=True)
    t = plan_grid(scan.shape, scan.affine, SPEC)
    on_model = to_model_grid(scan.data, t, order=0)
    # The model grid is RAS at exactly the spec's spacing, whatever the input's orientation.
    assert nib.aff2axcodes(np.asarray(t.model_affine)) == ("R", "A", "S")
    assert np.allclose(t.model_spacing, SPEC.spacing)
    back = mask_to_input_grid(on_model, t)
    assert back.shape == label.shape and back.dtype == np.uint8
    assert dice(back, label) >= 0.95


def test_model_grid_is_the_same_physical_grid_for_ras_and_lps_copies(tmp_path):
    shape, spacing = (64, 56, 20), (0.8, 0.8, 3.0)
    ras = _affine(spacing, "RAS", origin=(-25.2, -22.0, -28.5))
    # The same voxels stored in LPS order: flip x and y, move the origin to the opposite corner.
    lps = ras @ nib.orientations.inv_ornt_aff(np.array([[0, -1], [1, -1], [2, 1]]), shape)
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 60, size=shape).astype(np.float32)
    hu_lps = hu[::-1, ::-1, :].copy()
    a = preprocess(Scan(tmp_path, hu, ras, nib.Nifti1Header()), SPEC)
    b = preprocess(Scan(tmp_path, hu_lps, lps, nib.Nifti1Header()), SPEC)
    assert np.allclose(a.transform.model_affine, b.transform.model_affine)
    np.testing.assert_allclose(a.image, b.image, atol=1e-6)


def test_real_ct_goes_through_and_comes_back_with_its_exact_header(tmp_path, real_ct, real_body):
    prepared = preprocess(real_ct, SPEC, label=real_body)
    # 122 x 101 x 30 at 3 mm -> 243 x 201 x 59 at 1.5 mm (first voxel kept, exact spacing).
    assert prepared.image.shape == (243, 201, 59)
    assert prepared.image.dtype == np.float32
    assert 0.0 <= prepared.image.min() and prepared.image.max() <= 1.0
    mask = mask_to_input_grid(prepared.label, prepared.transform)
    out = save_like(mask, prepared.source, tmp_path / "body_back.nii.gz")
    src, got = nib.load(str(real_ct)), nib.load(str(out))
    assert got.shape == src.shape and got.get_data_dtype() == np.uint8
    assert np.array_equal(got.affine, src.affine)
    for field in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                  "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units"):
        assert np.array_equal(got.header[field], src.header[field]), field
    # 3 mm -> 1.5 mm -> 3 mm with nearest then linear is lossless for the body mask.
    assert dice(np.asarray(got.dataobj), np.asarray(nib.load(str(real_body)).dataobj)) == 1.0


def test_hu_window_maps_to_unit_interval():
    hu = np.array([-1000, -175, 37.5, 250, 3000], dtype=np.float32)
    np.testing.assert_allclose(window_hu(hu, SPEC), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    assert window_hu(hu.astype(np.int16), SPEC).dtype == np.float32


def test_image_resampling_is_linear_and_exact_on_coinciding_voxels(tmp_path):
    shape, affine = (10, 9, 8), _affine((3.0, 3.0, 3.0))
    ramp = np.indices(shape)[0].astype(np.float32) * 10.0  # linear along x: linear interpolation is exact
    t = plan_grid(shape, affine, SPEC)
    on_model = to_model_grid(ramp, t, order=1)
    assert on_model.shape == (19, 17, 15)
    np.testing.assert_allclose(on_model[:, 0, 0], np.arange(19) * 5.0, atol=1e-4)
    np.testing.assert_allclose(to_input_grid(on_model, t), ramp, atol=1e-4)


def test_grid_transform_survives_json():
    t = plan_grid((50, 40, 30), _affine((0.8, 0.8, 2.5), "LPS"), SPEC)
    again = GridTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t


def test_label_on_another_grid_is_refused_with_both_files_named(tmp_path):
    affine = _affine((1.5, 1.5, 1.5))
    ct = np.linspace(-1000, 500, 512).reshape(8, 8, 8).astype(np.int16)
    img = save_nifti(tmp_path / "ct.nii.gz", ct, affine)
    lab = save_nifti(tmp_path / "lab.nii.gz", np.zeros((8, 8, 9), np.uint8), affine)
    with pytest.raises(InputError) as e:
        preprocess(img, SPEC, label=lab)
    assert "lab.nii.gz" in e.value.message and "ct.nii.gz" in e.value.message and "(8, 8, 9)" in e.value.message
    shifted = affine.copy()
    shifted[0, 3] += 2.0
    lab2 = save_nifti(tmp_path / "lab2.nii.gz", np.zeros((8, 8, 8), np.uint8), shifted)
    with pytest.raises(InputError, match="affine differs"):
        preprocess(img, SPEC, label=lab2)


@pytest.mark.parametrize("window", [(48, 48, 48), (96, 96, 80), (96, 96)])
def test_spec_refuses_windows_swinunetr_cannot_run(window):
    with pytest.raises(InputError, match="multiple of 32"):
        PreprocessSpec(window=window)


def test_spec_hash_changes_with_any_field():
    assert PreprocessSpec().sha256() == PreprocessSpec().sha256()
    assert PreprocessSpec().sha256() != PreprocessSpec(spacing=(1.5, 1.5, 2.0)).sha256()
    assert PreprocessSpec.from_dict(json.loads(json.dumps(SPEC.to_dict()))) == SPEC


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(*[st.integers(1, 12)] * 3),
    spacing=st.tuples(*[st.sampled_from([0.5, 0.8, 1.0, 1.5, 2.5, 5.0])] * 3),
    axcodes=st.sampled_from(["RAS", "LPS", "LAS", "RPI", "PIR", "SLA"]),
    angle=st.floats(-0.3, 0.3),
)
def test_any_grid_comes_back_to_its_exact_shape(shape, spacing, axcodes, angle):
    affine = _affine(spacing, axcodes)
    c, s = np.cos(angle), np.sin(angle)
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) @ affine
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]  # oblique in-plane
    t = plan_grid(shape, affine, SPEC)
    mask = np.ones(t.model_shape, np.float32)
    back = mask_to_input_grid(mask, t)
    assert back.shape == tuple(shape)
    assert back.all()


def _rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(*[st.integers(1, 10)] * 3),
    spacing=st.tuples(*[st.floats(0.3, 12.0)] * 3),
    axes=st.permutations([0, 1, 2]),
    flips=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    angles=st.tuples(*[st.floats(-0.5, 0.5)] * 3),
    origin=st.tuples(*[st.floats(-300.0, 300.0)] * 3),
    dtype=st.sampled_from(["uint8", "int16", "int32", "float32", "float64"]),
    scaling=st.sampled_from([(1.0, 0.0), (2.0, -1024.0), (0.5, 0.0)]),
    codes=st.sampled_from([(1, 1), (0, 1), (1, 0), (2, 4)]),
    kind=st.sampled_from(["nifti1", "nifti2"]),
    suffix=st.sampled_from([".nii", ".nii.gz"]),
)
def test_any_nifti_header_comes_back_with_its_exact_shape_and_affine(shape, spacing, axes, flips, angles, origin,
                                                                     dtype, scaling, codes, kind, suffix):
    """Preprocess -> model grid -> back -> written: the input's exact shape, affine and geometry header fields,
    for any orientation (all 48 axis permutations and flips), oblique rotation, spacing, dtype, scaling,
    qform/sform combination and NIfTI version."""
    import tempfile
    from pathlib import Path

    perm = np.zeros((3, 3))
    for i, (ax, flip) in enumerate(zip(axes, flips)):
        perm[ax, i] = flip
    affine = np.eye(4)
    affine[:3, :3] = _rotation(angles) @ perm @ np.diag(spacing)
    affine[:3, 3] = origin
    rng = np.random.default_rng(0)
    data = rng.integers(0, 120, size=shape).astype(dtype)
    cls = nib.Nifti1Image if kind == "nifti1" else nib.Nifti2Image
    img = cls(data, affine)
    qcode, scode = codes
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    if np.issubdtype(np.dtype(dtype), np.integer):
        img.header.set_slope_inter(*scaling)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"scan{suffix}"
        nib.save(img, str(src))
        original = nib.load(str(src))
        scan = load_scan(src, hu_check=False)  # random integers in any dtype: the geometry is the point here
        prepared = preprocess(scan, SPEC)
        t = prepared.transform
        assert nib.aff2axcodes(np.asarray(t.model_affine)) == ("R", "A", "S")
        np.testing.assert_allclose(t.model_spacing, SPEC.spacing, rtol=1e-6)
        mask = mask_to_input_grid((prepared.image > 0.5).astype(np.float32), t)
        assert mask.shape == tuple(shape) and to_input_grid(prepared.image, t).shape == tuple(shape)
        out = save_like(mask, scan, Path(tmp) / f"mask{suffix}")
        back = nib.load(str(out))
        assert back.shape == original.shape[:3] == tuple(shape)
        assert np.array_equal(back.affine, original.affine)  # bit for bit
        for field in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                      "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim"):
            assert np.array_equal(back.header[field], original.header[field]), field
        assert type(back) is type(original)

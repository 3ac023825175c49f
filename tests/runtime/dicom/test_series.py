"""DICOM series in: pydicom's own test series, and series written here from the shipped CT and a phantom.

Every geometry claim is checked against the NIfTI the series was written from: same voxels, same
affine (to the micron the DS text keeps), whatever the file names, the InstanceNumbers or the rescale.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need pip install 'edgeseg[dicom]'")

from pydicom.data import get_testdata_file, get_testdata_files  # noqa: E402

from edgeseg.runtime.dicom import find_series, load_series  # noqa: E402
from edgeseg.runtime.errors import InputError  # noqa: E402
from edgeseg.runtime.preprocess import PreprocessSpec, plan_grid, preprocess  # noqa: E402
from tests.runtime.dicom.writer import write_scout, write_series  # noqa: E402


def bundled_folder(pattern: str) -> Path:
    return Path(get_testdata_files(pattern)[0]).parent


def copy_of(files, dest: Path) -> Path:
    dest.mkdir()
    for f in files:
        shutil.copy(f, dest / Path(f).name)
    return dest


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The shipped real CT (122 x 101 x 30, 3 mm) as data and affine."""
    from edgeseg.assets import EXAMPLE_CT

    img = nib.load(str(EXAMPLE_CT))
    return np.asarray(img.dataobj).astype(np.int16), img.affine, EXAMPLE_CT


# --- pydicom's bundled series ----------------------------------------------------------------------------------
def test_bundled_series_whose_file_names_run_against_z_is_sorted_along_the_normal(tmp_path):
    folder = copy_of(get_testdata_files("dicomdirtests/98892001/CT5N/*"), tmp_path / "ct5n")
    (series,) = find_series(folder).series
    z = [float(pydicom.dcmread(s.file).ImagePositionPatient[2]) for s in series.slices]
    assert z == sorted(z) and [s.file.name for s in series.slices] == ["3353", "3023", "2693", "2392", "2062"]
    scan = load_series(series, hu_check=False)
    for k, s in enumerate(series.slices):
        ds = pydicom.dcmread(s.file)
        hu = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(scan.data[:, :, k], hu)
    # by hand from the first slice's header: IPP (-72.2, -143, -1.2375) LPS, spacing 0.488281, step 2.5
    np.testing.assert_allclose(scan.affine, [[-0.488281, 0, 0, 72.2], [0, -0.488281, 0, 143.0],
                                             [0, 0, 2.5, -1.2375], [0, 0, 0, 1]], atol=1e-5)


def test_bundled_series_with_a_z_gap_is_refused_as_missing_slices():
    folder = bundled_folder("dicomdirtests/77654033/CT2/*")
    with pytest.raises(InputError, match="slice\\(s\\) missing") as e:
        find_series(folder)
    assert "Routine Brain" in str(e.value) and "UID 1.3.6.1.4.1.5962" in str(e.value) and e.value.fix


def test_a_single_image_is_too_short_to_segment(tmp_path):
    folder = copy_of([get_testdata_file("CT_small.dcm")], tmp_path / "one")
    with pytest.raises(InputError, match="too short"):
        find_series(folder)


# --- series written here -------------------------------------------------------------------------------------
def test_a_series_of_the_real_ct_reads_back_as_its_nifti_whatever_the_names_and_rescale(real, tmp_path):
    data, affine, path = real
    # per-slice rescale that differs (slopes 1, 0.5, 0.25 and intercepts), shuffled names, InstanceNumber reversed
    write_series(tmp_path / "s", data, affine, rescale=[(1.0, -1024.0), (0.5, -1000.0), (0.25, -2000.0)])
    (series,) = find_series(tmp_path / "s").series
    scan = load_series(series)
    assert scan.shape == data.shape and scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data, data.astype(np.float32))
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)
    # the same GridTransform and model-grid image as the NIfTI
    spec = PreprocessSpec()
    t_dicom, t_nifti = plan_grid(scan.shape, scan.affine, spec), plan_grid(data.shape, affine, spec)
    assert t_dicom.model_shape == t_nifti.model_shape and t_dicom.ornt == t_nifti.ornt
    np.testing.assert_allclose(preprocess(scan, spec).image, preprocess(path, spec).image, atol=1e-5)
    # the header written for the outputs holds the same grid
    np.testing.assert_allclose(scan.header.get_sform(), affine, atol=1e-5)


def test_an_lps_ordered_and_an_oblique_series_keep_their_place_in_the_patient(real, tmp_path):
    data, affine, _ = real
    # LPS voxel order: x and y flipped in the voxels, the affine says so; the world is unchanged
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    lps_affine = affine @ flip
    write_series(tmp_path / "lps", data[::-1, ::-1], lps_affine)
    scan = load_series(find_series(tmp_path / "lps").series[0])
    np.testing.assert_allclose(scan.affine, lps_affine, atol=1e-5)
    np.testing.assert_array_equal(scan.data, data[::-1, ::-1])
    # oblique: rotated 15 degrees about z; a voxel's world position is the NIfTI's, rotated
    a = np.radians(15)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    write_series(tmp_path / "obl", data, rot @ affine)
    scan = load_series(find_series(tmp_path / "obl").series[0])
    np.testing.assert_allclose(scan.affine, rot @ affine, atol=1e-5)
    np.testing.assert_array_equal(scan.data, data)


def test_a_series_stored_against_its_normal_is_read_along_it(real, tmp_path):
    data, affine, _ = real
    # k running inferior: the slice normal (row x column) still points superior, so k comes back reversed
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, data.shape[2] - 1
    write_series(tmp_path / "down", data[:, :, ::-1], affine @ flip)
    scan = load_series(find_series(tmp_path / "down").series[0])
    np.testing.assert_array_equal(scan.data, data)
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)


def test_several_series_and_a_scout_in_one_folder_tree(real, tmp_path):
    data, affine, _ = real
    root = tmp_path / "study"
    small = data[:40, :30, :8]
    files_a = write_series(root, small, affine, series_number=2, description="venous", prefix="a")
    ds_a = pydicom.dcmread(files_a[0])
    write_series(root / "sub", small + 10, affine, series_number=3, description="arterial", prefix="b")
    write_scout(root, series_uid=ds_a.SeriesInstanceUID, study_uid=ds_a.StudyInstanceUID, name="scout_in_series.dcm")
    write_scout(root / "sub", series_number=1)
    write_series(root / "mr", small, affine, series_number=9, modality="MR", prefix="m")
    (root / "notes.txt").write_text("not dicom")
    found = find_series(root)
    assert sorted(s.series_description for s in found.series) == ["arterial", "venous"]
    assert all(s.shape == small.shape for s in found.series)
    skipped = "\n".join(found.skipped)
    assert "1 localizer/scout image(s) skipped" in skipped and "MR series, not CT, skipped" in skipped
    names = {s.series_description: s.case_name for s in found.series}
    assert names["venous"].startswith("series2_venous_") and len(names["venous"].rsplit("_", 1)[1]) == 8
    assert find_series(root).series[0].case_name == found.series[0].case_name  # stable across runs
    for s in found.series:
        np.testing.assert_array_equal(load_series(s).data, small + (10 if s.series_description == "arterial" else 0))


def test_only_other_modalities_is_refused(real, tmp_path):
    data, affine, _ = real
    write_series(tmp_path / "mr", data[:20, :20, :5], affine, modality="MR")
    with pytest.raises(InputError, match="no CT series, only 1 MR series"):
        find_series(tmp_path / "mr")


@pytest.mark.parametrize("fault, match", [
    (dict(tilt_mm=0.2), "do not stack along their normal"),
    (dict(drop=4), "about 1 slice\\(s\\) missing"),
    (dict(duplicate=3), "duplicate slice position"),
])
def test_tilt_missing_and_duplicate_slices_are_refused_naming_the_series(real, tmp_path, fault, match):
    data, affine, _ = real
    write_series(tmp_path / "bad", data[:30, :30, :10], affine, series_number=7, description="bad one", **fault)
    with pytest.raises(InputError, match=match) as e:
        find_series(tmp_path / "bad")
    assert "series 7 'bad one'" in str(e.value) and e.value.exit_code == 2


def test_a_compressed_series_reads_with_its_decoder_and_is_refused_without(real, tmp_path):
    data, affine, _ = real
    small = data[:30, :30, :6]
    write_series(tmp_path / "rle", small, affine, compress=pydicom.uid.RLELossless)
    scan = load_series(find_series(tmp_path / "rle").series[0])
    np.testing.assert_array_equal(scan.data, small)
    # JPEG Lossless has no decoder here (python-gdcm is left out): refused from the header, naming the package
    files = write_series(tmp_path / "jpl", small, affine)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8not decoded\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)
    from pydicom.pixels import get_decoder

    if get_decoder(pydicom.uid.JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    with pytest.raises(InputError, match="no decoder for it is installed") as e:
        find_series(tmp_path / "jpl")
    assert "python-gdcm" in e.value.fix


def test_an_enhanced_multiframe_ct_reads_as_its_single_frame_series(real, tmp_path):
    hd = pytest.importorskip("highdicom")
    data, affine, _ = real
    small = data[:40, :30, :8]
    files = write_series(tmp_path / "single", small, affine, rescale=[(1.0, -1024.0)])
    legacy = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=pydicom.uid.generate_uid(), series_number=5,
        sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    (tmp_path / "multi").mkdir()
    legacy.save_as(tmp_path / "multi" / "enhanced.dcm")
    (series,) = find_series(tmp_path / "multi").series
    assert len(series.files) == 1 and len(series.slices) == 8 and {s.frame for s in series.slices} == set(range(8))
    scan = load_series(series)
    np.testing.assert_array_equal(scan.data, small)
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)


def test_without_pydicom_reading_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_pydicom(name, *a, **k):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError("No module named 'pydicom'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    with pytest.raises(InputError, match="needs pydicom") as e:
        find_series(tmp_path)
    assert e.value.fix == "pip install 'edgeseg[dicom]'"

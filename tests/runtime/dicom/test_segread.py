"""DICOM-SEG in: an organ's segment, picked by its code or label, mapped onto the series it was drawn on by the
instances its frames reference or by their positions; a SEG of another series or Frame of Reference refused."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need pip install 'edgeseg[dicom]'")
hd = pytest.importorskip("highdicom", reason="DICOM-SEG tests need pip install 'edgeseg[dicom]'")

from edgeseg.runtime.dicom import find_series, one_series  # noqa: E402
from edgeseg.runtime.dicom.seg import write_seg  # noqa: E402
from edgeseg.runtime.dicom.segread import read_seg_mask  # noqa: E402
from edgeseg.runtime.errors import InputError  # noqa: E402
from tests.runtime.dicom.writer import write_series  # noqa: E402


@pytest.fixture
def drawn(tmp_path):
    """A 10-slice series of the real CT and a SEG of it with three segments (two kidneys share one code)."""
    from edgeseg.assets import EXAMPLE_CT

    img = nib.load(str(EXAMPLE_CT))
    data = np.asarray(img.dataobj)[:50, :40, :10]
    files = write_series(tmp_path / "s", data, img.affine, rescale=[(1.0, -1024.0), (0.5, -1000.0)])
    (series,) = find_series(tmp_path / "s").series
    masks = {name: np.zeros(series.shape, np.uint8) for name in ("kidney_right", "liver", "kidney_left")}
    masks["liver"][10:20, 5:30, 2:5] = 1
    masks["liver"][3:5, 3:5, 0] = 1  # slice 0 has a frame
    masks["kidney_left"][30:40, 20:25, 6] = 1
    masks["kidney_right"][30:40, 5:10, 4:7] = 1
    seg = write_seg(tmp_path / "seg.dcm", series, masks, algorithm_version="1", engine_hash=None)
    return series, masks, seg, files, data, img.affine


def test_the_segment_of_an_organ_is_its_code_and_side_and_lands_on_the_series_voxels(drawn):
    series, masks, seg, *_ = drawn
    for organ in masks:
        np.testing.assert_array_equal(read_seg_mask(seg, series, organ), masks[organ])
    # by label when the code does not say, by number when the CSV gives one
    ds = pydicom.dcmread(seg)
    ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue = "27925004"  # nipple: a wrong code
    ds.SegmentSequence[1].SegmentLabel = "Liver"
    ds.save_as(seg.with_name("relabelled.dcm"))
    np.testing.assert_array_equal(read_seg_mask(seg.with_name("relabelled.dcm"), series, "liver"), masks["liver"])
    np.testing.assert_array_equal(read_seg_mask(seg, series, "anything", segment_number=3), masks["kidney_left"])
    with pytest.raises(InputError) as e:
        read_seg_mask(seg, series, "spleen")
    msg = str(e.value)
    assert "no segment of organ 'spleen'" in msg and "SNOMED CT 78961009" in msg and str(seg) in msg
    assert "#3 'kidney_left' (SCT 64033007 Kidney, left)" in msg and "label_value" in msg
    with pytest.raises(InputError, match="no segment number 7"):
        read_seg_mask(seg, series, "liver", segment_number=7)
    ds = pydicom.dcmread(seg)
    for item in ds.SegmentSequence:
        item.SegmentLabel = "kidney"
        item.SegmentedPropertyTypeCodeSequence[0].pop("SegmentedPropertyTypeModifierCodeSequence", None)
    ds.save_as(seg.with_name("sideless.dcm"))
    with pytest.raises(InputError, match="has 3 segments of organ 'kidney'"):
        read_seg_mask(seg.with_name("sideless.dcm"), series, "kidney")


def test_frames_without_source_references_are_placed_by_their_positions(drawn, tmp_path):
    series, masks, seg, *_ = drawn
    ds = pydicom.dcmread(seg)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    ds.save_as(tmp_path / "no_refs.dcm")
    for organ in masks:
        np.testing.assert_array_equal(read_seg_mask(tmp_path / "no_refs.dcm", series, organ), masks[organ])
    # a frame moved by half a pixel lies on no voxel of the series: refused, not rounded
    frame = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    frame.ImagePositionPatient = [float(v) + d for v, d in zip(frame.ImagePositionPatient, (1.5, 0, 0))]
    ds.save_as(tmp_path / "moved.dcm")
    with pytest.raises(InputError, match="cannot be mapped onto the series|do not lie on the voxel grid"):
        read_seg_mask(tmp_path / "moved.dcm", series, "liver")


def test_a_seg_of_another_series_or_frame_of_reference_is_refused_naming_both(drawn, tmp_path):
    series, masks, seg, files, data, affine = drawn
    same_frame = pydicom.dcmread(files[0]).FrameOfReferenceUID
    write_series(tmp_path / "other", data, affine, series_number=7, frame_uid=same_frame)
    other = one_series(tmp_path / "other")
    with pytest.raises(InputError) as e:
        read_seg_mask(seg, other, "liver")
    msg = str(e.value)
    assert f"a segmentation of series {series.series_instance_uid}" in msg
    assert f"its image row is series {other.series_instance_uid}" in msg and str(seg) in msg and "pair the SEG" in msg
    ds = pydicom.dcmread(seg)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "other_frame.dcm")
    with pytest.raises(InputError) as e:
        read_seg_mask(tmp_path / "other_frame.dcm", series, "liver")
    assert ds.FrameOfReferenceUID in str(e.value) and series.frame_of_reference_uid in str(e.value)


def test_a_seg_referencing_images_the_folder_lacks_or_no_seg_at_all_is_refused(drawn, tmp_path):
    series, masks, seg, files, *_ = drawn
    partial = tmp_path / "partial"
    shutil.copytree(series.folder, partial)
    (partial / series.slices[0].file.name).unlink()  # the first slice (k = 0): still a regular series
    with pytest.raises(InputError, match="references 1 image\\(s\\) that the series .* lacks"):
        read_seg_mask(seg, one_series(partial), "kidney_right")  # a liver frame refers to slice 0
    with pytest.raises(InputError, match="not a DICOM Segmentation"):
        read_seg_mask(files[0], series, "liver")


def test_one_series_takes_a_folder_or_a_file_and_refuses_a_folder_of_several(drawn, tmp_path):
    series, _, _, files, data, affine = drawn
    assert one_series(files[3]).series_instance_uid == one_series(series.folder).series_instance_uid
    write_series(tmp_path / "s" / "more", data, affine, series_number=8)
    with pytest.raises(InputError, match="holds 2 CT series .* and an image is one series"):
        one_series(tmp_path / "s")

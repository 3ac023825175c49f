"""DICOM-SEG out: the organ code table against SNOMED CT as pydicom knows it, and what one SEG says."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need pip install 'edgeseg[dicom]'")
hd = pytest.importorskip("highdicom", reason="DICOM-SEG tests need pip install 'edgeseg[dicom]'")

from edgeseg.data.phantom import ORGANS  # noqa: E402
from edgeseg.runtime.dicom import find_series  # noqa: E402
from edgeseg.runtime.dicom.seg import check_organs_coded, organ_codes, write_seg  # noqa: E402
from edgeseg.runtime.errors import InputError  # noqa: E402
from tests.runtime.dicom.writer import write_series  # noqa: E402


def test_every_code_is_the_snomed_concept_its_meaning_names_and_every_phantom_organ_is_coded():
    from pydicom.sr.codedict import CONCEPTS

    sct: dict[str, set] = {}  # code -> its meanings (a short one and "... structure (body structure)")
    for entries in CONCEPTS["SCT"].values():
        for code, (meaning, _) in entries.items():
            sct.setdefault(code, set()).add(meaning)
    table = organ_codes()
    for row in table.values():
        assert row.meaning in sct.get(row.code, set()), row
        assert row.laterality in ("", "left", "right")
        side = "left" if row.organ.endswith("_left") else "right" if row.organ.endswith("_right") else ""
        assert row.laterality == side or (not row.laterality and side in row.meaning.lower()), row  # in the code
    assert set(ORGANS) <= set(table)
    check_organs_coded(list(ORGANS), "x")
    with pytest.raises(InputError, match="no SNOMED CT code for the organ\\(s\\) \\['tumour'\\]"):
        check_organs_coded(["liver", "tumour"], "x")


def test_a_seg_is_binary_coded_attributed_and_pixel_aligned(tmp_path):
    from edgeseg.assets import EXAMPLE_CT

    img = nib.load(str(EXAMPLE_CT))
    data = np.asarray(img.dataobj)[:50, :40, :10]
    write_series(tmp_path / "s", data, img.affine)
    (series,) = find_series(tmp_path / "s").series
    masks = {"liver": np.zeros(series.shape, np.uint8), "kidney_left": np.zeros(series.shape, np.uint8)}
    masks["liver"][10:20, 5:30, 2:5] = 1
    masks["kidney_left"][30:40, 20:25, 6] = 1
    out = write_seg(tmp_path / "out" / "a_seg.dcm", series, masks, algorithm_version="9.9", engine_hash="abc123")
    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "BINARY" and seg.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    liver, kidney = seg.SegmentSequence
    assert (liver.SegmentLabel, liver.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("liver", "10200004")
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # anatomical structure
    k_type = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert k_type.CodeValue == "64033007" and k_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    algo = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion, algo.AlgorithmFamilyCodeSequence[0].CodeMeaning) == (
        "edgeseg", "9.9", "Artificial Intelligence")
    assert "abc123" in algo.AlgorithmParameters and liver.SegmentAlgorithmType == "AUTOMATIC"
    assert len(seg.PerFrameFunctionalGroupsSequence) == 3 + 1  # only frames with a voxel: slices 2-4 and 6
    uids = [s.sop_instance_uid for s in series.slices]
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    np.testing.assert_array_equal(np.transpose(px[..., 0], (2, 1, 0)), masks["liver"])
    np.testing.assert_array_equal(np.transpose(px[..., 1], (2, 1, 0)), masks["kidney_left"])
    with pytest.raises(InputError, match="already exists"):
        write_seg(out, series, masks, algorithm_version="9.9", engine_hash=None)


def test_a_seg_of_an_enhanced_ct_references_its_frames_and_an_empty_result_still_writes(tmp_path):
    from edgeseg.assets import EXAMPLE_CT

    img = nib.load(str(EXAMPLE_CT))
    data = np.asarray(img.dataobj)[:40, :30, :6]
    files = write_series(tmp_path / "single", data, img.affine)
    legacy = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1)
    (tmp_path / "multi").mkdir()
    legacy.save_as(tmp_path / "multi" / "enhanced.dcm")
    (series,) = find_series(tmp_path / "multi").series
    mask = np.zeros(series.shape, np.uint8)
    mask[5:15, 5:10, 1:4] = 1
    seg = hd.seg.segread(write_seg(tmp_path / "a.dcm", series, {"spleen": mask}, algorithm_version="1", engine_hash=None))
    px = seg.get_pixels_by_source_frame(source_sop_instance_uid=legacy.SOPInstanceUID,
                                        source_frame_numbers=[s.frame + 1 for s in series.slices], segment_numbers=[1],
                                        assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(np.transpose(px[..., 0], (2, 1, 0)), mask)
    empty = write_seg(tmp_path / "b.dcm", series, {"spleen": np.zeros(series.shape, np.uint8)}, algorithm_version="1",
                      engine_hash=None)
    assert hd.seg.segread(empty).SegmentSequence[0].SegmentLabel == "spleen"

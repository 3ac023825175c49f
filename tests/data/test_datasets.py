"""Dataset readers on tiny synthetic datasets (8x8x8 volumes), one per layout, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from edgeseg.runtime.errors import InputError

from edgeseg.data.datasets import (
    Case,
    CsvReader,
    NnUNetReader,
    Skipped,
    TotalSegmentatorReader,
    open_dataset,
)

SHAPE = (8, 8, 8)
# A real, non-trivial affine: anisotropic spacing, an axis flip and an offset.
AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, 0.8, 0, -120.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])


def cube(lo: int, hi: int, value: int = 1, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[lo:hi, lo:hi, lo:hi] = value
    return m


def write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def ct(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 400, size=shape).astype(np.int16)


LIVER = {"s0001": cube(1, 4), "s0002": cube(2, 6)}
SPLEEN = {"s0001": cube(5, 7), "s0002": cube(6, 8)}


def make_totalseg(root: Path, cases=("s0001", "s0002")) -> Path:
    for i, c in enumerate(cases):
        write(root / c / "ct.nii.gz", ct(i))
        write(root / c / "segmentations" / "liver.nii.gz", LIVER.get(c, cube(1, 3)))
        write(root / c / "segmentations" / "spleen.nii.gz", SPLEEN.get(c, cube(5, 7)))
    (root / "meta.csv").write_text("image_id;age\ns0001;60\n")
    return root


def multi_label(case: str) -> np.ndarray:
    assert not np.any(LIVER[case] & SPLEEN[case])
    return LIVER[case] + 2 * SPLEEN[case]


def make_nnunet(root: Path, *, msd: bool = False) -> Path:
    if msd:
        meta = {"name": "Task", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "spleen"},
                "training": []}
    else:
        meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
                "numTraining": 2, "file_ending": ".nii.gz"}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    suffix = "" if msd else "_0000"
    for i, c in enumerate(LIVER):
        write(root / "imagesTr" / f"{c}{suffix}.nii.gz", ct(i))
        write(root / "labelsTr" / f"{c}.nii.gz", multi_label(c))
    return root


def messages(excinfo) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------------------------------------
# TotalSegmentator


def test_totalsegmentator_cases_masks_organs(tmp_path):
    root = make_totalseg(tmp_path / "ts")
    reader = open_dataset(root, "liver")
    assert isinstance(reader, TotalSegmentatorReader) and reader.layout == "totalsegmentator"
    assert reader.organs() == ["liver", "spleen"]
    cases = reader.cases()
    assert [c.case_id for c in cases] == ["s0001", "s0002"] and len(reader) == 2
    for c in cases:
        assert c.label == root / c.case_id / "segmentations" / "liver.nii.gz" and c.label_value is None
        mask = c.load_mask()
        assert mask.dtype == np.uint8 and np.array_equal(mask, LIVER[c.case_id])
        assert c.has_organ()
    image, mask = cases[0].load_pair()
    assert image.shape == SHAPE and np.allclose(image.affine, AFFINE) and np.array_equal(mask, LIVER["s0001"])
    assert np.array_equal(cases[1].load_image().data, ct(1).astype(np.float32))
    assert reader.skipped == [] and list(reader) == cases


def test_totalsegmentator_organ_spelling_is_forgiven(tmp_path):
    reader = open_dataset(make_totalseg(tmp_path / "ts"), "Liver")
    assert reader.organ == "liver" and reader.cases()[0].organ == "liver"


def test_totalsegmentator_missing_segmentation_is_reported(tmp_path):
    root = make_totalseg(tmp_path / "ts", cases=("s0001", "s0002", "s0003"))
    missing = root / "s0003" / "segmentations" / "liver.nii.gz"
    missing.unlink()
    reader = open_dataset(root, "liver")
    inv = reader.inventory()
    assert [c.case_id for c in inv.usable] == ["s0001", "s0002"]
    assert [(s.case_id, s.path) for s in inv.lacking] == [("s0003", missing)]
    with pytest.raises(InputError) as e:
        list(reader)  # require=True is the default
    assert "s0003" in messages(e) and str(missing) in messages(e) and "liver" in messages(e)
    assert e.value.path == str(missing)
    lenient = open_dataset(root, "liver", require=False)
    assert [c.case_id for c in lenient] == ["s0001", "s0002"]
    assert lenient.skipped == [Skipped("s0003", missing, lenient.skipped[0].reason)]
    assert "not found" in lenient.skipped[0].reason
    # The spleen is there for every case.
    assert len(open_dataset(root, "spleen").cases()) == 3


def test_empty_mask_names_file_organ_and_fix(tmp_path):
    root = make_totalseg(tmp_path / "ts")
    label = write(root / "s0002" / "segmentations" / "liver.nii.gz", np.zeros(SHAPE, np.uint8))
    case = open_dataset(root, "liver").cases()[1]
    assert not case.has_organ()
    with pytest.raises(InputError) as e:
        case.load_mask()
    msg = messages(e)
    assert str(label) in msg and "'liver'" in msg and "absent" in msg and "s0002" in msg and "drop" in msg


def test_per_organ_mask_with_values_0_1_2_is_refused(tmp_path):
    root = make_totalseg(tmp_path / "ts")
    label = write(root / "s0001" / "segmentations" / "liver.nii.gz", cube(1, 4) + cube(2, 3))
    with pytest.raises(InputError) as e:
        open_dataset(root, "liver").cases()[0].load_mask()
    msg = messages(e)
    assert str(label) in msg and "{0, 1, 2}" in msg and "only 0 and 1" in msg and "label_value" in msg


def test_label_grid_shape_mismatch(tmp_path):
    root = make_totalseg(tmp_path / "ts")
    label = write(root / "s0001" / "segmentations" / "liver.nii.gz", cube(1, 4, shape=(8, 8, 7)))
    with pytest.raises(InputError) as e:
        open_dataset(root, "liver").cases()[0].load_mask()
    msg = messages(e)
    assert str(label) in msg and "(8, 8, 7)" in msg and "(8, 8, 8)" in msg and "resample" in msg


def test_label_affine_mismatch(tmp_path):
    root = make_totalseg(tmp_path / "ts")
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    label = write(root / "s0002" / "segmentations" / "liver.nii.gz", LIVER["s0002"], affine=shifted)
    case = open_dataset(root, "liver").cases()[1]
    for load in (case.load_mask, case.load_pair):
        with pytest.raises(InputError) as e:
            load()
        assert str(label) in messages(e) and "affine differs" in messages(e) and "5 mm" in messages(e)


def test_unknown_organ_suggests_closest(tmp_path):
    root = make_totalseg(tmp_path / "ts")
    with pytest.raises(InputError) as e:
        open_dataset(root, "livr")
    msg = messages(e)
    assert "'livr'" in msg and "liver, spleen" in msg and "did you mean 'liver'" in msg and str(root) in msg


# ---------------------------------------------------------------------------------------------
# nnU-Net v2 and MSD


@pytest.mark.parametrize("msd", [False, True], ids=["nnunetv2", "msd"])
def test_nnunet_and_msd_cases_masks_organs(tmp_path, msd):
    root = make_nnunet(tmp_path / "Dataset001", msd=msd)
    if msd:  # MSD archives ship macOS resource forks next to every file
        (root / "imagesTr" / "._s0001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    reader = open_dataset(root, "spleen")
    assert isinstance(reader, NnUNetReader) and reader.layout == ("msd" if msd else "nnunetv2")
    assert reader.organs() == ["liver", "spleen"]
    cases = reader.cases()
    assert [c.case_id for c in cases] == ["s0001", "s0002"]
    assert cases[0].image.name == ("s0001.nii.gz" if msd else "s0001_0000.nii.gz")
    assert all(c.label_value == 2 for c in cases)
    for c in cases:
        assert np.array_equal(c.load_mask(), SPLEEN[c.case_id])
    liver = open_dataset(root / "dataset.json", "liver").cases()  # the json file itself is accepted too
    assert [c.label_value for c in liver] == [1, 1]
    assert np.array_equal(liver[1].load_mask(), LIVER["s0002"])


def test_nnunet_organ_absent_from_multilabel_map(tmp_path):
    root = make_nnunet(tmp_path / "d")
    label = write(root / "labelsTr" / "s0002.nii.gz", LIVER["s0002"])  # no spleen (2) in this case
    case = open_dataset(root, "spleen").cases()[1]
    assert not case.has_organ()
    with pytest.raises(InputError) as e:
        case.load_mask()
    assert str(label) in messages(e) and "no voxel has value 2" in messages(e) and "'spleen'" in messages(e)


def test_nnunet_unknown_organ_lists_labels_and_closest(tmp_path):
    root = make_nnunet(tmp_path / "d")
    with pytest.raises(InputError) as e:
        open_dataset(root, "spleem")
    msg = messages(e)
    assert str(root / "dataset.json") in msg and "liver, spleen" in msg and "did you mean 'spleen'" in msg
    with pytest.raises(InputError, match="'background' is not an organ"):
        open_dataset(root, "background")


def test_nnunet_region_label_is_refused(tmp_path):
    root = make_nnunet(tmp_path / "d")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["abdomen"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert open_dataset(root, "liver").organs() == ["abdomen", "liver", "spleen"]
    with pytest.raises(InputError) as e:
        open_dataset(root, "abdomen")
    assert "region-based" in messages(e) and "[1, 2]" in messages(e) and "liver, spleen" in messages(e)


def test_nnunet_missing_image_and_missing_label_are_reported(tmp_path):
    root = make_nnunet(tmp_path / "d")
    missing_image = root / "imagesTr" / "s0002_0000.nii.gz"
    missing_image.unlink()
    write(root / "imagesTr" / "s0003_0000.nii.gz", ct(3))  # an image without its label
    reader = open_dataset(root, "liver")
    with pytest.raises(InputError) as e:
        reader.cases()
    msg = messages(e)
    assert "s0002" in msg and str(missing_image) in msg and "has no image" in msg and "1 more case" in msg
    lenient = open_dataset(root, "liver", require=False)
    assert [c.case_id for c in lenient.cases()] == ["s0001"]
    by_id = {s.case_id: s for s in lenient.skipped}
    assert by_id["s0002"].path == missing_image
    assert by_id["s0003"].path == root / "labelsTr" / "s0003.nii.gz" and "has no label" in by_id["s0003"].reason


def test_nnunet_multichannel_is_refused(tmp_path):
    root = make_nnunet(tmp_path / "d")
    extra = write(root / "imagesTr" / "s0001_0001.nii.gz", ct(9))
    with pytest.raises(InputError) as e:
        open_dataset(root, "liver")
    assert str(extra) in messages(e) and "single channel" in messages(e)
    extra.unlink()
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "PET"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as e:
        open_dataset(root, "liver")
    assert "dataset.json" in messages(e) and "2 input channels" in messages(e) and "single channel" in messages(e)


def test_nnunet_bad_dataset_json(tmp_path):
    root = make_nnunet(tmp_path / "d")
    (root / "dataset.json").write_text('{"labels": {"liver": 1,}')
    with pytest.raises(InputError, match="not valid JSON"):
        open_dataset(root, "liver")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"liver": 1},
                                                   "file_ending": ".mha"}))
    with pytest.raises(InputError, match="'.mha' is not NIfTI"):
        open_dataset(root, "liver")


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_with_organ_column(tmp_path):
    ts = make_totalseg(tmp_path / "ts")
    rows = ["image,label,organ"]
    for c in ("s0002", "s0001"):  # out of order on purpose: cases come back sorted
        rows += [f"ts/{c}/ct.nii.gz,ts/{c}/segmentations/liver.nii.gz,liver",
                 f"{ts / c / 'ct.nii.gz'},{ts / c / 'segmentations' / 'spleen.nii.gz'},spleen"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    reader = open_dataset(tmp_path / "list.csv", "spleen")
    assert isinstance(reader, CsvReader) and reader.layout == "csv"
    assert reader.organs() == ["liver", "spleen"]
    cases = reader.cases()
    # Both images are called ct.nii.gz: ids fall back to the path.
    assert [c.case_id for c in cases] == ["ts/s0001/ct", "ts/s0002/ct"]
    for c, name in zip(cases, ("s0001", "s0002")):
        assert c.label_value is None and np.array_equal(c.load_mask(), SPLEEN[name])
    liver = open_dataset(tmp_path / "list.csv", "liver").cases()
    assert np.array_equal(liver[0].load_mask(), LIVER["s0001"])


def test_csv_without_organ_column_and_label_value(tmp_path):
    root = make_nnunet(tmp_path / "d")
    # A BOM (Excel) and ';' (European spreadsheets) must not get in the way.
    text = ("case_id;image;label;label_value\n"
            "b;d/imagesTr/s0002_0000.nii.gz;d/labelsTr/s0002.nii.gz;2\n"
            "a;d/imagesTr/s0001_0000.nii.gz;d/labelsTr/s0001.nii.gz;2\n")
    (tmp_path / "spleen.csv").write_text("\ufeff" + text, encoding="utf-8")
    reader = open_dataset(tmp_path / "spleen.csv", "spleen")
    assert reader.organs() == ["spleen"]
    cases = reader.cases()
    assert [(c.case_id, c.label_value) for c in cases] == [("a", 2), ("b", 2)]
    assert cases[0].image == root / "imagesTr" / "s0001_0000.nii.gz"
    assert np.array_equal(cases[1].load_mask(), SPLEEN["s0002"])


def test_csv_missing_column(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("image,mask\na.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError) as e:
        open_dataset(p, "liver")
    assert str(p) in messages(e) and "row 1" in messages(e) and "'label'" in messages(e) and "image, mask" in messages(e)


def test_csv_row_pointing_to_missing_file(tmp_path):
    make_totalseg(tmp_path / "ts")
    p = tmp_path / "x.csv"
    p.write_text("image,label\n"
                 "ts/s0001/ct.nii.gz,ts/s0001/segmentations/liver.nii.gz\n"
                 "ts/s0002/ct.nii.gz,ts/s0002/segmentations/livr.nii.gz\n")
    with pytest.raises(InputError) as e:
        open_dataset(p, "liver").cases()
    msg = messages(e)
    assert "row 3 of x.csv" in msg and "livr.nii.gz" in msg and "not found" in msg
    assert e.value.path == str(tmp_path / "ts" / "s0002" / "segmentations" / "livr.nii.gz")
    lenient = open_dataset(p, "liver", require=False)
    assert len(lenient.cases()) == 1 and "row 3" in lenient.skipped[0].reason


def test_csv_format_errors(tmp_path):
    p = tmp_path / "x.csv"
    for text, needle in [
        ("", "empty"),
        ("image,label\n", "no rows"),
        ("image,label\n,b.nii.gz\n", "row 2 has an empty image cell"),
        ("image,label\na.nii.gz,b.nii.gz,c\n", "row 2 has 3 cells"),
        ("image,label\na.mha,b.nii.gz\n", "row 2: image 'a.mha' is not a NIfTI"),
        ("image,label,label_value\na.nii.gz,b.nii.gz,two\n", "row 2: label_value 'two'"),
        ("image,label\na.nii.gz,b.nii.gz\n\na.nii.gz,b.nii.gz\n", "listed twice for the same organ (rows 2, 4)"),
    ]:
        p.write_text(text)
        (tmp_path / "a.nii.gz").touch()
        (tmp_path / "b.nii.gz").touch()
        with pytest.raises(InputError) as e:
            open_dataset(p, "liver").cases()
        assert needle in messages(e) and str(p) in messages(e), (text, messages(e))


def test_csv_unknown_organ(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("image,label,organ\na.nii.gz,b.nii.gz,kidney_left\na.nii.gz,c.nii.gz,kidney_right\n")
    with pytest.raises(InputError) as e:
        open_dataset(p, "kidney_lft")
    assert "did you mean 'kidney_left'" in messages(e) and str(p) in messages(e)
    assert open_dataset(p, "Kidney Left").organ == "kidney_left"


# ---------------------------------------------------------------------------------------------
# Layout detection


def test_unknown_layout(tmp_path):
    folder = tmp_path / "stuff"
    write(folder / "scan.nii.gz", ct())
    with pytest.raises(InputError) as e:
        open_dataset(folder, "liver")
    msg = messages(e)
    assert str(folder) in msg and "unrecognised dataset layout" in msg
    assert "TotalSegmentator" in msg and "nnU-Net" in msg and ".csv" in msg
    (folder / "imagesTr").mkdir()
    with pytest.raises(InputError, match="no dataset.json"):
        open_dataset(folder, "liver")
    with pytest.raises(InputError, match="dataset not found"):
        open_dataset(tmp_path / "nope", "liver")
    with pytest.raises(InputError, match="one TotalSegmentator case"):
        open_dataset(make_totalseg(tmp_path / "ts") / "s0001", "liver")


def test_case_is_a_plain_record(tmp_path):
    root = make_totalseg(tmp_path / "ts")
    c = open_dataset(root, "liver").cases()[0]
    assert c == Case("s0001", root / "s0001" / "ct.nii.gz", root / "s0001" / "segmentations" / "liver.nii.gz",
                     None, "liver")
    no_label = Case("x", c.image, None, None, "liver")
    assert not no_label.has_organ()
    with pytest.raises(InputError, match="has no label for organ 'liver'"):
        no_label.load_mask()


# ---------------------------------------------------------------------------------------------
# DICOM in a CSV: series as images, DICOM-SEG or NIfTI as labels


def test_csv_of_dicom_series_with_dicom_seg_or_nifti_labels(tmp_path):
    pytest.importorskip("highdicom", reason="DICOM-SEG tests need pip install 'edgeseg[dicom]'")
    from edgeseg.runtime.dicom import one_series
    from edgeseg.runtime.dicom.seg import write_seg
    from tests.runtime.dicom.writer import write_series

    # Axes as a DICOM series stores them (LPS rows, columns, slices along +z): the series' voxel order is the NIfTI's.
    affine = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 120.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])
    write(tmp_path / "ts" / "s0002" / "liver.nii.gz", LIVER["s0002"], affine)
    first_files = {}
    for i, c in enumerate(("s0001", "s0002")):
        first_files[c] = write_series(tmp_path / "dicom" / c, ct(i), affine, series_number=i + 1)[0]
        write_seg(tmp_path / "dicom" / f"{c}_seg.dcm", one_series(tmp_path / "dicom" / c),
                  {"spleen": SPLEEN[c], "liver": LIVER[c]}, algorithm_version="1", engine_hash=None)
    (tmp_path / "list.csv").write_text(
        "image,label,organ,label_value\n"
        "dicom/s0001,dicom/s0001_seg.dcm,liver,\n"  # a series' folder and its SEG
        f"{first_files['s0002']},ts/s0002/liver.nii.gz,liver,\n"  # one file of it, a NIfTI mask
        "dicom/s0001,dicom/s0001_seg.dcm,spleen,1\n"  # the segment by its number
        "dicom/s0002,dicom/s0001_seg.dcm,kidney_left,\n")  # another series' SEG
    cases = open_dataset(tmp_path / "list.csv", "liver").cases()
    assert [(c.case_id, c.label_is_seg) for c in cases] == [("s0001", True), ("s0002", False)]
    for i, (c, name) in enumerate(zip(cases, ("s0001", "s0002"))):
        assert c.has_organ() and np.array_equal(c.load_mask(), LIVER[name])
        image, mask = c.load_pair()
        assert np.array_equal(image.data, ct(i)) and np.allclose(image.affine, affine, atol=1e-6)
        assert np.array_equal(mask, LIVER[name])
    (spleen,) = open_dataset(tmp_path / "list.csv", "spleen").cases()
    assert spleen.label_value == 1 and np.array_equal(spleen.load_mask(), SPLEEN["s0001"])
    (other,) = open_dataset(tmp_path / "list.csv", "kidney_left").cases()
    with pytest.raises(InputError) as e:
        other.load_mask()
    assert "a segmentation of series" in messages(e) and str(tmp_path / "dicom" / "s0001_seg.dcm") in messages(e)
    # a SEG cannot be placed on a NIfTI image; a folder is no label
    write(tmp_path / "ts" / "s0001" / "ct.nii.gz", ct(0), affine)
    (tmp_path / "bad.csv").write_text("image,label\nts/s0001/ct.nii.gz,dicom/s0001_seg.dcm\n")
    with pytest.raises(InputError, match="is a DICOM-SEG, but the image of case 'ct' is a NIfTI file"):
        open_dataset(tmp_path / "bad.csv", "liver").cases()[0].load_mask()
    write(tmp_path / "ts" / "flipped.nii.gz", LIVER["s0001"], AFFINE)  # the same box, slices in the other order
    (tmp_path / "bad.csv").write_text("image,label\ndicom/s0001,ts/flipped.nii.gz\n")
    with pytest.raises(InputError, match="label affine differs from the image's .*dicom/s0001"):
        open_dataset(tmp_path / "bad.csv", "liver").cases()[0].load_mask()
    (tmp_path / "bad.csv").write_text("image,label\ndicom/s0001,dicom/s0002\n")
    with pytest.raises(InputError, match="row 2: label 'dicom/s0002' is not a NIfTI file name .* nor a DICOM-SEG file"):
        open_dataset(tmp_path / "bad.csv", "liver")

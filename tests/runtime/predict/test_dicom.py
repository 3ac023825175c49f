"""`predict` on DICOM series: the same masks as on the NIfTI they were written from, on the series' grid, with
stable case names, UIDs in the reports and no patient attribute in any output or log line."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need pip install 'edgeseg[dicom]'")

from edgeseg.runtime.dicom import DicomSeries  # noqa: E402
from edgeseg.runtime.errors import InputError  # noqa: E402
from edgeseg.runtime.predict import PredictOptions, collect_inputs, predict_many  # noqa: E402
from edgeseg.runtime.predict.plan import plan_case  # noqa: E402
from tests.runtime.dicom.writer import PATIENT, write_scout, write_series  # noqa: E402
from tests.runtime.predict.oracle import OracleEngine  # noqa: E402


@pytest.fixture
def study(scans, tmp_path):
    """Both phantom scans as DICOM series in one folder tree (shuffled names, a scout), and their NIfTI files."""
    root = tmp_path / "study"
    for i, case in enumerate(scans):
        img = nib.load(str(case / "ct.nii.gz"))
        files = write_series(root / f"series{i}", np.asarray(img.dataobj), img.affine, series_number=i + 2,
                             description=f"abdomen {i}", rescale=[(1.0, -1024.0), (0.5, -1000.0)], seed=i)
        first = pydicom.dcmread(files[0])
        write_scout(root / f"series{i}", series_uid=first.SeriesInstanceUID, study_uid=first.StudyInstanceUID)
    return root


def test_a_folder_tree_of_series_segments_each_series_as_the_nifti_would(scans, study, tmp_path):
    engine = OracleEngine(scans)
    lines: list[str] = []
    reports = predict_many(engine, [study], tmp_path / "dicom", PredictOptions(lcc=True, preview=True), log=lines.append)
    nifti = predict_many(engine, [s / "ct.nii.gz" for s in scans], tmp_path / "nifti", PredictOptions(lcc=True))
    assert len(reports) == 2 and sum("localizer/scout image(s) skipped" in ln for ln in lines) == 2
    for r, n in zip(reports, nifti):
        assert r["case"].startswith(f"series{2 + reports.index(r)}_abdomen_{reports.index(r)}_")
        assert r["dicom"]["series_instance_uid"] and r["dicom"]["slices"] == r["shape"][2]
        assert r["volume_ml"] == pytest.approx(n["volume_ml"], rel=1e-9)
        for organ in engine.organs:
            a = nib.load(str(tmp_path / "dicom" / f"{r['case']}_{organ}.nii.gz"))
            b = nib.load(str(tmp_path / "nifti" / f"{n['case']}_{organ}.nii.gz"))
            assert a.shape == b.shape and np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
            np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)  # the series' grid (DS keeps 1e-5 mm)
            assert np.asarray(a.dataobj).any()
    # the same names the next time, whatever else is in the run: a second run skips both
    again = predict_many(engine, [study / "series1", study / "series0"], tmp_path / "dicom", PredictOptions(lcc=True, preview=True))
    assert all(r.get("skipped") for r in again) and {r["case"] for r in again} == {r["case"] for r in reports}


def test_no_patient_attribute_reaches_an_output_or_a_log_line(scans, study, tmp_path):
    lines: list[str] = []
    predict_many(OracleEngine(scans), [study], tmp_path / "out", PredictOptions(save_prob=True, preview=True),
                 log=lines.append)
    outputs = sorted(p for p in (tmp_path / "out").iterdir() if p.is_file() and not p.name.endswith("_seg.dcm"))
    assert len(outputs) > 6 and len(list((tmp_path / "out").glob("*_seg.dcm"))) == 2  # a SEG carries its patient
    texts = [p.read_bytes() for p in outputs] + [nib.load(str(p)).header.binaryblock for p in outputs
                                                 if p.name.endswith(".nii.gz")]
    texts.append("\n".join(lines).encode())
    for value in PATIENT.values():
        for variant in {value, value.replace("^", " "), value.split("^")[0]}:
            assert not any(variant.encode() in t for t in texts), variant
    report = json.loads(next(p for p in outputs if p.suffix == ".json").read_text())
    assert report["dicom"]["study_instance_uid"] and "Patient" not in json.dumps(report)


def test_dicom_and_nifti_inputs_mix_and_a_list_names_either(scans, study, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{study / 'series0'}\n{scans[1] / 'ct.nii.gz'}\n")
    found = collect_inputs([listing, scans[0] / "ct.nii.gz"])
    assert isinstance(found[0], DicomSeries) and found[1:] == [scans[1] / "ct.nii.gz", scans[0] / "ct.nii.gz"]
    one_file = collect_inputs([sorted((study / "series1").glob("*.dcm"))[0]])
    assert len(one_file) == 1 and one_file[0].series_number == 3
    with pytest.raises(InputError, match="share the case name"):
        collect_inputs([study / "series0", study])


def test_the_memory_check_comes_from_the_headers_before_any_pixel(scans, study, tmp_path, monkeypatch):
    import edgeseg.runtime.dicom.read as read_mod

    (series, _) = collect_inputs([study])
    monkeypatch.setattr(read_mod, "_read_pixels", lambda *a: pytest.fail("planning read pixels"))
    plan = plan_case(OracleEngine(scans), series, series.case_name, tmp_path, PredictOptions())
    assert plan.input_shape == series.shape and plan.memory["peak"] > 0
    from edgeseg.runtime.errors import ResourceError
    from edgeseg.runtime.predict.plan import check_memory

    with pytest.raises(ResourceError, match=f"UID {series.series_instance_uid}"):
        check_memory(plan, OracleEngine(scans), PredictOptions(max_memory_gib=0.001))
    with pytest.raises(InputError, match="--volume 2 does not exist"):
        plan_case(OracleEngine(scans), series, series.case_name, tmp_path, PredictOptions(volume=2))


def test_an_output_folder_inside_a_series_folder_is_refused(scans, study):
    with pytest.raises(InputError, match="inside the input folder"):
        predict_many(OracleEngine(scans), [study / "series0"], study / "series0" / "pred", PredictOptions())
    assert not (study / "series0" / "pred").exists()


def test_a_changed_series_is_redone(scans, study, tmp_path):
    engine = OracleEngine(scans)
    predict_many(engine, [study / "series0"], tmp_path, PredictOptions())
    f = sorted((study / "series0").glob("*.dcm"))[3]
    f.write_bytes(f.read_bytes())  # same content, a new modification time
    import os

    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    lines: list[str] = []
    predict_many(engine, [study / "series0"], tmp_path, PredictOptions(), log=lines.append)
    assert any("the input file changed" in ln for ln in lines) and engine.calls == 2


def test_a_nifti_folder_without_scans_still_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .nii or .nii.gz file and no DICOM file"):
        collect_inputs([tmp_path / "empty"])
    assert Path(tmp_path / "empty").exists()


def test_round_trip_the_dicom_seg_holds_the_voxels_predict_gives_on_the_nifti(scans, study, tmp_path):
    hd = pytest.importorskip("highdicom")
    engine = OracleEngine(scans)
    (r,) = predict_many(engine, [study / "series0"], tmp_path / "dicom", PredictOptions(format="dicom-seg"))
    (n,) = predict_many(engine, [scans[0] / "ct.nii.gz"], tmp_path / "nifti", PredictOptions())
    assert r["outputs"] == [f"{r['case']}_seg.dcm"]  # dicom-seg alone: no NIfTI mask
    seg = hd.seg.segread(tmp_path / "dicom" / r["outputs"][0])
    (series,) = collect_inputs([study / "series0"])
    source_uids = [s.sop_instance_uid for s in series.slices]
    referenced = {ref.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence
                  for ref in item.ReferencedInstanceSequence}
    assert referenced == set(source_uids) and seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[1, 2],
                                               assert_missing_frames_are_empty=True)  # (slices, rows, cols, organs)
    for i, organ in enumerate(engine.organs):
        expected = np.asarray(nib.load(str(tmp_path / "nifti" / f"{n['case']}_{organ}.nii.gz")).dataobj)
        got = np.transpose(pixels[..., i], (2, 1, 0))  # back to the series' (i, j, k) = the NIfTI's grid here
        assert got.any() and np.array_equal(got, expected)
    assert len(seg.PerFrameFunctionalGroupsSequence) < 2 * len(source_uids)  # empty frames omitted
    # --format dicom-seg on a NIfTI: refused before any work, naming the scan
    with pytest.raises(InputError, match="needs a DICOM series"):
        predict_many(engine, [scans[0] / "ct.nii.gz"], tmp_path / "x", PredictOptions(format="dicom-seg"))


def test_the_cli_segments_a_dicom_study_and_refuses_a_tilted_series_with_exit_2(tmp_path, monkeypatch):
    import edgeseg.runtime.engine as engine_mod
    from typer.testing import CliRunner

    from edgeseg.cli import app
    from tests.runtime.standin_engine import make_engine, write_ct

    img = nib.load(str(write_ct(tmp_path / "abdomen.nii.gz", shape=(24, 20, 12))))
    data = np.asarray(img.dataobj)
    files = write_series(tmp_path / "study" / "a", data, img.affine, series_number=4, description="venous")
    write_scout(tmp_path / "study", series_uid=pydicom.dcmread(files[0]).SeriesInstanceUID)
    monkeypatch.setattr(engine_mod, "open_engine", lambda *a, **k: make_engine(("liver", "spleen")))

    def cli(*args):
        return CliRunner().invoke(app, ["predict", *map(str, args), "--engine", "standin", "--json"])

    result = cli(tmp_path / "study", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    assert report["case"].startswith("series4_venous_") and f"{report['case']}_seg.dcm" in report["outputs"]
    assert f"{report['case']}_liver.nii.gz" in report["outputs"] and "localizer/scout image(s) skipped" in result.stderr
    assert not any(v.split("^")[0] in result.output for v in PATIENT.values())
    dicom_mask = np.asarray(nib.load(str(tmp_path / "out" / f"{report['case']}_liver.nii.gz")).dataobj)
    nifti = cli(tmp_path / "abdomen.nii.gz", "--out", tmp_path / "nifti")
    assert nifti.exit_code == 0, nifti.output
    assert json.loads(nifti.stdout)[0]["outputs"] == ["abdomen_liver.nii.gz", "abdomen_spleen.nii.gz",
                                                      "abdomen_labels.nii.gz"]  # NIfTI in: no SEG by default
    nifti_mask = np.asarray(nib.load(str(tmp_path / "nifti" / "abdomen_liver.nii.gz")).dataobj)
    assert dicom_mask.any() and np.array_equal(dicom_mask, nifti_mask)

    write_series(tmp_path / "tilted", data, img.affine, series_number=8, tilt_mm=0.5)
    result = cli(tmp_path / "tilted", "--out", tmp_path / "out2")
    err = json.loads(result.stdout)
    assert result.exit_code == 2 and err["error"] == "InputError" and "series 8" in err["path"]
    assert "off perpendicular" in err["problem"] and "tilt" in err["fix"] and not (tmp_path / "out2").exists()


class _ThresholdEngine:
    """A stand-in engine for any scan: one organ wherever the model-grid image is above mid-window."""

    organs = ("liver",)

    def __init__(self):
        from edgeseg.runtime.preprocess import PreprocessSpec

        self.preprocess = PreprocessSpec(spacing=(0.5, 0.5, 1.0), window=(64, 64, 64))
        self.folder = Path("threshold")
        self.ran = {"backend": "threshold", "precision": "fp32", "device": "none"}

    def check_window(self) -> None:
        """No graph: nothing to check."""

    def probabilities(self, volume, *, overlap, batch_size, stats=None, **_):
        if stats is not None:
            stats.update(windows=1, run=1, batches=1)
        return (volume[:1] > 0.5).astype(np.float32)


def _nifti_by_hand(files, out: Path) -> Path:
    """The series as NIfTI, built here from the headers (not by edgeseg's reader): slices sorted on the
    normal, stored values through each slice's rescale, the LPS affine with x and y negated."""
    ds = [pydicom.dcmread(f) for f in files]
    iop = np.array(ds[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ds.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    data = np.stack([d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds], axis=-1)
    first, last = (np.array(d.ImagePositionPatient, float) for d in (ds[0], ds[-1]))
    row_mm, col_mm = (float(v) for v in ds[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = iop[:3] * col_mm, iop[3:] * row_mm
    lps[:3, 2], lps[:3, 3] = (last - first) / (len(ds) - 1), first
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), str(out))
    return out


def test_a_series_from_another_writer_gives_the_masks_of_its_nifti_and_a_valid_seg(tmp_path):
    """pydicom's CT5N: five slices from a GE scanner, written by another tool than ours, its file names
    against the slices' order. Predict on it and on the NIfTI built by hand from its headers agree voxel
    for voxel, and its DICOM-SEG reads back with highdicom, referencing exactly its instances."""
    import shutil

    hd = pytest.importorskip("highdicom")
    from pydicom.data import get_testdata_files

    files = sorted(get_testdata_files("dicomdirtests/98892001/CT5N/*"))
    assert len(files) == 5 and pydicom.dcmread(files[0]).Manufacturer.startswith("GE")
    series_dir = tmp_path / "ct5n"
    series_dir.mkdir()
    for f in files:
        shutil.copy(f, series_dir / Path(f).name)
    nifti = _nifti_by_hand(sorted(series_dir.iterdir()), tmp_path / "ct5n.nii.gz")
    engine = _ThresholdEngine()
    options = PredictOptions(format="both", hu_check=False)  # a 16 x 16 crop of an abdomen: too small to judge its HU
    (r,) = predict_many(engine, [series_dir], tmp_path / "dicom", options)
    (n,) = predict_many(engine, [nifti], tmp_path / "nifti", PredictOptions(hu_check=False))
    a = nib.load(str(tmp_path / "dicom" / f"{r['case']}_liver.nii.gz"))
    b = nib.load(str(tmp_path / "nifti" / f"{n['case']}_liver.nii.gz"))
    mask = np.asarray(a.dataobj)
    assert mask.shape == (16, 16, 5) and 0 < mask.sum() < mask.size  # something, not everything
    assert np.array_equal(mask, np.asarray(b.dataobj))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    seg = hd.seg.segread(tmp_path / "dicom" / f"{r['case']}_seg.dcm")
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    referenced = {ref.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence
                  for ref in item.ReferencedInstanceSequence}
    assert referenced == uids and seg.SegmentSequence[0].SegmentLabel

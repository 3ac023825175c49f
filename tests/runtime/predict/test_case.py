"""Running one case: masks on the input grid with the input's header, volumes, the report, and the files a
case may not replace; with a stand-in engine whose answer is known (the phantom's own liver and spleen)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.nifti import load_scan
from edgeseg.runtime.predict import PredictOptions, predict_many
from edgeseg.train.losses import dice_score
from tests.runtime.predict.oracle import OracleEngine

def test_masks_come_back_on_the_input_grid_with_a_report(scans, tmp_path):
    engine = OracleEngine(scans)
    reports = predict_many(engine, [s / "ct.nii.gz" for s in scans[:1]], tmp_path,
                           PredictOptions(save_prob=True, preview=True, lcc=True))
    (r,) = reports
    src = nib.load(str(scans[0] / "ct.nii.gz"))
    for organ in ("liver", "spleen"):
        out = nib.load(str(tmp_path / f"{scans[0].name}_ct_{organ}.nii.gz"))
        assert out.shape == src.shape and np.array_equal(out.affine, src.affine) and out.get_data_dtype() == np.uint8
        truth = np.asarray(nib.load(str(scans[0] / "segmentations" / f"{organ}.nii.gz")).dataobj)
        assert dice_score(np.asarray(out.dataobj), truth) > 0.98
        voxel_ml = abs(np.linalg.det(src.affine[:3, :3])) / 1000
        assert r["volume_ml"][organ] == pytest.approx(float(np.asarray(out.dataobj).sum()) * voxel_ml, rel=1e-6)
    labels = np.asarray(nib.load(str(tmp_path / f"{scans[0].name}_ct_labels.nii.gz")).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (tmp_path / f"{scans[0].name}_ct_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / f"{scans[0].name}_ct.json").read_text())
    assert saved == r and set(r["seconds"]) == {"read", "preprocess", "inference", "postprocess", "write"}
    assert r["ran"]["backend"] == "oracle" and r["peak_rss_gib"] > 0 and not (tmp_path / f"{scans[0].name}_ct.partial").exists()


def test_user_files_are_not_overwritten_without_force(scans, tmp_path):
    engine = OracleEngine(scans)
    user_file = tmp_path / f"{scans[0].name}_ct_liver.nii.gz"
    user_file.write_bytes(b"a user's file")
    with pytest.raises(InputError, match="--force"):
        predict_many(engine, [scans[0] / "ct.nii.gz"], tmp_path, PredictOptions())
    assert user_file.read_bytes() == b"a user's file"
    predict_many(engine, [scans[0] / "ct.nii.gz"], tmp_path, PredictOptions(force=True))
    assert load_scan(user_file, label=True).data.any()


def test_run_case_runs_a_plan_and_predict_scan_plans_one(scans, tmp_path):
    from edgeseg.runtime.predict import plan_case, predict_scan, run_case

    engine = OracleEngine(scans)
    plan = plan_case(engine, scans[0] / "ct.nii.gz", "a", tmp_path / "out", PredictOptions())
    report = run_case(engine, plan, PredictOptions())
    assert report["case"] == "a" and report["outputs"] == list(plan.outputs) and not report["prefetched"]
    assert json.loads(plan.report_path.read_text()) == report and not plan.marker.exists()
    assert sorted(p.name for p in plan.out.iterdir()) == sorted([*plan.outputs, "a.json"])
    again = predict_scan(engine, scans[0] / "ct.nii.gz", tmp_path / "out", PredictOptions(force=True), case="a")
    assert again["volume_ml"] == report["volume_ml"] and engine.calls == 2

"""Scan in, mask out: shapes, header geometry, volumes, reports, resume and refusals, with a stand-in
engine whose answer is known (it returns the phantom's own liver and spleen on the model grid)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.nifti import load_scan
from edgeseg.runtime.predict import PredictOptions, case_names, collect_inputs, predict_many
from edgeseg.runtime.preprocess import preprocess
from edgeseg.train.losses import dice_score
from tests.conftest import PRE5


class OracleEngine:
    """Answers with the reference labels of the scan it is given (looked up by its shape)."""

    def __init__(self, cases: list[Path], organs=("liver", "spleen")):
        self.organs = organs
        self.preprocess = PRE5
        self.folder = Path("oracle")
        self.ran = {"backend": "oracle", "precision": "fp32", "device": "none"}
        self.calls = 0
        self.answers = {}
        for case in cases:
            labels = [preprocess(case / "ct.nii.gz", PRE5, label=case / "segmentations" / f"{o}.nii.gz").label
                      for o in organs]
            self.answers[labels[0].shape] = np.stack(labels).astype(np.float32)

    def probabilities(self, volume, *, overlap, batch_size, stats=None, **_):
        self.calls += 1
        if stats is not None:
            stats.update(windows=1, run=1, skipped=0, batches=1)
        return self.answers[volume.shape[1:]]


@pytest.fixture
def scans(phantoms5):
    support, _ = phantoms5
    return sorted(p for p in support.iterdir() if p.is_dir())[:2]


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


def test_done_cases_are_skipped_and_a_crashed_case_is_redone(scans, tmp_path):
    engine = OracleEngine(scans)
    inputs = [tmp_path / "list.txt"]
    (tmp_path / "a.nii.gz").write_bytes((scans[0] / "ct.nii.gz").read_bytes())
    (tmp_path / "b.nii.gz").write_bytes((scans[1] / "ct.nii.gz").read_bytes())
    inputs[0].write_text("a.nii.gz\nb.nii.gz\n")
    out = tmp_path / "out"
    predict_many(engine, inputs, out, PredictOptions())
    assert engine.calls == 2
    (out / "b.json").unlink()
    (out / "b.partial").write_text("crashed")  # as a run killed mid-case leaves it
    reports = predict_many(engine, inputs, out, PredictOptions())
    assert engine.calls == 3 and reports[0]["skipped"] and "volume_ml" in reports[1]


def test_user_files_are_not_overwritten_without_force(scans, tmp_path):
    engine = OracleEngine(scans)
    user_file = tmp_path / f"{scans[0].name}_ct_liver.nii.gz"
    user_file.write_bytes(b"a user's file")
    with pytest.raises(InputError, match="--force"):
        predict_many(engine, [scans[0] / "ct.nii.gz"], tmp_path, PredictOptions())
    assert user_file.read_bytes() == b"a user's file"
    predict_many(engine, [scans[0] / "ct.nii.gz"], tmp_path, PredictOptions(force=True))
    assert load_scan(user_file, label=True).data.any()


def test_inputs_folders_lists_and_errors(scans, tmp_path):
    assert collect_inputs([scans[0]]) == [scans[0] / "ct.nii.gz"]
    with pytest.raises(InputError, match="not found"):
        collect_inputs([tmp_path / "missing.nii.gz"])
    assert case_names([scans[0] / "ct.nii.gz", scans[1] / "ct.nii.gz"]) == [f"{s.name}_ct" for s in scans[:2]]
    with pytest.raises(InputError, match="share the case name"):
        collect_inputs([scans[0] / "ct.nii.gz", scans[0] / "ct.nii.gz"])
    with pytest.raises(InputError, match="no .nii"):
        collect_inputs([tmp_path])


def test_prefetch_reads_the_next_scan_ahead_and_changes_nothing(scans, tmp_path):
    inputs = [s / "ct.nii.gz" for s in scans]
    ahead = predict_many(OracleEngine(scans), inputs, tmp_path / "on", PredictOptions(prefetch="on"))
    plain = predict_many(OracleEngine(scans), inputs, tmp_path / "off", PredictOptions(prefetch="off"))
    assert [r["prefetched"] for r in ahead] == [False, True] and not any(r["prefetched"] for r in plain)
    assert ahead[1]["prefetch_wait_seconds"] >= 0 and ahead[1]["memory"]["estimated_peak_gib"] > 0
    for r_on, r_off in zip(ahead, plain):
        assert r_on["volume_ml"] == r_off["volume_ml"]
        for name in r_on["outputs"]:
            a = np.asarray(nib.load(str(tmp_path / "on" / name)).dataobj)
            b = np.asarray(nib.load(str(tmp_path / "off" / name)).dataobj)
            assert np.array_equal(a, b)


def test_prefetch_auto_follows_the_device():
    from edgeseg.runtime.predict import _use_prefetch

    from edgeseg.runtime.artifact import OpenedArtifact
    from edgeseg.runtime.support import Device

    class E(OpenedArtifact):
        def __init__(self, device):
            self.backend = type("B", (), {"device": device})()

    assert not _use_prefetch(E(Device.CPU), PredictOptions())  # inference already uses every core
    assert _use_prefetch(E(Device.CPU), PredictOptions(prefetch="on"))
    for device in (Device.CUDA, Device.TENSORRT):  # CUDA, and ONNX Runtime's TensorRT execution provider
        assert _use_prefetch(E(device), PredictOptions()) and not _use_prefetch(E(device), PredictOptions(prefetch="off"))
    with pytest.raises(InputError, match="--prefetch"):
        PredictOptions(prefetch="sometimes")


def test_a_users_json_named_like_a_report_is_never_skipped_on_nor_overwritten(scans, tmp_path):
    # A BIDS sidecar beside its scan: with --out there too, today's name-only check would skip the case
    engine = OracleEngine(scans)
    out = tmp_path / "out"
    out.mkdir()
    sidecar = out / f"{scans[0].name}_ct.json"
    sidecar.write_text('{"RepetitionTime": 2.0, "Manufacturer": "X"}')
    for force in (False, True):
        with pytest.raises(InputError, match="is not an edgeseg report") as e:
            predict_many(engine, [scans[0] / "ct.nii.gz"], out, PredictOptions(force=force))
        assert str(sidecar) in e.value.message and "--out" in e.value.fix
    assert json.loads(sidecar.read_text()) == {"RepetitionTime": 2.0, "Manufacturer": "X"} and engine.calls == 0


def test_an_output_folder_inside_the_inputs_or_beside_a_scan_is_refused(scans, tmp_path):
    engine = OracleEngine(scans)
    folder = scans[0]
    for out, what in ((folder, "is the input folder"), (folder / "pred", "is inside the input folder")):
        with pytest.raises(InputError, match=what):
            predict_many(engine, [folder], out, PredictOptions())
    with pytest.raises(InputError, match="folder of the input scan ct.nii.gz"):
        predict_many(engine, [folder / "ct.nii.gz"], folder, PredictOptions())
    assert engine.calls == 0 and not (folder / "pred").exists()


def test_a_rerun_with_other_options_or_another_engine_redoes_the_case_and_says_so(scans, tmp_path):
    engine = OracleEngine(scans)
    engine.manifest_hash = "a" * 64
    scan, out = scans[0] / "ct.nii.gz", tmp_path / "out"
    (first,) = predict_many(engine, [scan], out, PredictOptions())
    assert first["kind"] == "edgeseg-predict-report" and first["made_with"]["options"]["threshold"] == 0.5
    (same,) = predict_many(engine, [scan], out, PredictOptions())
    assert same["skipped"] and engine.calls == 1
    logs: list[str] = []
    (other,) = predict_many(engine, [scan], out, PredictOptions(threshold=0.7), log=logs.append)
    assert engine.calls == 2 and other["redone_because"] == "--threshold 0.5 -> 0.7"
    assert any("segmented again (--threshold 0.5 -> 0.7)" in m for m in logs)
    engine.manifest_hash = "b" * 64  # another engine (re-fused, other adapters)
    (again,) = predict_many(engine, [scan], out, PredictOptions(threshold=0.7))
    assert engine.calls == 3 and again["redone_because"] == "another engine"
    saved = json.loads((out / f"{scans[0].name}_ct.json").read_text())
    assert saved["made_with"]["engine_manifest_sha256"] == "b" * 64

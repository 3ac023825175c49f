"""The whole workflow on a tiny trunk: export -> cache -> adapt -> fuse -> predict, NIfTI in and out.

The trunk has random weights (seed 0), so the bound on Dice is the one measured for that trunk (held-out
liver 0.76 with the spatial adapter), not what a pretrained trunk reaches.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from edgeseg.assets import EXAMPLE_CT
from edgeseg.features import CacheConfig, build_cache
from edgeseg.export.fuse import fuse
from edgeseg.runtime.engine import open_engine
from edgeseg.runtime.predict import PredictOptions, predict_many
from edgeseg.train.adapt import AdaptConfig, adapt
from edgeseg.train.losses import dice_score
from tests.skips import requires_openvino


@pytest.fixture(scope="module")
def engine_dir(trunk5, phantoms5, tmp_path_factory):
    support, query = phantoms5
    work = tmp_path_factory.mktemp("pipeline")
    build_cache(trunk5, support, "liver", work / "cache",
                CacheConfig(k=2, seed=0, query=(query,), backend="ort", threads=2, context=0), log=lambda m: None)
    adapt(work / "cache", work / "adapter", AdaptConfig(adapter="spatial", steps=360, crop=32, seed=0, threads=1,
                                                        lr=3e-3))
    fuse(trunk5, [work / "adapter"], work / "engine", precisions=("fp32",), log=lambda m: None)
    return work / "engine"


def test_phantom_in_mask_out_on_its_own_grid(engine_dir, phantoms5, tmp_path):
    support, _ = phantoms5
    held_out = sorted(p for p in support.iterdir() if p.is_dir())[0]  # not drawn by k=2, seed 0
    with open_engine(engine_dir, backend="ort", threads=2) as engine:
        (report,) = predict_many(engine, [held_out / "ct.nii.gz"], tmp_path, PredictOptions())
    src = nib.load(str(held_out / "ct.nii.gz"))
    out = nib.load(str(tmp_path / f"{held_out.name}_ct_liver.nii.gz"))
    assert out.shape == src.shape and np.array_equal(out.affine, src.affine)
    truth = np.asarray(nib.load(str(held_out / "segmentations" / "liver.nii.gz")).dataobj)
    assert dice_score(np.asarray(out.dataobj), truth) >= 0.65
    assert report["ran"]["backend"] == "ort-cpu" and report["volume_ml"]["liver"] > 0


@requires_openvino()
def test_real_ct_gives_the_same_mask_on_every_cpu_backend(engine_dir, tmp_path):
    masks, probs = {}, {}
    for backend in ("ort", "openvino"):
        with open_engine(engine_dir, backend=backend, threads=2) as engine:
            predict_many(engine, [EXAMPLE_CT], tmp_path / backend, PredictOptions(save_prob=True))
        masks[backend] = np.asarray(nib.load(str(tmp_path / backend / "example_ct_sm_liver.nii.gz")).dataobj)
        probs[backend] = nib.load(str(tmp_path / backend / "example_ct_sm_liver_prob.nii.gz")).get_fdata()
    assert masks["ort"].shape == nib.load(str(EXAMPLE_CT)).shape
    assert dice_score(masks["ort"], masks["openvino"]) >= 0.99
    # OpenVINO f32 differs from ONNX Runtime by ~1e-3 rel L2 in the trunk; probabilities stay within a few %.
    assert float(np.max(np.abs(probs["ort"] - probs["openvino"]))) < 5e-2


@requires_openvino()
def test_a_predict_run_leaves_nothing_in_the_users_home(engine_dir, phantoms5, tmp_path):
    # ONNX Runtime writes a device id under ~/.cache/Microsoft and `import openvino` a client id under ~/intel
    # unless edgeseg turns their telemetry off: a whole run with HOME empty must leave it empty.
    import os
    import subprocess
    import sys

    support, _ = phantoms5
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "EDGESEG_TELEMETRY")}
    env["HOME"] = str(home)
    for backend in ("ort", "openvino"):
        done = subprocess.run([sys.executable, "-m", "edgeseg", "predict", str(support / "s0000" / "ct.nii.gz"),
                               "--engine", str(engine_dir), "--out", str(tmp_path / backend), "--backend", backend,
                               "--threads", "2", "--json"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []

"""`open_trunk` on a tiny exported trunk: backends, features over volumes and boxes, refusals.

One decoder1 trunk is exported per module (fp32 only, to save time). The pre-decoder1 shape logic
(enc0 full, dec0 half resolution, windows aligned to even voxels) is checked with a stand-in backend
whose outputs are known: enc0 = the input, dec0 = its 2x average pool.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from edgeseg.export.parity import TOLERANCES
from edgeseg.runtime.backends import Backend, BackendInfo, TensorSpec
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import content_hash, read_manifest, write_manifest
from edgeseg.runtime.artifacts.trunk import TrunkManifest
from edgeseg.runtime.preprocess import PreprocessSpec
from edgeseg.runtime.trunk import OpenedTrunk, open_trunk

from tests.conftest import SPEC5
from tests.helpers import ort_session, rel_l2
from tests.skips import requires_openvino

FP32 = TOLERANCES[("fp32", "random")].rel_l2  # the volume is random: the product's fp32 tolerance for it

SPEC = SPEC5  # the shared tiny trunk (tests/conftest.py): one export serves this module and the cache tests
C = SPEC.feature_size


@pytest.fixture(scope="module")
def checkpoint(checkpoint5):
    return checkpoint5


@pytest.fixture(scope="module")
def trunk_dir(trunk5):
    return trunk5


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(3)
    return rng.random((1, 64, 64, 80), dtype=np.float32)


def _reference(trunk_dir, window: np.ndarray) -> np.ndarray:
    """The graph's own output for one window (ONNX Runtime, no sliding window)."""
    sess = ort_session(trunk_dir / "trunk.fp32.onnx")
    return sess.run(None, {"image": window[None]})[0][0]


def test_ort_trunk_reports_what_it_is_and_runs(trunk_dir, volume):
    manifest = read_manifest(trunk_dir, "trunk")
    with open_trunk(trunk_dir, backend="ort", threads=2) as trunk:
        assert trunk.manifest.record == manifest and trunk.manifest_hash == content_hash(manifest) == manifest["manifest_sha256"]
        assert trunk.cut == "decoder1" and trunk.window == (64, 64, 64) and trunk.output_names == ("features",)
        assert trunk.preprocess == SPEC.preprocess and trunk.graph_precision == "fp32"
        assert trunk.ran["backend"] == "ort-cpu" and trunk.ran["precision"] == "fp32"
        assert "ort" in trunk.reason

        # One window exactly: the blend of a single window is that window's output.
        window = volume[:, :, :, :64]
        (whole,) = trunk.features(window)
        assert whole.shape == (C, 64, 64, 64) and whole.dtype == np.float16
        ref = _reference(trunk_dir, window)
        assert rel_l2(whole.astype(np.float32), ref) < 2e-3  # fp16 storage rounding only

        # A box of a wider volume: the box's shape, float32 on request.
        box = (slice(4, 40), slice(0, 64), slice(10, 74))
        (region,) = trunk.features(volume, box, dtype=np.float32)
        assert region.shape == (C, 36, 64, 64) and region.dtype == np.float32
        (full,) = trunk.features(volume, dtype=np.float32)
        assert full.shape == (C, 64, 64, 80)
        # The region ran over the whole volume here (context reaches both ends): the same blend.
        np.testing.assert_allclose(region, full[(slice(None), *box)], rtol=1e-5, atol=1e-5)


@requires_openvino()
def test_openvino_trunk_matches_ort(trunk_dir, volume):
    box = (slice(0, 64), slice(0, 64), slice(8, 72))
    with open_trunk(trunk_dir, backend="openvino", threads=2) as ov, open_trunk(trunk_dir, backend="ort", threads=2) as ort:
        assert ov.ran["backend"] == "openvino" and ov.ran["precision"] == "fp32"
        (a,) = ov.features(volume, box, context=0, dtype=np.float32)
        (b,) = ort.features(volume, box, context=0, dtype=np.float32)
    assert a.shape == b.shape == (C, 64, 64, 64)
    assert rel_l2(a, b) <= FP32


def test_auto_picks_a_cpu_backend_and_says_why(trunk_dir):
    with open_trunk(trunk_dir, threads=2) as trunk:
        assert trunk.ran["backend"] in ("openvino", "ort-cpu")
        assert trunk.reason.startswith(("openvino-fp32", "ort-cpu"))
        assert trunk.graph_precision == "fp32"


def test_torch_backend_rebuilds_the_trunk_from_the_recorded_checkpoint(trunk_dir, volume):
    window = volume[:, :, :, :64]
    with open_trunk(trunk_dir, backend="torch", threads=2) as trunk:
        assert trunk.ran["backend"].startswith("torch")
        (got,) = trunk.features(window, dtype=np.float32)
    assert rel_l2(got, _reference(trunk_dir, window)) <= FP32


def test_torch_backend_refuses_a_changed_checkpoint(trunk_dir, checkpoint, tmp_path):
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(checkpoint.read_bytes() + b" ")
    folder = tmp_path / "trunk"
    folder.mkdir()
    shutil.copy(trunk_dir / "trunk.fp32.onnx", folder / "trunk.fp32.onnx")
    body = {k: v for k, v in read_manifest(trunk_dir, "trunk").items()
            if k not in ("kind", "created", "libraries", "host", "files", "manifest_sha256")}
    body["checkpoint"] = {**body["checkpoint"], "path": str(changed)}
    write_manifest(folder, "trunk", body, ["trunk.fp32.onnx"])
    with pytest.raises(InputError, match="differs from the one this trunk was exported from"):
        open_trunk(folder, backend="torch")
    changed.unlink()
    with pytest.raises(InputError, match="rebuilds the trunk from its checkpoint"):
        open_trunk(folder, backend="torch")


def test_folder_without_manifest_is_refused(trunk_dir, tmp_path):
    shutil.copy(trunk_dir / "trunk.fp32.onnx", tmp_path / "trunk.fp32.onnx")
    with pytest.raises(InputError) as e:
        open_trunk(tmp_path, backend="ort")
    assert "has no manifest.json" in e.value.problem and "edgeseg export" in e.value.fix
    with pytest.raises(InputError, match="no such folder"):
        open_trunk(tmp_path / "nowhere")


def test_edited_manifest_is_refused(trunk_dir, tmp_path):
    folder = tmp_path / "trunk"
    shutil.copytree(trunk_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["cut"] = "pre-decoder1"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="edited after it was written") as e:
        open_trunk(folder, backend="ort")
    assert "edgeseg export" in e.value.fix


def test_missing_graph_and_bad_choices_are_refused_by_name(trunk_dir):
    with pytest.raises(InputError) as e:
        open_trunk(trunk_dir, backend="ort", precision="fp16")
    assert "has no fp16 graph" in e.value.problem and "fp32 (trunk.fp32.onnx)" in e.value.problem
    assert "--precision fp32,fp16" in e.value.fix
    with pytest.raises(InputError, match="has no fp16 graph"):
        open_trunk(trunk_dir, precision="fp16")  # auto too
    with pytest.raises(InputError, match="has no TensorRT engine"):
        open_trunk(trunk_dir, backend="tensorrt")
    with pytest.raises(InputError, match="unknown backend"):
        open_trunk(trunk_dir, backend="onnx")
    with pytest.raises(InputError, match="unknown precision"):
        open_trunk(trunk_dir, precision="int4")
    with pytest.raises(InputError, match="has no int8 graph"):  # a known precision this folder was not exported at
        open_trunk(trunk_dir, backend="ort", precision="int8")
    with pytest.raises(InputError, match="not bf16"):
        open_trunk(trunk_dir, backend="ort", precision="bf16")


def test_a_graph_file_changed_on_disk_is_refused(trunk_dir, tmp_path):
    folder = tmp_path / "trunk"
    shutil.copytree(trunk_dir, folder)
    with open(folder / "trunk.fp32.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InputError, match="differs from the file this manifest recorded"):
        open_trunk(folder, backend="ort")


# --- pre-decoder1 shape logic, with a stand-in backend -----------------------------------------------
class PoolStandIn(Backend):
    """enc0 = the input (C channels of it), dec0 = its 2x average pool: answers known everywhere."""

    name = "stand-in"

    def __init__(self, window=(64, 64, 64), channels=2):
        super().__init__()
        self.window, self.channels = tuple(window), channels
        self.calls = 0

    def _activate(self):
        w = self.window
        self.inputs = (TensorSpec("image", "float32", (None, 1, *w)),)
        self.outputs = (TensorSpec("enc0", "float32", (None, self.channels, *w)),
                        TensorSpec("dec0", "float32", (None, self.channels, *(x // 2 for x in w))))
        self.info = BackendInfo("stand-in", "fp32", "CPU")

    def _predict(self, batch):
        self.calls += 1
        n, _, d, h, w = batch.shape
        enc0 = np.repeat(batch, self.channels, axis=1)
        dec0 = enc0.reshape(n, self.channels, d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(3, 5, 7))
        return enc0, dec0


def stand_in_trunk(folder, spacing=(1.5, 1.5, 1.5)) -> OpenedTrunk:
    spec = PreprocessSpec(window=(64, 64, 64), spacing=spacing)
    body = {"cut": "pre-decoder1", "preprocess": spec.to_dict(), "preprocess_sha256": spec.sha256(),
            "io": {"input": "image", "outputs": ["enc0", "dec0"]}, "graphs": {}, "export_spec": {"max_batch": 2},
            "model_spec": {"in_channels": 1, "feature_size": 2}}
    manifest = write_manifest(folder, "trunk", body, [])
    return OpenedTrunk(folder, TrunkManifest.from_record(manifest), PoolStandIn(), precision="fp32", reason="stand-in")


def _pool2(x):
    c, d, h, w = x.shape
    return x.reshape(c, d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(2, 4, 6))


def test_pre_decoder1_outputs_full_and_half_resolution_aligned(tmp_path):
    trunk = stand_in_trunk(tmp_path)
    assert trunk.align == 2 and trunk.output_names == ("enc0", "dec0")
    vol = np.random.default_rng(0).random((1, 71, 66, 90), dtype=np.float32)
    enc0, dec0 = trunk.features(vol, dtype=np.float32)
    assert enc0.shape == (2, 71, 66, 90) and dec0.shape == (2, 36, 33, 45)  # ceil(n / 2)
    np.testing.assert_allclose(enc0[0], vol[0], atol=1e-6)
    np.testing.assert_allclose(dec0[0, :35], _pool2(vol[:, :70])[0], atol=1e-6)

    box = (slice(6, 70), slice(0, 66), slice(20, 88))  # even box: dec0 is exactly box / 2
    enc0, dec0 = trunk.features(vol, box, batch_size=2)
    assert enc0.shape == (2, 64, 66, 68) and dec0.shape == (2, 32, 33, 34) and enc0.dtype == np.float16
    ref = _pool2(vol[(slice(None), *box)])[0]
    np.testing.assert_allclose(dec0[1].astype(np.float32), ref, atol=2e-3)
    np.testing.assert_allclose(enc0[1].astype(np.float32), vol[(0, *box)], atol=2e-3)


def test_features_refuses_bad_volumes_and_batches(tmp_path):
    trunk = stand_in_trunk(tmp_path)
    with pytest.raises(InputError, match=r"\(C, D, H, W\)"):
        trunk.features(np.zeros((64, 64, 64), np.float32))
    with pytest.raises(InputError, match="channel"):
        trunk.features(np.zeros((2, 64, 64, 64), np.float32))
    with pytest.raises(InputError, match="exported maximum 2"):
        trunk.features(np.zeros((1, 64, 64, 64), np.float32), batch_size=3)


def test_a_folder_with_no_graph_says_so(tmp_path):
    stand_in_trunk(tmp_path)
    with pytest.raises(InputError, match="has no fp32 graph; it holds no graph at all"):
        open_trunk(tmp_path, backend="ort")

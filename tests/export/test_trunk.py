"""`edgeseg export` end to end on a tiny SwinUNETR: graphs, parity reports, manifest, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from edgeseg.export import parity
from edgeseg.export.parity import ParityError, Tolerance
from edgeseg.export.trunk import (
    check_graph,
    mask_function,
    parity_inputs,
    torch_outputs,
)
from edgeseg.runtime.backends import open_backend
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.preprocess import PreprocessSpec
from typer.testing import CliRunner

from edgeseg.cli import app
from edgeseg.model.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.model.spec import CUTS, TINY_TEST_SPEC, ModelSpec
from edgeseg.model.swinunetr import build_swinunetr, split

SPEC = ModelSpec(**TINY_TEST_SPEC, out_channels=3, class_names=("liver", "spleen", "kidney_left"),
                 preprocess=PreprocessSpec(window=(64, 64, 64)))
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(build_swinunetr(SPEC), SPEC, path)
    return path


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory):
    """Both cuts exported once through the CLI: {cut: (out folder, printed manifest)}."""
    made = {}
    for cut in CUTS:
        out = tmp_path_factory.mktemp(f"trunk-{cut}")
        result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--cut", cut, "--batch", "2", "--json"])
        assert result.exit_code == 0, result.output
        made[cut] = (out, json.loads(result.stdout))
    return made


@pytest.fixture(params=CUTS)
def exported(request, exports):
    return (request.param, *exports[request.param])


def test_manifest_describes_what_was_made_and_checks_out(exported, checkpoint):
    cut, out, printed = exported
    m = read_manifest(out, "trunk")  # verifies the self-hash and every file's sha256
    assert m == printed
    assert set(m["files"]) == {"trunk.fp32.onnx", "trunk.fp16.onnx"}
    assert m["cut"] == cut and m["export_spec"]["max_batch"] == 2 and m["export_spec"]["window"] == [64, 64, 64]
    assert m["model_spec"]["feature_size"] == 12 and m["model_spec"]["class_names"] == ["liver", "spleen", "kidney_left"]
    assert m["preprocess"]["spacing"] == [1.5, 1.5, 1.5] and len(m["preprocess_sha256"]) == 64
    from edgeseg.runtime.manifest import sha256_file

    assert m["checkpoint"]["sha256"] == sha256_file(checkpoint)
    assert m["graphs"]["fp32"]["export"]["opset"] >= 17 and m["graphs"]["fp32"]["export"]["exporter_reason"]
    for precision in ("fp32", "fp16"):
        report = m["graphs"][precision]["parity"]
        assert report["passed"] and {c["input"] for c in report["cases"]} == {"random", "real_ct", "phantom"}
    fp32 = {c["input"]: c for c in m["graphs"]["fp32"]["parity"]["cases"]}
    for name in ("random", "real_ct", "phantom"):
        assert fp32[name]["rel_l2"] <= parity.tolerance_for("fp32", name).rel_l2
    assert m["io"]["outputs"] == (["features"] if cut == "decoder1" else ["enc0", "dec0"])


def test_exported_graph_runs_a_batch_of_two_like_pytorch(exported, checkpoint):
    cut, out, _ = exported
    model, _, _ = load_checkpoint(checkpoint)
    trunk, _ = split(model, cut)
    x = np.random.default_rng(1).random((2, 1, 64, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        ref = trunk(torch.from_numpy(x))
    ref = ref if isinstance(ref, tuple) else (ref,)
    with open_backend("ort", out / "trunk.fp32.onnx") as backend:
        got = backend.predict(x)
    assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
    for r, g in zip(ref, got):
        assert parity.rel_l2(r.numpy(), g) <= parity.TOLERANCES[("fp32", "random")].rel_l2


def test_existing_export_is_not_overwritten_without_force(exported, checkpoint):
    _, out, _ = exported
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--json"])
    assert result.exit_code == 2
    assert "--force" in json.loads(result.stdout)["fix"]


def test_a_parity_miss_fails_and_keeps_the_graph_under_a_rejected_name(exports, checkpoint, monkeypatch, tmp_path):
    cut = "decoder1"
    out, _ = exports[cut]
    graph = tmp_path / "trunk.fp16.onnx"
    graph.write_bytes((out / "trunk.fp16.onnx").read_bytes())
    model, _, _ = load_checkpoint(checkpoint)
    trunk, head = split(model, cut)
    inputs = {k: v for k, v in parity_inputs(SPEC).items() if k == "random"}
    reference = torch_outputs(trunk, inputs)
    # A tolerance no fp16 graph can meet stands in for a broken export.
    monkeypatch.setitem(parity.TOLERANCES, ("fp16", "random"), Tolerance(rel_l2=1e-9, mask_flip=0.0))
    with pytest.raises(ParityError, match="parity check failed") as e:
        check_graph(graph, "fp16", inputs, reference, mask_function(head), threads=None, files=[graph])
    assert "FAIL" in e.value.message and "random" in e.value.message
    assert not graph.exists() and (tmp_path / "trunk.fp16.onnx.rejected").exists()
    report = json.loads((tmp_path / "trunk.fp16.onnx.parity.rejected.json").read_text())
    assert report["passed"] is False and report["cases"][0]["rel_l2"] > 1e-9


def test_bad_precision_and_tensorrt_without_fp16_are_input_errors(checkpoint, tmp_path):
    for args, needle in ((["--precision", "int4"], "choose from fp32, fp16, int8"),
                         (["--precision", "fp32", "--tensorrt"], "fp16")):
        result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "x"), *args, "--json"])
        assert result.exit_code == 2, result.output
        assert needle in json.loads(result.stdout)["problem"]


def test_parity_inputs_are_real_windows():
    inputs = parity_inputs(SPEC)
    assert set(inputs) == {"random", "real_ct", "phantom"}
    for x in inputs.values():
        assert x.shape == (1, 1, 64, 64, 64) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    # The CT windows hold anatomy (soft tissue in the HU window), not padding.
    assert 0.2 < float(np.mean((inputs["real_ct"] > 0.05) & (inputs["real_ct"] < 0.95)))
    assert 0.2 < float(np.mean((inputs["phantom"] > 0.05) & (inputs["phantom"] < 0.95)))

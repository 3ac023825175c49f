"""Skip logic: every configuration that cannot run here is a row with the reason, never a fake measurement."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.bench.configs import BY_NAME, CONFIGS, plan, reference_candidates, select_configs
from edgeseg.runtime.artifacts.engine import EngineManifest
from edgeseg.runtime.artifacts.trunk import TrunkManifest
from edgeseg.runtime.availability import BackendStatus
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.preprocess import PreprocessSpec

PROBES = ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-tensorrt", "openvino", "tensorrt")


def statuses(usable=("torch-cpu", "ort-cpu", "openvino")) -> dict:
    return {n: BackendStatus(n, n in usable, f"{n} detail" if n in usable else f"{n} is missing here",
                             "" if n in usable else f"install {n}") for n in PROBES}


PRE = PreprocessSpec(window=(64, 64, 64)).to_dict()


def trunk_manifest(tmp_path: Path, graphs=("fp32",), engines=None, max_batch=4, checkpoint=True) -> TrunkManifest:
    ckpt = tmp_path / "ckpt.safetensors"
    if checkpoint:
        ckpt.write_bytes(b"x")
    return TrunkManifest.from_record({
        "graphs": {g: {"file": f"trunk.{g}.onnx"} for g in graphs}, "engines": engines or {},
        "export_spec": {"max_batch": max_batch}, "checkpoint": {"path": str(ckpt)}, "cut": "decoder1",
        "preprocess": PRE, "io": {"input": "image", "outputs": ["features"]}, "model_spec": {"in_channels": 1}})


def engine_manifest() -> EngineManifest:
    return EngineManifest.from_record({
        "graphs": {"fp32": {"file": "fused.fp32.onnx"}}, "engines": {}, "export_spec": {"max_batch": 4},
        "organs": ["liver"], "io": {"input": "image", "outputs": ["prob_liver"]}, "preprocess": PRE,
        "window": [64, 64, 64]})


def by_key(rows):
    return {(r.config.name, r.batch): r.skip for r in rows}


def test_unusable_backend_is_skipped_with_the_probe_reason_and_hint(tmp_path):
    rows = by_key(plan("trunk", trunk_manifest(tmp_path, graphs=("fp32", "fp16")), CONFIGS, statuses(), [1, 4]))
    assert len(rows) == 2 * len(CONFIGS)
    for name in ("torch-cuda-fp32", "torch-cuda-fp16-compile"):
        assert rows[(name, 1)] == "torch-cuda is missing here (to enable: install torch-cuda)"
    assert rows[("ort-tensorrt-fp16", 4)] == "ort-tensorrt is missing here (to enable: install ort-tensorrt)"
    assert rows[("tensorrt-fp16", 1)].startswith("tensorrt is missing here")
    for name in ("torch-cpu-fp32", "torch-cpu-bf16", "ort-cpu-fp32", "ort-cpu-fp16", "openvino-fp32", "openvino-bf16"):
        assert rows[(name, 1)] is None and rows[(name, 4)] is None, name


def test_a_usable_backend_without_its_artifact_says_what_is_missing(tmp_path):
    every = statuses(PROBES)
    rows = by_key(plan("trunk", trunk_manifest(tmp_path, graphs=("fp32",)), CONFIGS, every, [1]))
    assert "no fp16 graph" in rows[("ort-cpu-fp16", 1)] and "fp32" in rows[("ort-cpu-fp16", 1)]
    assert "no fp16 graph" in rows[("ort-tensorrt-fp16", 1)]
    assert "no TensorRT engine" in rows[("tensorrt-fp16", 1)]
    assert rows[("ort-cuda-fp32", 1)] is None and rows[("torch-cuda-fp16-graphs", 1)] is None


def test_availability_is_the_reason_before_the_artifact(tmp_path):
    rows = by_key(plan("trunk", trunk_manifest(tmp_path, graphs=("fp32",)), CONFIGS, statuses(), [1]))
    assert rows[("tensorrt-fp16", 1)].startswith("tensorrt is missing here")  # not "no TensorRT engine"


def test_batches_beyond_the_export_are_skipped_except_for_torch(tmp_path):
    rows = by_key(plan("trunk", trunk_manifest(tmp_path, max_batch=2), CONFIGS, statuses(), [1, 4]))
    assert rows[("ort-cpu-fp32", 1)] is None
    assert "batches 1..2" in rows[("ort-cpu-fp32", 4)] and "--batch 4" in rows[("ort-cpu-fp32", 4)]
    assert rows[("torch-cpu-fp32", 4)] is None


def test_torch_needs_the_checkpoint_and_engines_have_no_torch(tmp_path):
    rows = by_key(plan("trunk", trunk_manifest(tmp_path, checkpoint=False), CONFIGS, statuses(), [1]))
    assert "checkpoint" in rows[("torch-cpu-fp32", 1)]
    rows = by_key(plan("engine", engine_manifest(), CONFIGS, statuses(), [1]))
    assert "no torch backend" in rows[("torch-cpu-fp32", 1)]
    assert rows[("ort-cpu-fp32", 1)] is None


def test_reference_is_torch_fp32_else_ort_fp32_even_when_not_selected(tmp_path):
    m = trunk_manifest(tmp_path)

    def names(kind, st, manifest):
        return [c.name for c in reference_candidates(kind, st, manifest)]

    assert names("trunk", statuses(), m) == ["torch-cpu-fp32", "ort-cpu-fp32"]
    assert names("trunk", statuses(("ort-cpu",)), m) == ["ort-cpu-fp32"]
    elsewhere = tmp_path / "no-checkpoint"
    elsewhere.mkdir()
    assert names("trunk", statuses(), trunk_manifest(elsewhere, checkpoint=False)) == ["ort-cpu-fp32"]
    assert names("engine", statuses(), engine_manifest()) == ["ort-cpu-fp32"]
    assert names("trunk", statuses(()), m) == []


def test_select_configs_by_name_and_prefix():
    assert [c.name for c in select_configs("ort-cpu")] == ["ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8"]
    assert {c.backend for c in select_configs("ort")} == {"ort"}
    assert [c.name for c in select_configs("openvino-bf16,torch-cpu-fp32")] == ["torch-cpu-fp32", "openvino-bf16"]
    assert select_configs("all") == list(CONFIGS) == select_configs(None)
    with pytest.raises(InputError, match="names no benchmark configuration"):
        select_configs("cuda-magic")
    assert BY_NAME["ort-tensorrt-fp16"].device == "tensorrt"


def test_plan_refuses_unknown_kind(tmp_path):
    with pytest.raises(InputError):
        plan("model", trunk_manifest(tmp_path), CONFIGS, statuses(), [1])

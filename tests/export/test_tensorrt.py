"""TensorRT engine keys and the engine-inspector parser: pure logic, testable without TensorRT."""

from __future__ import annotations

import json
import re

import pytest
from edgeseg.export.tensorrt import (
    build_engine,
    check_engine_key,
    engine_key,
    engine_key_differences,
    engine_key_from_facts,
    key_string,
    plan_name,
)
from edgeseg.runtime.backends.tensorrt import (
    half_fraction,
    layer_precisions,
    precision_label,
)
from edgeseg.runtime.errors import BackendUnavailable, InputError

from tests.skips import requires_trt, trt_missing

REBUILD = "edgeseg export CHECKPOINT --out DIR --tensorrt"
BUILT = engine_key_from_facts("10.13.3.9", "NVIDIA GeForce RTX 3060", "8.6", "12.8")


def test_key_string_is_short_and_file_name_safe():
    assert key_string(BUILT) == "trt10.13.3.9-sm86-cu12.8-rtx-3060"
    assert plan_name(BUILT) == "trunk.trt10.13.3.9-sm86-cu12.8-rtx-3060.plan"
    h100 = engine_key_from_facts("11.0.0.1", "NVIDIA H100 80GB HBM3", "9.0", "13.0")
    assert key_string(h100) == "trt11.0.0.1-sm90-cu13.0-h100-80gb-hbm3"
    assert re.fullmatch(r"[A-Za-z0-9.\-]+", key_string(engine_key_from_facts("10.8", "Orin (nvgpu)", "8.7", "12.6")))


def test_same_key_passes():
    check_engine_key(dict(BUILT), dict(BUILT))
    assert engine_key_differences(BUILT, BUILT) == []


def test_gpu_mismatch_names_gpu_and_compute_capability_and_the_rebuild_command():
    here = engine_key_from_facts("10.13.3.9", "Tesla T4", "7.5", "12.8")
    with pytest.raises(InputError) as e:
        check_engine_key(BUILT, here, path="engine/trunk.plan")
    msg = e.value.message
    assert "GPU: engine built with NVIDIA GeForce RTX 3060, this machine has Tesla T4" in msg
    assert "compute capability: engine built with 8.6, this machine has 7.5" in msg
    assert "TensorRT version" not in msg and "CUDA:" not in msg
    assert REBUILD in msg and msg.startswith("engine/trunk.plan: ")
    assert e.value.exit_code == 2


@pytest.mark.parametrize("field,value,label", [
    ("tensorrt", "11.0.0.1", "TensorRT version"),
    ("cuda", "13.0", "CUDA"),
])
def test_one_field_mismatch_names_only_that_field(field, value, label):
    here = {**BUILT, field: value}
    with pytest.raises(InputError) as e:
        check_engine_key(BUILT, here)
    diffs = engine_key_differences(BUILT, here)
    assert len(diffs) == 1 and diffs[0].startswith(f"{label}: engine built with {BUILT[field]}, this machine has {value}")
    assert diffs[0] in e.value.message and REBUILD in e.value.message


def test_missing_or_absent_key_is_refused():
    partial = {k: v for k, v in BUILT.items() if k != "cuda"}
    with pytest.raises(InputError, match=r"CUDA: engine built with \(not recorded\)"):
        check_engine_key(partial, BUILT)
    with pytest.raises(InputError, match="has no engine key") as e:
        check_engine_key(None, BUILT)
    assert REBUILD in e.value.message


def _layers(entries):
    return json.dumps({"Layers": entries, "Bindings": ["image", "features"]})


def test_half_fraction_reads_tensorrt_10_and_11_inspector_json():
    def layer(name, fmt):
        return {"Name": name, "LayerType": "x", "Outputs": [{"Name": name + ":0", "Format/Datatype": fmt}]}

    trt10 = _layers([
        layer("cast", "Row major linear FP16 format"),
        layer("conv", "Channel major FP16 format where channel % 8 == 0"),
        layer("ln", "Float"),  # abbreviated form, when no execution context is set
        layer("out", "Row major linear FP32 format"),
    ])
    assert layer_precisions(trt10) == {"half": 2, "float": 2}
    assert half_fraction(trt10) == 0.5
    trt11 = json.dumps({"I/O Tensors": [{"Name": "image", "IOMode": "Input", "DataType": "Float"}], "Layers": [
        {"Name": "conv", "Outputs": [{"Name": "b", "DataType": "Half", "Format": "Channel major FP16 format (kHWC8)"}]},
        {"Name": "shape", "Outputs": [{"Name": "s", "DataType": "Int32", "Format": "Row major linear INT32 format"}]},
        {"Name": "sm", "Outputs": [{"Name": "c", "DataType": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}]},
    ]})
    assert layer_precisions(trt11) == {"half": 1, "other": 1, "float": 1}
    assert half_fraction(trt11) == pytest.approx(1 / 3)


def test_half_fraction_of_fp32_and_of_engines_without_layer_detail():
    fp32 = _layers([{"Name": "conv", "Outputs": [{"Format/Datatype": "Row major linear FP32 format"}]}])
    assert half_fraction(fp32) == 0.0 and precision_label(0.0, ["float32"]) == "fp32"
    names_only = _layers(["conv + relu", "reformat"])  # built with ProfilingVerbosity.LAYER_NAMES_ONLY
    assert layer_precisions(names_only) is None and half_fraction(names_only) is None
    assert precision_label(0.75, ["float32"]) == "fp16 (strongly typed, 75% of layers half)"


@pytest.mark.skipif(trt_missing() is None or not trt_missing().startswith("TensorRT not installed"),
                    reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_says_how_to_install(tmp_path):
    graph = tmp_path / "trunk.fp16.onnx"
    graph.write_bytes(b"graph")
    with pytest.raises(BackendUnavailable, match=r"pip install 'edgeseg\[trt\]'"):
        build_engine(graph, tmp_path / "trunk.plan")
    with pytest.raises(InputError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "trunk.plan")
    with pytest.raises(InputError, match="1 <= min <= opt <= max"):
        build_engine(graph, tmp_path / "trunk.plan", min_batch=2, opt_batch=1, max_batch=4)


@requires_trt()
def test_engine_key_of_this_machine():
    key, short = engine_key()
    assert set(key) == {"tensorrt", "gpu", "compute_capability", "cuda"} and all(key.values())
    assert short == key_string(key) and re.fullmatch(r"trt[0-9.]+-sm\d+-cu[0-9.]+-[a-z0-9\-]+", short)
    check_engine_key(key, key)


# --- the product's own TensorRT path (has not run yet: no TensorRT and no GPU where it was written) ---
@pytest.mark.slow
@requires_trt()
def test_export_and_fuse_build_engines_that_pick_engine_finds_among_other_machines_plans(checkpoint5, tmp_path):
    """`export_trunk(..., tensorrt=True)` and `fuse(..., tensorrt=True)` on the tiny model, as the CLI runs them:
    each builds a strongly typed plan from its own mixed fp16 graph and checks its parity against PyTorch
    fp32 (`parity.TOLERANCES`); then, in a folder that also holds plans of other machines (sorted first),
    `pick_engine` takes this machine's, `open_engine` runs it, and another machine's plan is refused."""
    import shutil

    import numpy as np
    import torch
    from edgeseg.export import parity
    from edgeseg.export.adapter import save_adapter
    from edgeseg.export.fuse import fuse
    from edgeseg.export.trunk import export_trunk
    from edgeseg.runtime.artifacts.adapter import AdapterIO, AdapterManifest
    from edgeseg.runtime.artifacts.engine import EngineManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest
    from edgeseg.runtime.backends import open_backend
    from edgeseg.runtime.engine import open_engine
    from edgeseg.runtime.manifest import content_hash, write_manifest

    from edgeseg.adapters import build_adapter

    quiet = lambda msg: None  # noqa: E731
    trunk_dir = tmp_path / "trunk"
    trunk = export_trunk(checkpoint5, trunk_dir, precisions=("fp32", "fp16"), max_batch=2, tensorrt=True, log=quiet)
    key, here = engine_key()
    assert list(trunk["engines"]) == [here] and trunk["engines"][here]["parity"]["passed"]
    assert trunk["engines"][here]["build"]["strongly_typed"] and trunk["engines"][here]["build"]["half_fraction"] > 0
    plan, plan_key = TrunkManifest.from_folder(trunk_dir).pick_engine(trunk_dir, required=True)
    assert plan == trunk_dir / plan_name(key) and plan_key == key

    torch.manual_seed(0)
    adapter_dir = tmp_path / "liver"
    fs = trunk["model_spec"]["feature_size"]
    save_adapter(build_adapter("lp", feature_size=fs), adapter_dir, AdapterManifest(
        adapter="lp", organ="liver", cut="decoder1", feature_size=fs, trunk_manifest_sha256=content_hash(trunk),
        io=AdapterIO(tuple(trunk["io"]["outputs"]), "logits")))
    engine_dir = tmp_path / "engine"
    fused = fuse(trunk_dir, [adapter_dir], engine_dir, precisions=("fp32", "fp16"), tensorrt=True, log=quiet)
    assert list(fused["engines"]) == [here] and fused["engines"][here]["parity"]["passed"]
    assert fused["engines"][here]["file"] == plan_name(key, stem="fused")

    # Plans of two other machines beside this one's, sorted before it: the first plan is not the answer.
    others = [engine_key_from_facts("1.0", "Another GPU", "7.5", "11.8"),
              engine_key_from_facts("1.1", "Yet Another GPU", "8.0", "12.0")]
    body = {k: v for k, v in fused.items() if k not in ("kind", "created", "libraries", "host", "files",
                                                         "manifest_sha256")}
    engines = dict(fused["engines"])
    files = list(fused["files"])
    for other in others:
        name = plan_name(other, stem="fused")
        shutil.copy(engine_dir / fused["engines"][here]["file"], engine_dir / name)
        engines[key_string(other)] = {**fused["engines"][here], "file": name, "key": other}
        files.append(name)
    write_manifest(engine_dir, "engine", {**body, "engines": engines}, files, force=True)
    manifest = EngineManifest.from_folder(engine_dir)
    assert sorted(manifest.engines)[0] != here and len(manifest.engines) == 3
    plan, plan_key = manifest.pick_engine(engine_dir, required=True)
    assert plan.name == plan_name(key, stem="fused") and plan_key == key

    volume = np.random.default_rng(0).random((1, 70, 64, 80), dtype=np.float32)
    with open_engine(engine_dir, backend="tensorrt") as eng:
        assert eng.graph_precision == "fp16" and eng.ran["backend"] == "tensorrt"
        got = eng.probabilities(volume)
    with open_engine(engine_dir, backend="ort", precision="fp32") as eng:
        ref = eng.probabilities(volume)
    report = parity.compare({"volume": (ref,)}, {"volume": (got,)}, lambda outs: outs[0] > 0.5,
                            artifact=plan.name, backend="tensorrt", precision="fp16")
    assert report.passed, report.lines()
    with pytest.raises(InputError, match="GPU: engine built with Another GPU"):
        open_backend("tensorrt", engine_dir / plan_name(others[0], stem="fused"), manifest_key=others[0]).activate()

"""Inference backends against PyTorch eager on a tiny SwinUNETR trunk (64^3 window).

CPU backends (ONNX Runtime, OpenVINO, torch) run here; GPU/TensorRT tests are marked and skipped,
with the reason, through tests/skips.py, and run wherever a GPU (and TensorRT) is present.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgeseg.export.parity import TOLERANCES
from edgeseg.runtime.backends import (
    PREFERENCE,
    Candidate,
    TensorSpec,
    choose_backend,
    default_candidates,
    open_backend,
)
from edgeseg.runtime.backends.openvino import ran_precision
from edgeseg.runtime.backends.ort import OrtBackend
from edgeseg.runtime.errors import BackendUnavailable, InputError
from edgeseg.runtime.graph import inspect_graph
from onnx import TensorProto, helper, numpy_helper

from edgeseg.model.swinunetr import build_swinunetr, split
from tests.helpers import TINY, rel_l2, run_without_torch
from tests.skips import (
    openvino_marks,
    openvino_missing,
    ort_gpu_missing,
    requires_gpu,
    requires_openvino,
    requires_ort_gpu,
    requires_trt,
    trt_missing,
)

WINDOW = (64, 64, 64)
# Every backend is held to the tolerance the product holds its exports to (random input windows).
FP32, FP16, BF16 = (TOLERANCES[(p, "random")].rel_l2 for p in ("fp32", "fp16", "bf16"))
TF32 = TOLERANCES[("tf32", "random")].rel_l2  # fp32 graphs on NVIDIA GPUs


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny trunk, its fp32 ONNX export (batch dynamic), one input window and torch eager's features."""
    torch.manual_seed(0)
    spec = TINY
    trunk, _ = split(build_swinunetr(spec).eval(), "decoder1")
    x = torch.rand(1, 1, *WINDOW)
    path = tmp_path_factory.mktemp("tiny") / "trunk.fp32.onnx"
    torch.onnx.export(trunk, x, str(path), input_names=["image"], output_names=["features"],
                      dynamic_axes={"image": {0: "N"}, "features": {0: "N"}}, opset_version=18, dynamo=False)
    with torch.inference_mode():
        ref = trunk(x).numpy()
    return {"trunk": trunk, "onnx": path, "x": x.numpy(), "ref": ref}


def _toy_graph(path: Path, fp16: bool) -> Path:
    """A one-Conv graph (image (N,1,8,8,8) -> features (N,4,8,8,8)); fp16: Cast -> fp16 Conv -> Cast, like a mixed export."""
    w = np.random.default_rng(0).standard_normal((4, 1, 3, 3, 3)).astype(np.float16 if fp16 else np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1] * 6)]
    if fp16:
        nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT16), *nodes,
                 helper.make_node("Cast", ["y"], ["features"], to=TensorProto.FLOAT)]
    else:
        nodes = [helper.make_node("Identity", ["image"], ["x"]), *nodes, helper.make_node("Identity", ["y"], ["features"])]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8, 8])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4, 8, 8, 8])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return _toy_graph(tmp_path_factory.mktemp("toy") / "toy.fp32.onnx", fp16=False)


@pytest.fixture(scope="module")
def toy16(tmp_path_factory) -> Path:
    return _toy_graph(tmp_path_factory.mktemp("toy16") / "toy.fp16.onnx", fp16=True)


@pytest.fixture
def dummy_plan(tmp_path) -> Path:
    path = tmp_path / "trunk.plan"
    path.write_bytes(b"not an engine")
    return path


def toy_input(n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).random((n, 1, 8, 8, 8), dtype=np.float32)


# --- parity with torch eager -----------------------------------------------------------------------
def test_ort_cpu_matches_torch_eager(tiny):
    backend = open_backend("ort", tiny["onnx"], threads=2)
    with backend:
        (feats,) = backend.predict(np.concatenate([tiny["x"], tiny["x"]]))  # dynamic batch
        info = backend.describe()
    assert feats.shape == (2, 12, *WINDOW) and feats.dtype == np.float32
    for sample in feats:
        assert rel_l2(sample, tiny["ref"][0]) <= FP32
    assert backend.inputs == (TensorSpec("image", "float32", (None, 1, *WINDOW)),)
    assert backend.outputs == (TensorSpec("features", "float32", (None, 12, *WINDOW)),)
    assert (info.backend, info.precision) == ("ort-cpu", "fp32")
    assert info.device.startswith("CPU (") and "2 threads" in info.device
    assert info.detail["providers"] == ["CPUExecutionProvider"] and info.load_seconds > 0


@requires_openvino()
def test_openvino_fp32_matches_torch_eager(tiny):
    with open_backend("openvino", tiny["onnx"], precision="fp32", threads=2) as backend:
        (feats,) = backend.predict(tiny["x"])
        info = backend.describe()
    assert rel_l2(feats, tiny["ref"]) <= FP32  # measured 1.4e-5
    assert (info.backend, info.precision) == ("openvino", "fp32")
    assert info.detail["requested_hint"] == "f32" and info.detail["compiled_hint"] == "f32"
    assert set(info.detail["compute_layer_precisions"]) == {"f32"}, info.detail["compute_layer_precisions"]
    assert info.device.startswith("CPU (") and info.detail["threads"] == 2


@requires_openvino()
def test_openvino_bf16_runs_and_reports_what_ran(tiny):
    with open_backend("openvino", tiny["onnx"], precision="bf16", threads=2) as backend:
        (feats,) = backend.predict(tiny["x"])
        info = backend.describe()
    error = rel_l2(feats, tiny["ref"])
    if "BF16" in info.detail["cpu_capabilities"]:
        assert info.precision == "bf16" and info.detail["compiled_hint"] == "bf16"
        assert "bf16" in info.detail["compute_layer_precisions"]
        assert FP32 < error <= BF16  # really bf16 (not f32), and close enough
    else:  # OpenVINO drops a bf16 hint the CPU cannot honour: the record must say f32 ran
        assert info.precision == "fp32" and "no native bf16" in info.detail["note"]
        assert error <= FP32


def test_torch_backend_matches_eager(tiny):
    with open_backend("torch", tiny["trunk"], threads=2) as backend:
        (feats,) = backend.predict(tiny["x"])
        info = backend.describe()
    assert rel_l2(feats, tiny["ref"]) <= FP32
    assert (info.backend, info.precision) == ("torch-cpu", "fp32") and info.device.startswith("CPU (")
    assert backend.inputs[0] == TensorSpec("image", "float32", (None, 1, None, None, None))
    assert backend.outputs[0].shape == (None, 12, *WINDOW)


# --- small graphs: precision, options, input checks ------------------------------------------------
def test_ort_fp16_graph_on_cpu_reports_mixed_graph_and_note(toy16):
    assert inspect_graph(toy16)["precision"] == "fp16"
    with open_backend("ort", toy16) as backend:
        (out,) = backend.predict(toy_input())
        info = backend.describe()
    assert out.dtype == np.float32 and out.shape == (2, 4, 8, 8, 8)
    assert info.precision == "fp16 (mixed graph)" and info.detail["graph_precision"] == "fp16"
    assert "no fp16 Conv/MatMul kernels" in info.detail["note"]


def test_ort_refuses_a_precision_the_graph_does_not_have(toy, toy16):
    with pytest.raises(InputError, match="precision 'fp16' was asked for") as e:
        open_backend("ort", toy, precision="fp16").activate()
    assert "fp16 export" in e.value.message
    with pytest.raises(InputError, match="mixed fp16 graph"):
        open_backend("ort", toy16, precision="fp32").activate()
    with pytest.raises(InputError, match="bf16 on CPU: the 'openvino' backend"):
        open_backend("ort", toy, precision="bf16")


def test_ort_without_cpu_arena(toy):
    with open_backend("ort", toy, arena=False, threads=1) as backend:
        (out,) = backend.predict(toy_input(1))
        assert backend.describe().detail["cpu_mem_arena"] is False
    assert out.shape == (1, 4, 8, 8, 8)


def test_ort_gpu_provider_options_are_built_for_the_batch_range(tmp_path):
    backend = OrtBackend("trunk.fp16.onnx", device="tensorrt", cache_dir=tmp_path, min_batch=1, opt_batch=2, max_batch=4,
                         gpu_mem_limit=6 << 30)
    graph = {"inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 1, 96, 96, 96]}]}
    (trt_name, trt), (cuda_name, cuda), cpu = backend.providers(graph)
    assert (trt_name, cuda_name, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt["trt_fp16_enable"] is False  # fp16 comes from the graph; True would mean weak typing
    assert trt["trt_profile_min_shapes"] == "image:1x1x96x96x96"
    assert trt["trt_profile_opt_shapes"] == "image:2x1x96x96x96"
    assert trt["trt_profile_max_shapes"] == "image:4x1x96x96x96"
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_timing_cache_enable"] and "trt_max_workspace_size" in trt and "trt_builder_optimization_level" in trt
    assert cuda == {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE", "gpu_mem_limit": 6 << 30}
    assert OrtBackend("g.onnx", device="cuda").providers(graph)[1] == "CPUExecutionProvider"


def _conv_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1))


INPUT_BACKENDS = ["ort", pytest.param("openvino", marks=openvino_marks()), "torch"]


def _small_backend(kind: str, toy: Path):
    if kind == "torch":
        return open_backend("torch", _conv_module(), input_shape=(1, 8, 8, 8))
    return open_backend(kind, toy)


@pytest.mark.parametrize("kind", INPUT_BACKENDS)
def test_every_backend_checks_its_input_once(kind, toy):
    with _small_backend(kind, toy) as backend:
        (out,) = backend.predict(toy_input(3))
        assert out.shape == (3, 4, 8, 8, 8) and out.dtype == np.float32
        info = backend.describe()
        assert info.precision and info.device and info.backend.startswith(kind)
        with pytest.raises(InputError, match=r"has dtype float64, the graph takes float32") as e:
            backend.predict(toy_input().astype(np.float64))
        assert "astype(np.float32)" in e.value.message
        with pytest.raises(InputError, match=r"has shape \(1, 8, 8, 8\), the graph takes \('N', 1, 8, 8, 8\)"):
            backend.predict(toy_input()[0])  # ndim 4
        with pytest.raises(InputError, match=r"has shape \(2, 1, 8, 8, 16\), the graph takes \('N', 1, 8, 8, 8\)") as e:
            backend.predict(np.zeros((2, 1, 8, 8, 16), np.float32))
        assert "only the batch size may vary" in e.value.message
        with pytest.raises(InputError, match="must be a numpy array"):
            backend.predict(toy_input().tolist())


def test_a_backend_runs_only_when_activated(toy):
    backend = open_backend("ort", toy)
    with pytest.raises(RuntimeError, match="not active: activate"):
        backend.predict(toy_input(1))  # loading is the caller's decision, not a side effect of predict
    with backend:
        assert backend.is_active and backend.predict(toy_input(1))[0].shape == (1, 4, 8, 8, 8)
    assert not backend.is_active
    with pytest.raises(RuntimeError, match="not active"):
        backend.predict(toy_input(1))


def test_the_batch_range_is_checked_with_the_input():
    from edgeseg.runtime.backends import check_batch

    spec = TensorSpec("image", "float32", (None, 1, 8, 8, 8), batch_range=(1, 2))
    check_batch(toy_input(2), spec)
    with pytest.raises(InputError, match=r"batch of 3 is outside 1\.\.2") as e:
        check_batch(toy_input(3), spec)
    assert "split the batch" in e.value.fix
    assert spec.to_dict()["batch_range"] == [1, 2] and "batch_range" not in TensorSpec("x", "float32", (1,)).to_dict()


def test_torch_backend_precisions_and_devices():
    with pytest.raises(InputError, match="fp16 autocast runs on CUDA only"):
        open_backend("torch", _conv_module(), precision="fp16")
    with pytest.raises(InputError, match="CUDA graphs need device='cuda'"):
        open_backend("torch", _conv_module(), cuda_graphs=True)
    module = _conv_module()
    x = toy_input(1)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()
    with open_backend("torch", module, precision="bf16") as backend:
        (out,) = backend.predict(x)
        assert backend.describe().precision == "bf16 (autocast)"
    assert out.dtype == np.float32 and 0 < rel_l2(out, ref) <= BF16


@requires_openvino()
def test_openvino_refuses_fp16_and_caches_compiles(toy, tmp_path):
    with pytest.raises(InputError, match="does not run fp16") as e:
        open_backend("openvino", toy, precision="fp16")
    assert "bf16" in e.value.fix
    for expect_cached in (False, True):
        with open_backend("openvino", toy, cache_dir=tmp_path / "ov") as backend:
            backend.predict(toy_input(1))
            assert backend.describe().detail.get("loaded_from_cache", expect_cached) is expect_cached
    assert any((tmp_path / "ov").iterdir())


def test_openvino_precision_truth_table():
    # What ran comes from the compute layers, not from what was asked.
    assert ran_precision("fp32", "f32", {"f32": 10}, ["FP32", "BF16"]) == ("fp32", None)
    assert ran_precision("bf16", "bf16", {"bf16": 10}, ["FP32", "BF16"]) == ("bf16", None)
    ran, note = ran_precision("bf16", "f32", {"f32": 10}, ["FP32", "INT8"])
    assert ran == "fp32" and "no native bf16" in note
    ran, note = ran_precision("bf16", "bf16", {"bf16": 8, "f32": 2}, ["BF16"])
    assert ran == "bf16" and "8 of 10" in note
    ran, note = ran_precision("fp32", "bf16", {"bf16": 3}, ["BF16"])  # an unset hint on a bf16 CPU
    assert ran == "bf16" and "fp32 was requested" in note


# --- registry: names, refusals, no silent fallback ------------------------------------------------
def test_unknown_backend_names_the_choices_and_the_closest():
    with pytest.raises(InputError) as e:
        open_backend("openvnio", "x.onnx")
    assert "choices: ort, openvino, tensorrt, torch" in e.value.message and "did you mean 'openvino'" in e.value.message
    with pytest.raises(InputError, match="did you mean 'tensorrt'"):
        open_backend("tensorrtt", "x.plan")
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        open_backend("ort", "x.onnx", precision="fp8")
    with pytest.raises(InputError, match="runs on cpu, not 'cuda'"):
        open_backend("openvino", "x.onnx", device="cuda")


def test_registry_checks_the_artifact_kind(toy, tmp_path):
    with pytest.raises(InputError, match=r"takes a \.plan or \.engine file"):
        open_backend("tensorrt", toy)
    with pytest.raises(InputError, match="does not exist"):
        open_backend("ort", tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="takes a torch nn.Module"):
        open_backend("torch", toy)
    assert open_backend("ORT", toy).name == "ort"


@pytest.mark.skipif(trt_missing() is None or not trt_missing().startswith("TensorRT not installed"),
                    reason="TensorRT is installed here")
def test_tensorrt_unavailable_says_how_to_install(dummy_plan):
    with pytest.raises(BackendUnavailable) as e:
        open_backend("tensorrt", dummy_plan)
    assert "TensorRT cannot run here" in e.value.message and "pip install 'edgeseg[trt]'" in e.value.message
    assert e.value.exit_code == 2


@pytest.mark.skipif(ort_gpu_missing() is None, reason="ONNX Runtime has a working CUDA EP here")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_ort_gpu_is_refused_not_silently_run_on_cpu(toy, device):
    with pytest.raises(BackendUnavailable) as e:
        open_backend("ort", toy, device=device).activate()
    assert "ExecutionProvider" in e.value.problem and "edgeseg[gpu]" in e.value.message


def test_gpu_provider_that_does_not_load_is_refused(toy, monkeypatch):
    """onnxruntime-gpu lists CUDAExecutionProvider but cannot load it (no CUDA/cuDNN): ORT only logs and
    runs on CPU. The backend must refuse instead, after looking at session.get_providers()."""
    import onnxruntime as ort

    real = ort.InferenceSession
    asked = {}

    def session_without_gpu(path, sess_options=None, providers=None):
        asked["providers"] = providers
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session_without_gpu)
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider did not load .* CPUExecutionProvider") as e:
        OrtBackend(toy, device="cuda", gpu_mem_limit=1 << 30).activate()
    assert "device='cpu' explicitly" in e.value.fix
    assert asked["providers"][0] == ("CUDAExecutionProvider", {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                                               "gpu_mem_limit": 1 << 30})


def test_choose_backend_picks_in_order_and_says_why(toy, toy16, dummy_plan):
    verdicts = []

    def bf16_parity(backend):
        verdicts.append(backend.describe().precision)
        return False, "rel L2 0.2 > 0.05"

    cands = default_candidates(plan=dummy_plan, onnx_fp32=toy, onnx_fp16=toy16, module=_conv_module(),
                               bf16_parity_ok=bf16_parity, threads=1)
    labels = [c.label for c in cands]
    assert labels == [p for p in PREFERENCE if p in labels]  # sorted in the documented order
    assert labels[0] == "tensorrt-fp16" and labels[-1] == "torch-cpu" and "openvino-bf16" in labels
    backend, reason = choose_backend(list(reversed(cands)))  # input order does not matter
    with backend:
        (out,) = backend.predict(toy_input(1))
    assert out.shape == (1, 4, 8, 8, 8)
    expected = "ort-cpu" if openvino_missing() else "openvino-fp32"
    assert reason.startswith(expected + " (")
    if trt_missing():
        assert "tensorrt-fp16: " in reason
    if ort_gpu_missing():
        assert "ort-cuda: " in reason and "ort-tensorrt-fp16: " in reason
    if not openvino_missing():
        assert verdicts and "openvino-bf16: rejected by the parity check: rel L2 0.2 > 0.05" in reason
    # Without a parity predicate, bf16 is never offered.
    assert "openvino-bf16" not in [c.label for c in default_candidates(onnx_fp32=toy)]
    # A check that fails rejects its candidate and says why.
    def broken(backend):
        raise ValueError("no reference window")

    backend, reason = choose_backend([Candidate("ort", toy, accept=broken), Candidate("torch", _conv_module())])
    assert backend.name == "torch" and "ort-cpu: rejected by the parity check: the check raised ValueError" in reason


@pytest.mark.skipif(trt_missing() is None, reason="TensorRT can run here")
def test_choose_backend_with_nothing_usable_lists_every_reason(dummy_plan):
    with pytest.raises(BackendUnavailable, match="no candidate backend can run here: tensorrt-fp16: "):
        choose_backend([Candidate("tensorrt", dummy_plan, precision="fp16")])


def test_backends_import_and_run_without_torch(toy):
    proc = run_without_torch(
        f"""
        import numpy as np
        import edgeseg.runtime.backends.torch, edgeseg.runtime.backends.tensorrt, edgeseg.runtime.backends.openvino
        import edgeseg.export.tensorrt
        from edgeseg.runtime.backends import open_backend
        from edgeseg.runtime.errors import BackendUnavailable
        with open_backend("ort", {str(toy)!r}) as b:
            (out,) = b.predict(np.zeros((1, 1, 8, 8, 8), np.float32))
        try:
            open_backend("torch", object())
        except BackendUnavailable as e:
            assert "torch is not installed" in e.message, e.message
        assert "torch" not in sys.modules
        print("OK", out.shape)
        """
    )

    assert proc.returncode == 0, proc.stderr
    assert "OK (1, 4, 8, 8, 8)" in proc.stdout


# --- GPU (run where a CUDA GPU is present) ---------------------------------------------------------
@requires_gpu()
def test_torch_cuda_fp16_autocast_with_cuda_graphs(tiny):
    trunk = copy.deepcopy(tiny["trunk"])
    with open_backend("torch", trunk, precision="fp16", device="cuda", cuda_graphs=True) as backend:
        first = backend.predict(tiny["x"])[0]
        again = backend.predict(tiny["x"])[0]  # graph replay
        info = backend.describe()
    assert info.backend == "torch-cuda" and info.precision == "fp16 (autocast)" and info.detail["cuda_graphs"]
    assert rel_l2(first, tiny["ref"]) <= FP16 and np.array_equal(first, again)


@requires_ort_gpu()
def test_ort_cuda_matches_torch_eager(tiny):
    with open_backend("ort", tiny["onnx"], device="cuda") as backend:
        (feats,) = backend.predict(np.concatenate([tiny["x"], tiny["x"]]))
        info = backend.describe()
    assert info.backend == "ort-cuda" and "CUDAExecutionProvider" in info.detail["providers"]
    assert rel_l2(feats[1], tiny["ref"][0]) <= TF32


@requires_ort_gpu("TensorrtExecutionProvider")
def test_ort_tensorrt_ep_matches_torch_eager(tiny, tmp_path):
    with open_backend("ort", tiny["onnx"], device="tensorrt", cache_dir=tmp_path, max_batch=2) as backend:
        (feats,) = backend.predict(tiny["x"])
        info = backend.describe()
    assert info.detail["providers"][0] == "TensorrtExecutionProvider"
    assert rel_l2(feats, tiny["ref"]) <= TF32


def _export_half(fp32_graph: Path, path: Path) -> Path:
    """The product's mixed fp16 graph (`to_mixed_fp16`, as `edgeseg export` writes it) of the fp32 graph."""
    from edgeseg.export.fp16 import to_mixed_fp16

    return to_mixed_fp16(fp32_graph, path).path


@requires_trt()
def test_tensorrt_engine_fp16_matches_torch_and_refuses_other_keys(tiny, tmp_path):
    from edgeseg.export.tensorrt import build_engine, engine_key, plan_name

    fast = dict(min_batch=1, opt_batch=1, max_batch=2, workspace_bytes=1 << 30, builder_optimization_level=1)
    with pytest.raises(InputError, match="no half-precision layer"):
        build_engine(tiny["onnx"], tmp_path / "fp32-as-fp16.plan", **fast)
    assert not (tmp_path / "fp32-as-fp16.plan").exists()  # refused before anything was written
    fp16 = _export_half(tiny["onnx"], tmp_path / "trunk.fp16.onnx")
    plan = tmp_path / plan_name(engine_key()[0])
    build = build_engine(fp16, plan, timing_cache_path=tmp_path / "timing.cache", **fast)
    assert 0 < build.half_fraction <= 1 and plan.is_file() and (tmp_path / "timing.cache").stat().st_size > 0
    assert build.key in plan.name and build.strongly_typed
    with open_backend("tensorrt", plan, precision="fp16", manifest_key=build.engine_key) as backend:
        x = tiny["x"].astype(backend.inputs[0].dtype)
        (feats,) = backend.predict(np.concatenate([x, x]))
        info = backend.describe()
    assert info.precision.startswith("fp16 (strongly typed") and info.detail["half_fraction"] == build.half_fraction
    assert rel_l2(feats[0], tiny["ref"][0]) <= FP16
    wrong = {**build.engine_key, "gpu": "Some Other GPU"}
    with pytest.raises(InputError, match="GPU: engine built with Some Other GPU") as e:
        open_backend("tensorrt", plan, manifest_key=wrong).activate()
    assert "edgeseg export CHECKPOINT --out DIR --tensorrt" in e.value.message


@requires_trt()
def test_tensorrt_engine_fp32_reference(tiny, tmp_path):
    from edgeseg.export.tensorrt import build_engine

    build = build_engine(tiny["onnx"], tmp_path / "fp32.plan", min_batch=1, opt_batch=1, max_batch=1,
                         workspace_bytes=1 << 30, builder_optimization_level=1, require_half=False)
    assert build.half_fraction == 0.0
    with open_backend("tensorrt", tmp_path / "fp32.plan") as backend:
        (feats,) = backend.predict(tiny["x"])
        assert backend.describe().precision == "fp32"
    assert rel_l2(feats, tiny["ref"]) <= TF32  # TF32 is on by default in TensorRT


def test_without_onnxruntime_the_ort_backend_names_both_extras(toy, monkeypatch):
    """The base install has no ONNX Runtime (onnxruntime and onnxruntime-gpu share one module): asking for it
    says to install [cpu], or [gpu] on a CUDA machine, before anything is loaded."""
    from edgeseg.runtime import availability

    real = availability.installed
    monkeypatch.setattr(availability, "installed", lambda name: False if name == "onnxruntime" else real(name))
    with pytest.raises(BackendUnavailable, match="onnxruntime is not installed") as err:
        open_backend("ort", toy)
    assert "'edgeseg[cpu]'" in err.value.fix and "'edgeseg[gpu]'" in err.value.fix

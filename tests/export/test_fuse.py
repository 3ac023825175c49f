"""`fuse`: trunk + adapters -> one graph with a `prob_<organ>` output per organ, parity-checked; the
runtime `open_engine` runs it over a volume. Refusals: an adapter of another trunk, one organ twice,
an existing engine without force."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from edgeseg.export.fuse import fuse
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import content_hash, read_manifest, write_manifest

from edgeseg.features import CacheConfig, build_cache
from edgeseg.train.adapt import AdaptConfig, adapt


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def adapters(trunk5, phantoms5, tmp_path_factory):
    """A spatial liver adapter and an lp spleen adapter on trunk5 (a dozen quick steps each)."""
    support, query = phantoms5
    root = tmp_path_factory.mktemp("fuse-adapters")
    out = {}
    for organ, kind in (("liver", "spatial"), ("spleen", "lp")):
        cache = root / f"cache-{organ}"
        build_cache(trunk5, support, organ, cache,
                    CacheConfig(k=1, seed=0, query=(query,), backend="ort", threads=2, context=0), log=_quiet)
        out[organ] = root / organ
        adapt(cache, out[organ], AdaptConfig(adapter=kind, steps=12, crop=32, seed=0, threads=1))
    return out


@pytest.fixture(scope="module")
def engine(trunk5, adapters, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "e"
    manifest = fuse(trunk5, [adapters["liver"], adapters["spleen"]], out, threads=2, log=_quiet)
    return out, manifest


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def test_fused_graph_is_the_trunk_feeding_every_adapter(trunk5, adapters, engine):
    import onnx
    import onnxruntime as ort

    out, manifest = engine
    assert read_manifest(out, "engine") == manifest
    assert manifest["organs"] == ["liver", "spleen"]
    assert manifest["io"] == {"input": "image", "outputs": ["prob_liver", "prob_spleen"]}
    assert list(manifest["graphs"]) == ["fp32"]  # trunk5 holds fp32 only
    assert manifest["graphs"]["fp32"]["parity"]["passed"]
    trunk_m = read_manifest(trunk5, "trunk")
    assert manifest["trunk"]["manifest_sha256"] == content_hash(trunk_m)
    assert [a["adapter"] for a in manifest["adapters"]] == ["spatial", "lp"]
    assert manifest["preprocess"] == trunk_m["preprocess"] and manifest["window"] == [64, 64, 64]

    fused = onnx.load(str(out / "fused.fp32.onnx"))
    assert [o.name for o in fused.graph.output] == ["prob_liver", "prob_spleen"]
    assert [i.name for i in fused.graph.input] == ["image"]
    shape = [d.dim_value or d.dim_param for d in fused.graph.output[0].type.tensor_type.shape.dim]
    assert shape[1:] == [1, 64, 64, 64] and isinstance(shape[0], str)
    # The trunk runs once: its Conv nodes appear once, plus the adapters' own.
    trunk_graph = onnx.load(str(trunk5 / "trunk.fp32.onnx"))
    convs = lambda m: sum(n.op_type == "Conv" for n in m.graph.node)
    adapter_convs = sum(convs(onnx.load(str(adapters[o] / "adapter.onnx"))) for o in ("liver", "spleen"))
    assert adapter_convs == 4  # spatial: conv1, conv2, head; lp: head
    assert convs(fused) == convs(trunk_graph) + adapter_convs
    assert sum(n.op_type == "Sigmoid" for n in fused.graph.node) == \
        sum(n.op_type == "Sigmoid" for n in trunk_graph.graph.node) + 2

    # Fused == trunk.onnx then adapter.onnx then sigmoid, in ONNX Runtime.
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    run = lambda p: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).random((1, 1, 64, 64, 64), dtype=np.float32)
    (features,) = run(trunk5 / "trunk.fp32.onnx").run(["features"], {"image": x})
    got = run(out / "fused.fp32.onnx").run(["prob_liver", "prob_spleen"], {"image": x})
    for organ, prob in zip(("liver", "spleen"), got):
        (logits,) = run(adapters[organ] / "adapter.onnx").run(["logits"], {"features": features})
        assert prob.shape == (1, 1, 64, 64, 64)
        assert float(np.max(np.abs(prob - _sigmoid(logits)))) < 1e-5


def test_open_engine_gives_probabilities_per_organ(engine):
    from edgeseg.runtime.engine import open_engine

    out, _ = engine
    volume = np.random.default_rng(0).random((1, 70, 64, 80), dtype=np.float32)
    with open_engine(out, backend="ort", threads=2) as eng:
        assert eng.organs == ("liver", "spleen") and eng.window == (64, 64, 64)
        assert eng.preprocess.window == (64, 64, 64) and eng.ran["backend"].startswith("ort")
        stats: dict = {}
        probs = eng.probabilities(volume, stats=stats)
    assert probs.shape == (2, 70, 64, 80) and probs.dtype == np.float32
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0 and stats["run"] >= 2
    with open_engine(out) as eng:  # auto: picks what can run here and says why
        assert eng.reason and eng.graph_precision == "fp32"
    assert eng.on_gpu is not eng.ran["device"].startswith("CPU (")  # the typed device agrees with the report


def test_open_engine_refuses_torch_and_unknown_backends_by_name(engine):
    from edgeseg.runtime.engine import open_engine
    from edgeseg.runtime.errors import InputError

    out, _ = engine
    with pytest.raises(InputError, match="a fused engine has no torch form") as e:
        open_engine(out, backend="torch")
    assert "--backend auto, ort, openvino or tensorrt" in e.value.fix
    with pytest.raises(InputError, match="unknown backend 'onnx'; choices: auto, ort, openvino, tensorrt, torch"):
        open_engine(out, backend="onnx")
    with pytest.raises(InputError, match="the TensorRT engines edgeseg builds run the mixed fp16 graph"):
        open_engine(out, backend="tensorrt", precision="fp32")


def test_pure_air_windows_run_once_and_change_no_probability(engine):
    """The fused SwinUNETR on ORT: windows of pure air get one shared run, and the result is the full run's."""
    from edgeseg.runtime.engine import open_engine

    out, _ = engine
    volume = np.zeros((1, 140, 64, 80), np.float32)  # air at the HU window's floor...
    volume[:, :40] = np.random.default_rng(1).random((1, 40, 64, 80), dtype=np.float32)  # ...below a body
    with open_engine(out, backend="ort", threads=2) as eng:
        every, reused = {}, {}
        ref = eng.probabilities(volume, stats=every, reuse_blank=False)
        got = eng.probabilities(volume, stats=reused)  # the default
    assert every["blank"] == 0 and reused["blank"] == 4 and reused["run"] + reused["blank"] == every["run"] == 6
    assert float(np.max(np.abs(got - ref))) < 1e-5
    assert np.array_equal(got >= 0.5, ref >= 0.5)


def test_fuse_refuses_an_adapter_of_another_trunk(trunk5, adapters, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(adapters["liver"], other)
    body = json.loads((other / "manifest.json").read_text())
    body = {k: v for k, v in body.items() if k not in ("kind", "created", "libraries", "host", "files",
                                                         "manifest_sha256")}
    body["trunk_manifest_sha256"] = "0" * 64
    write_manifest(other, "adapter", body, ["adapter.safetensors", "adapter.onnx"], force=True)
    with pytest.raises(InputError, match="re-adapt") as e:
        fuse(trunk5, [other], tmp_path / "e", log=_quiet)
    assert "000000000000" in str(e.value) and content_hash(read_manifest(trunk5, "trunk"))[:12] in str(e.value)
    assert not (tmp_path / "e" / "manifest.json").exists()


def test_fuse_refuses_one_organ_twice_and_an_existing_engine(trunk5, adapters, engine, tmp_path):
    with pytest.raises(InputError, match="two adapters for organ 'liver'"):
        fuse(trunk5, [adapters["liver"], adapters["liver"]], tmp_path / "e", log=_quiet)
    out, _ = engine
    with pytest.raises(InputError, match="--force"):
        fuse(trunk5, [adapters["liver"]], out, log=_quiet)
    with pytest.raises(InputError, match="no adapter"):
        fuse(trunk5, [], tmp_path / "e2", log=_quiet)


def test_the_mixed_fp16_trunk_graph_fuses_with_fp32_adapters(trunk5, adapters, engine, tmp_path):
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort
    from edgeseg.export.fp16 import to_mixed_fp16
    from edgeseg.export.fuse import fuse_graphs
    from edgeseg.export.onnx import save_ir_model
    from edgeseg.export.parity import TOLERANCES, rel_l2

    fp16 = to_mixed_fp16(trunk5 / "trunk.fp32.onnx", tmp_path / "trunk.fp16.onnx").path
    models = [(o, onnx.load(str(adapters[o] / "adapter.onnx"))) for o in ("liver", "spleen")]
    fused = fuse_graphs(onnx.load(str(fp16)), models)
    save_ir_model(ir.serde.deserialize_model(fused), tmp_path / "fused.fp16.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    x = np.random.default_rng(5).random((2, 1, 64, 64, 64), dtype=np.float32)  # batch 2: N stays dynamic
    outs = ["prob_liver", "prob_spleen"]
    half = ort.InferenceSession(str(tmp_path / "fused.fp16.onnx"), so, providers=["CPUExecutionProvider"])
    assert all(o.type == "tensor(float)" for o in half.get_outputs())
    full = ort.InferenceSession(str(engine[0] / "fused.fp32.onnx"), so, providers=["CPUExecutionProvider"])
    for a, b in zip(half.run(outs, {"image": x}), full.run(outs, {"image": x})):
        assert a.shape == b.shape == (2, 1, 64, 64, 64) and a.dtype == np.float32
        assert rel_l2(b, a) <= TOLERANCES[("fp16", "random")].rel_l2


def test_a_rejected_int8_fusion_leaves_no_scratch_graph(trunk5, adapters, monkeypatch, tmp_path):
    """The fused fp32 graph made only as the quantizer's source goes even when int8 parity fails, so
    what stays is the rejected graph and its report, nothing half-made."""
    pytest.importorskip("nncf", reason="int8 fusion needs pip install 'edgeseg[int8]'")
    from edgeseg.export import parity
    from edgeseg.export.parity import ParityError, Tolerance

    for kind in ("random", "ct"):  # a bound no int8 graph meets stands in for a bad quantization
        monkeypatch.setitem(parity.TOLERANCES, ("int8", kind), Tolerance(rel_l2=1e-9, mask_flip=0.0))
    out = tmp_path / "e"
    with pytest.raises(ParityError, match="parity check failed"):
        fuse(trunk5, [adapters["liver"]], out, precisions=("int8",), calibration_windows=2, threads=2, log=_quiet)
    left = sorted(p.name for p in out.iterdir())
    assert "fused.fp32.onnx" not in left and "manifest.json" not in left
    assert "fused.int8.onnx.rejected" in left and "fused.int8.onnx.parity.rejected.json" in left, left

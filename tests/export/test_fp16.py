"""fp32 -> mixed-precision fp16 graphs: valid, runnable on ONNX Runtime CPU, fp32 where it must be.

The tiny trunk's decoder1 graph is exported once per session (shared with test_onnx.py through
pytest's base temp dir); a hand-built graph checks the pass's rules in isolation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgeseg.export.fp16 import to_mixed_fp16
from edgeseg.export.onnx import (
    ExportSpec,
    export_trunk_onnx,
    save_ir_model,
)
from edgeseg.export.parity import TOLERANCES
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.graph import inspect_graph
from onnx import TensorProto, helper

from edgeseg.model.swinunetr import build_swinunetr, split
from tests.helpers import TINY, ort_session, rel_l2

torch.set_num_threads(2)

WINDOW = (64, 64, 64)
FP32, FP16 = TensorProto.FLOAT, TensorProto.FLOAT16
KEPT_FP32 = ("LayerNormalization", "Softmax", "InstanceNormalization")


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory) -> Path:
    """The tiny trunk at decoder1 (same seed and place as test_onnx.py's, so one session exports it once)."""
    folder = tmp_path_factory.getbasetemp() / "tiny-trunk-onnx" / "decoder1"
    path = folder / "trunk.onnx"
    if not path.exists():
        torch.manual_seed(0)
        trunk, _ = split(build_swinunetr(TINY).eval(), "decoder1")
        result = export_trunk_onnx(trunk, ExportSpec.for_model(TINY), path)
        (folder.parent / "decoder1.result.json").write_text(json.dumps(result.to_dict()))
    return path


@pytest.fixture(scope="module")
def converted(fp32_graph, tmp_path_factory):
    dst = tmp_path_factory.mktemp("fp16") / "trunk_fp16.onnx"
    return to_mixed_fp16(fp32_graph, dst)


@pytest.fixture(scope="module")
def x1() -> np.ndarray:
    return np.random.default_rng(5).random((1, 1, *WINDOW), dtype=np.float32)


def value_types(path: Path) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return model, types


@pytest.mark.slow
def test_fp16_graph_is_valid_and_keeps_float32_io(converted):
    onnx.checker.check_model(str(converted.path), full_check=True)
    info = inspect_graph(converted.path, check=True)
    assert info["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", 1, *WINDOW]}]
    assert info["outputs"] == [{"name": "features", "dtype": "float32", "shape": ["N", 12, *WINDOW]}]
    assert info["metadata"]["edgeseg.precision"] == "mixed-fp16"
    assert info["op_counts"]["Cast"] == converted.n_casts > 0


@pytest.mark.slow
def test_normalisations_and_softmax_stay_fp32_and_weights_are_fp16(converted):
    model, types = value_types(converted.path)
    initializers = {t.name for t in model.graph.initializer}
    seen = {op: 0 for op in (*KEPT_FP32, "Conv", "ConvTranspose", "MatMul")}
    for node in model.graph.node:
        ins = [i for i in node.input if i]
        if node.op_type in KEPT_FP32:  # data, scale and bias
            assert [types[i] for i in ins] == [FP32] * len(ins), node.name
            seen[node.op_type] += 1
        elif node.op_type in ("Conv", "ConvTranspose", "MatMul"):
            assert [types[i] for i in ins] == [FP16] * len(ins), node.name
            weights = [i for i in ins if i in initializers]
            assert node.op_type == "MatMul" or weights, node.name
            seen[node.op_type] += 1
    assert all(seen.values()), seen
    assert {"LayerNormalization", "Softmax", "InstanceNormalization"} <= set(converted.fp32_op_types)
    assert {"Conv", "ConvTranspose", "MatMul"} <= set(converted.ops_by_dtype["float16"])
    assert converted.nodes_by_dtype["float16"] > converted.nodes_by_dtype["float32"]
    assert converted.n_weights_clipped == 0


@pytest.mark.slow
def test_onnxruntime_cpu_runs_it_close_to_fp32(converted, fp32_graph, x1):
    y16 = ort_session(converted.path).run(None, {"image": x1})[0]
    y32 = ort_session(fp32_graph).run(None, {"image": x1})[0]
    assert y16.dtype == np.float32 and y16.shape == y32.shape == (1, 12, *WINDOW)
    assert np.isfinite(y16).all()
    err = rel_l2(y16, y32)
    assert 0 < err <= TOLERANCES[("fp16", "random")].rel_l2  # 0 would mean nothing ran in fp16


@pytest.mark.slow
def test_sizes_and_report(converted, fp32_graph):
    d = json.loads(json.dumps(converted.to_dict()))
    assert d["src_bytes"] == fp32_graph.stat().st_size and d["data_path"] is None
    assert d["bytes"] == converted.path.stat().st_size
    assert 0.4 < d["bytes"] / d["src_bytes"] < 0.65  # weights halve, fp32 norms and int64 constants remain
    assert d["initializers_by_dtype"]["float16"] > d["initializers_by_dtype"].get("float32", 0)


@pytest.mark.slow
def test_external_data_in_and_out(fp32_graph, converted, x1, tmp_path, monkeypatch):
    import onnx_ir as ir

    # An fp32 source with external weights converts to a self-contained fp16 graph ...
    src = tmp_path / "src" / "trunk.onnx"
    assert save_ir_model(ir.load(fp32_graph), src, external_data_threshold=1000) is not None
    inline = to_mixed_fp16(src, tmp_path / "inline" / "t16.onnx")
    assert inline.data_path is None and sorted(p.name for p in inline.path.parent.iterdir()) == ["t16.onnx"]
    # ... and to an external-data fp16 graph that loads after a move, from another working directory.
    ext = to_mixed_fp16(fp32_graph, tmp_path / "ext" / "t16.onnx", external_data_threshold=1000)
    assert ext.data_path == tmp_path / "ext" / "t16.onnx.data" and ext.data_path.exists()
    moved = Path(shutil.move(tmp_path / "ext", tmp_path / "moved")) / "t16.onnx"
    monkeypatch.chdir(tmp_path / "inline")
    ref = ort_session(converted.path).run(None, {"image": x1})[0]
    for path in (moved, inline.path):
        assert np.array_equal(ort_session(path.resolve()).run(None, {"image": x1})[0], ref)


def test_refusals(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", FP32, [1, 4])],
                          [helper.make_tensor_value_info("y", FP32, [1, 4])])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    dst = tmp_path / "relu16.onnx"
    dst.write_bytes(b"old")
    with pytest.raises(InputError, match="refusing to overwrite"):
        to_mixed_fp16(src, dst)
    with pytest.raises(InputError, match="overwrite its fp32 source"):
        to_mixed_fp16(src, src, force=True)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(src.read_bytes()[:20])
    with pytest.raises(InputError, match="re-export|corrupt|truncated"):
        to_mixed_fp16(bad, tmp_path / "out.onnx")
    # Converting twice: the I/O stay float32, but the graph already holds fp16 tensors.
    conv_model = _small_graph()
    onnx.save(conv_model, str(tmp_path / "small.onnx"))
    to_mixed_fp16(tmp_path / "small.onnx", tmp_path / "small16.onnx")
    with pytest.raises(InputError, match="already holds float16"):
        to_mixed_fp16(tmp_path / "small16.onnx", tmp_path / "again.onnx")


def _small_graph() -> onnx.ModelProto:
    """x -> MatMul(W) -> a; a decomposed normalisation of a; Relu(a); and W also used by an fp32 Add."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", FP32, [4, 4], rng.standard_normal(16).astype(np.float32))
    eps = helper.make_tensor("eps", FP32, [], [1e-5])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    two = helper.make_tensor("two", FP32, [], [2.0])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"]),
        helper.make_node("ReduceMean", ["a", "axes"], ["mean"]),
        helper.make_node("Sub", ["a", "mean"], ["centred"]),
        helper.make_node("Pow", ["centred", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[1, 0]),
        helper.make_node("MatMul", ["rt", "W"], ["b"]),
        helper.make_node("Add", ["normed", "W"], ["y"]),
    ]
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", FP32, [4, 4])],
                          [helper.make_tensor_value_info("y", FP32, [4, 4]), helper.make_tensor_value_info("b", FP32, [4, 4])],
                          initializer=[w, eps, axes, two])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_pass_rules_on_a_small_graph(tmp_path):
    src, dst = tmp_path / "small.onnx", tmp_path / "small16.onnx"
    onnx.save(_small_graph(), str(src))
    result = to_mixed_fp16(src, dst)
    onnx.checker.check_model(str(dst), full_check=True)
    model, types = value_types(dst)
    by_output = {n.output[0]: n for n in model.graph.node}
    # fp16: the MatMuls, the Relu and the Transpose between fp16 ops; their weight is an fp16 copy of W.
    for name in ("a", "r", "rt"):
        assert types[name] == FP16, name
    b_node = next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[0].startswith("rt"))
    assert types[b_node.input[1]] == FP16 and b_node.input[1] != "W"
    # fp32: the reductions, and the Sub/Pow/Div/Add of the decomposed normalisation; W stays fp32 for the Add.
    for name in ("mean", "centred", "sq", "var", "var_eps", "std", "normed"):
        assert types[name] == FP32, name
    assert types["W"] == FP32 and "W" in by_output["y"].input
    # Outputs keep their names and float32; b comes back through a Cast.
    assert [(o.name, types[o.name]) for o in model.graph.output] == [("y", FP32), ("b", FP32)]
    assert by_output["b"].op_type == "Cast"
    assert result.nodes_by_dtype == {"float16": 4, "float32": 8}
    assert result.fp32_op_types == ["Add", "Div", "Pow", "ReduceMean", "Sqrt", "Sub"]
    x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    got = ort_session(dst).run(None, {"x": x})
    want = ort_session(src).run(None, {"x": x})
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and rel_l2(g, w) <= TOLERANCES[("fp16", "random")].rel_l2

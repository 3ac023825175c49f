"""FLOP counting from an ONNX graph's static shapes: exact on hand-built graphs, equal to torch's count
on the tiny trunk."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.bench.flops import count_module_flops, count_onnx_flops, node_flops


def _tiny_graph(path):
    """x (N,4,8,8,8) -> Conv 3^3 (4->6, group 2, pad 1) -> ConvTranspose 2^3 stride 2 (6->2)
    -> Reshape (N, 2*16*16, 16) -> MatMul (16x5, broadcast) -> Reshape (N*512, 5) -> Gemm (transB, 5->3)."""
    rng = np.random.default_rng(0)
    w_conv = numpy_helper.from_array(rng.standard_normal((6, 2, 3, 3, 3)).astype(np.float32), "w_conv")
    w_deconv = numpy_helper.from_array(rng.standard_normal((6, 2, 2, 2, 2)).astype(np.float32), "w_deconv")
    w_mm = numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32), "w_mm")
    w_gemm = numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float32), "w_gemm")
    shape1 = numpy_helper.from_array(np.array([-1, 512, 16], dtype=np.int64), "shape1")
    shape2 = numpy_helper.from_array(np.array([-1, 5], dtype=np.int64), "shape2")
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["c"], kernel_shape=[3, 3, 3], pads=[1] * 6, group=2),
        helper.make_node("ConvTranspose", ["c", "w_deconv"], ["d"], kernel_shape=[2, 2, 2], strides=[2, 2, 2]),
        helper.make_node("Reshape", ["d", "shape1"], ["r"]),
        helper.make_node("MatMul", ["r", "w_mm"], ["m"]),
        helper.make_node("Reshape", ["m", "shape2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "w_gemm"], ["y"], transB=1),
        helper.make_node("Relu", ["y"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M", 3])],
                              [w_conv, w_deconv, w_mm, w_gemm, shape1, shape2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _expected(n: int) -> dict:
    conv = 2 * (n * 6 * 8**3) * (2 * 27)  # every output element: Cin/group x kernel MACs
    deconv = 2 * (n * 6 * 8**3) * (2 * 8)  # every input element meets Cout/group x kernel weights
    matmul = 2 * n * 512 * 16 * 5
    gemm = 2 * (n * 512) * 5 * 3
    return {"Conv": conv, "ConvTranspose": deconv, "MatMul": matmul, "Gemm": gemm}


@pytest.mark.parametrize("batch", [1, 3])
def test_hand_built_graph_counts_exactly(tmp_path, batch):
    path = _tiny_graph(tmp_path / "tiny.onnx")
    fc = count_onnx_flops(path, batch=batch)
    assert fc.by_op == _expected(batch)
    assert fc.total == sum(_expected(batch).values())
    assert fc.nodes == 4 and fc.unknown == []


def test_the_graph_really_has_those_shapes(tmp_path):
    # The count rests on the shapes; ONNX Runtime agrees with them on a real run.
    import onnxruntime as ort

    path = _tiny_graph(tmp_path / "tiny.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.zeros((2, 4, 8, 8, 8), np.float32)})
    assert y.shape == (2 * 512, 3)


def test_node_rules_on_shapes():
    assert node_flops("MatMul", [(7, 1, 4, 6), (3, 6, 5)], [None]) == 2 * 21 * 4 * 6 * 5  # broadcast batch 7 x 3
    assert node_flops("MatMul", [(6,), (6, 5)], [None]) == 2 * 6 * 5
    assert node_flops("Gemm", [(6, 4), (6, 5)], [None], {"transA": 1}) == 2 * 4 * 6 * 5
    assert node_flops("Conv", [(1, 3, 4, 4, 4), (8, 3, 1, 1, 1)], [(1, 8, 4, 4, 4)]) == 2 * 8 * 64 * 3
    assert node_flops("Conv", [(1, 3, 4, 4, 4), (8, 3, 1, 1, 1)], [None]) is None
    assert node_flops("Relu", [(1, 2)], [(1, 2)]) == 0


def test_trunk_graph_count_equals_torch_count(trunk5, checkpoint5):
    """The exported tiny trunk counted from the ONNX graph = torch's FlopCounterMode on the module (meta device)."""
    import torch

    from edgeseg.model.checkpoint import load_checkpoint
    from edgeseg.model.swinunetr import split

    torch.set_num_threads(1)
    fc = count_onnx_flops(trunk5 / "trunk.fp32.onnx")
    model, spec, _ = load_checkpoint(checkpoint5)
    trunk, _ = split(model, "decoder1")
    assert fc.unknown == []
    assert fc.total == count_module_flops(trunk, (1, 1, *spec.preprocess.window))
    assert fc.by_op["Conv"] > fc.by_op["MatMul"] > fc.by_op["ConvTranspose"] > 0
    assert count_onnx_flops(trunk5 / "trunk.fp32.onnx", batch=2).total == 2 * fc.total

"""`inspect_graph`: what an ONNX graph file is, read without running it; a graph that cannot run is an InputError.

Small hand-built graphs (a Conv, with its weights inline or in a data file beside it): no export needed.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.graph import EXPORT_SPEC_KEY, inspect_graph
from onnx import TensorProto, helper, numpy_helper


def conv_graph(weight_dtype=np.float32) -> onnx.ModelProto:
    """image (N, 1, 8, 8, 8) -> Conv 1 -> 4 channels -> features; a Cast to fp32 when the weights are fp16."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3, 3)).astype(weight_dtype), "w")
    nodes = []
    x = "image"
    if weight_dtype == np.float16:
        nodes.append(helper.make_node("Cast", ["image"], ["image16"], to=TensorProto.FLOAT16))
        x = "image16"
    nodes.append(helper.make_node("Conv", [x, "w"], ["conv"], pads=[1] * 6))
    nodes.append(helper.make_node("Cast", ["conv"], ["features"], to=TensorProto.FLOAT))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8, 8])],
                          [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4, 8, 8, 8])],
                          initializer=[w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key=EXPORT_SPEC_KEY, value='{"cut": "decoder1"}')
    return model


@pytest.fixture
def graph(tmp_path):
    path = tmp_path / "g.onnx"
    onnx.save(conv_graph(), str(path))
    return path


@pytest.fixture
def external(tmp_path):
    """The same graph with its weights in g.onnx.data beside it."""
    folder = tmp_path / "ext"
    folder.mkdir()
    path = folder / "g.onnx"
    onnx.save_model(conv_graph(), str(path), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    return path


def test_a_graph_is_described_without_running_it(graph):
    info = inspect_graph(graph, check=True)
    assert info["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", 1, 8, 8, 8]}]
    assert info["outputs"] == [{"name": "features", "dtype": "float32", "shape": ["N", 4, 8, 8, 8]}]
    assert info["precision"] == "fp32" and info["opset"] == 18 and info["n_nodes"] == 2
    assert info["op_counts"] == {"Conv": 1, "Cast": 1}
    assert info["external_data"] is False and info["bytes"] == graph.stat().st_size
    assert info["export_spec"] == {"cut": "decoder1"}


def test_a_mixed_fp16_graph_says_so(tmp_path):
    path = tmp_path / "g16.onnx"
    onnx.save(conv_graph(np.float16), str(path))
    info = inspect_graph(path)
    assert info["precision"] == "fp16" and info["inputs"][0]["dtype"] == "float32"  # float32 I/O, fp16 inside


def test_external_weights_are_listed_not_loaded(external):
    info = inspect_graph(external, check=True)
    assert info["external_data"] is True and info["external_files"] == ["g.onnx.data"]
    assert info["bytes"] == external.stat().st_size + (external.parent / "g.onnx.data").stat().st_size


def test_corrupt_or_incomplete_graphs_are_input_errors(graph, external, tmp_path):
    blob = graph.read_bytes()
    for name, data in (("truncated.onnx", blob[: len(blob) // 3]), ("garbage.onnx", b"\x00not an onnx graph" * 7),
                       ("empty.onnx", b"")):
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(InputError) as e:
            inspect_graph(bad)
        assert str(bad) in str(e.value) and "re-export" in e.value.fix
    with pytest.raises(InputError, match="not found"):
        inspect_graph(tmp_path / "missing.onnx")
    # External weights: truncated, then missing.
    data = external.parent / "g.onnx.data"
    full = data.read_bytes()
    data.write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match="truncated"):
        inspect_graph(external)
    data.unlink()
    with pytest.raises(InputError, match="missing") as e:
        inspect_graph(external)
    assert "re-export" in e.value.fix


def test_weights_outside_the_graphs_folder_are_refused(external, tmp_path):
    model = onnx.load(str(external), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../g.onnx.data"
    shutil.copy(external.parent / "g.onnx.data", tmp_path / "g.onnx.data")
    moved = external.parent / "out.onnx"
    onnx.save(model, str(moved))
    with pytest.raises(InputError, match="not a file name beside the graph"):
        inspect_graph(moved)


def test_check_runs_the_onnx_checker(tmp_path):
    model = conv_graph()
    model.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    assert inspect_graph(path)["op_counts"]["NoSuchOp"] == 1  # the cheap read does not validate ops
    with pytest.raises(InputError, match="not a valid ONNX graph"):
        inspect_graph(path, check=True)

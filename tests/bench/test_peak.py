"""The physical floor: arithmetic on known peaks, bytes of a known graph, and a (tiny) real measurement."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.bench.peak import floor, fraction_of_floor, graph_bytes, measure_peaks

PEAKS = {"tflops": {"fp32": 0.2, "bf16": 0.4}, "bandwidth_gbs": 10.0}


def test_compute_bound_floor_uses_the_precision_that_computes():
    f = floor(636e9, 0.4e9, PEAKS, "cpu", "fp32")
    assert f["compute_s"] == pytest.approx(3.18) and f["memory_s"] == pytest.approx(0.04)
    assert f["floor_s"] == pytest.approx(3.18) and f["bound"] == "compute"
    assert floor(636e9, 0.4e9, PEAKS, "cpu", "bf16")["floor_s"] == pytest.approx(1.59)
    # ONNX Runtime's x86 CPU provider computes its fp16 graph in fp32: the fp32 peak applies
    assert floor(636e9, 0.4e9, PEAKS, "cpu", "fp16")["compute_precision"] == "fp32"


def test_memory_bound_floor_and_fraction():
    f = floor(1e9, 1e9, PEAKS, "cpu", "fp32")  # 5 ms of compute, 100 ms of traffic
    assert f["bound"] == "memory" and f["floor_s"] == pytest.approx(0.1)
    assert fraction_of_floor(f, 0.4) == pytest.approx(0.25)
    assert fraction_of_floor(f, None) is None and fraction_of_floor(None, 1.0) is None
    assert floor(1e9, 1e9, None, "cpu", "fp32") is None
    assert floor(1e9, None, PEAKS, "cpu", "fp32")["bound"] == "compute"  # bytes unknown: compute alone


def test_graph_bytes_counts_weights_once_and_io_per_window(tmp_path):
    w = numpy_helper.from_array(np.zeros((8, 4, 3, 3, 3), np.float32), "w")  # 3456 bytes
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8, 8])], [w])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    b = graph_bytes(path)
    assert b["weights"] == 8 * 4 * 27 * 4
    assert b["io_per_window"] == (4 + 8) * 512 * 4  # the dynamic batch axis counts as one window
    assert b["per_window"] == b["weights"] + b["io_per_window"]


def test_measure_peaks_on_this_cpu_is_positive():
    p = measure_peaks("cpu", threads=1, seconds=0.05, precisions=("fp32",))
    assert p["tflops"]["fp32"] > 0 and p["bandwidth_gbs"] > 0 and p["threads"] == 1

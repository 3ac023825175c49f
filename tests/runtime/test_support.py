"""The one table of backends, devices and precisions: every cell decided once, refusals with a reason."""

from __future__ import annotations

import json

import pytest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.support import (
    DEVICES,
    GRAPH_PRECISIONS,
    PROBES,
    TABLE,
    BackendChoice,
    BackendName,
    Device,
    Precision,
    Refusal,
    Source,
    check_combination,
    check_graph_precisions,
    combination,
    parse_choice,
    parse_device,
)


def test_every_backend_device_precision_is_decided_once_with_a_reason_when_refused():
    cells = {(c.backend, c.device, c.precision) for c in TABLE}
    assert cells == {(b, d, p) for b in BackendName for d in DEVICES[b] for p in Precision}
    for row in TABLE:
        if row.refused is not None:
            assert row.runs == row.refused and row.refused.problem and row.refused.fix
        else:
            assert combination(row.backend, row.device, row.precision) is row
    assert {p.name for p in PROBES.values()} == {"ort-cpu", "ort-cuda", "ort-tensorrt", "openvino", "tensorrt",
                                                  "torch-cpu", "torch-cuda"}  # the names `edgeseg info` lists


def test_what_an_artifact_folder_runs():
    runs = {(c.backend.value, c.device.value, c.precision.value): c.runs for c in TABLE}
    assert runs["ort", "cpu", "fp16"] is Source.FP16_GRAPH and runs["ort", "tensorrt", "fp32"] is Source.FP32_GRAPH
    assert runs["openvino", "cpu", "bf16"] is Source.FP32_GRAPH  # a bf16 hint on the fp32 graph
    assert runs["tensorrt", "cuda", "fp16"] is Source.ENGINE and runs["torch", "cuda", "fp16"] is Source.CHECKPOINT
    fp32_plan = runs["tensorrt", "cuda", "fp32"]  # the backend runs an fp32 plan, but no artifact holds one
    assert isinstance(fp32_plan, Refusal) and "mixed fp16 graph" in fp32_plan.problem
    assert combination(BackendName.TENSORRT, Device.CUDA, Precision.FP32).runs is fp32_plan


@pytest.mark.parametrize("backend, device, precision, says", [
    ("ort", "cpu", "bf16", "bf16 on CPU: the 'openvino' backend"),
    ("ort", "tensorrt", "bf16", "not bf16"),
    ("openvino", None, "fp16", "does not run fp16"),
    ("tensorrt", None, "bf16", "runs the precision it was built with"),
    ("torch", "cpu", "fp16", "fp16 autocast runs on CUDA only"),
    ("openvino", "cuda", None, "runs on cpu, not 'cuda'"),
    ("tensorrt", "cpu", None, "runs on cuda, not 'cpu'"),
    ("torch", "cuda:x", None, "not 'cuda:x'"),
    ("ort", None, "fp8", "unknown precision 'fp8'; choices: fp32, fp16, bf16"),
    ("openvnio", None, None, "choices: ort, openvino, tensorrt, torch; did you mean 'openvino'"),
])
def test_refusals_say_why_and_what_to_do(backend, device, precision, says):
    with pytest.raises(InputError) as e:
        check_combination(backend, device, precision)
    assert says in e.value.message and e.value.fix


def test_parsing_is_case_insensitive_and_keeps_the_gpu_index():
    assert check_combination("ORT", "CUDA:1", "FP16") == (BackendName.ORT, Device.CUDA, 1, Precision.FP16)
    assert check_combination(BackendName.TORCH) == (BackendName.TORCH, Device.CPU, None, None)  # default device
    assert parse_device(BackendName.TENSORRT, None) == (Device.CUDA, None)
    assert parse_choice(" Auto ") is BackendChoice.AUTO and parse_choice("torch") is BackendChoice.TORCH
    with pytest.raises(InputError, match="unknown backend 'onnx'; choices: auto, ort"):
        parse_choice("onnx")


def test_enums_read_as_their_values():
    # Messages, dict keys and JSON records see the text, not the enum's repr.
    assert f"{Precision.BF16}" == "bf16" and str(Device.TENSORRT) == "tensorrt"
    assert {"fp16": 1}[Precision.FP16] == 1 and json.dumps({"d": Device.CUDA}) == '{"d": "cuda"}'
    assert [Device(d).is_gpu for d in ("cpu", "cuda", "tensorrt")] == [False, True, True]


def test_graph_precisions_are_what_export_and_fuse_write():
    assert [p.value for p in GRAPH_PRECISIONS] == ["fp32", "fp16", "int8"]
    assert check_graph_precisions(["fp16", "fp32", "fp16"]) == ("fp16", "fp32")
    for bad in (["bf16"], []):
        with pytest.raises(InputError, match="--precision .*: choose from fp32, fp16, int8") as e:
            check_graph_precisions(bad)
        assert e.value.fix == "e.g. --precision fp32,fp16 (add int8 for the quantized graphs)"


def test_int8_runs_the_quantized_graphs_and_is_refused_elsewhere_with_the_way():
    from edgeseg.runtime.support import DEFAULT_GRAPH_PRECISIONS, Source, combination

    assert [p.value for p in DEFAULT_GRAPH_PRECISIONS] == ["fp32", "fp16"]  # int8 is asked for, never a default
    for device in (Device.CPU, Device.CUDA, Device.TENSORRT):
        assert combination(BackendName.ORT, device, Precision.INT8).runs is Source.INT8_GRAPH
    assert combination(BackendName.OPENVINO, Device.CPU, Precision.INT8).runs is Source.INT8_IR
    assert Source.INT8_IR.graph_precision == Source.INT8_GRAPH.graph_precision == "int8"
    with pytest.raises(InputError, match="explicit quantization") as e:
        combination(BackendName.TENSORRT, Device.CUDA, Precision.INT8)
    assert "--backend ort --device tensorrt" in e.value.fix
    for device in (Device.CPU, Device.CUDA):
        with pytest.raises(InputError, match="int8 is a quantized graph"):
            combination(BackendName.TORCH, device, Precision.INT8)

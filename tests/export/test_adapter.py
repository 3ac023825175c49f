"""`save_adapter`: weights, a graph exported through the trunk's exporter (dynamo, default opset,
onnxscript's optimizer, checked atomic save) and parity-checked, then the manifest; nothing on a miss.

The parity numbers are measured here for every adapter kind, against `parity.TOLERANCES`, at the
size the product checks (48^3, batch 1) and at another one (40^3, batch 3): the spatial axes and the
batch are dynamic in the graph.
"""

from __future__ import annotations

import json

import pytest
import torch
from edgeseg.export import parity
from edgeseg.export.adapter import GRAPH, WEIGHTS, _example_inputs, save_adapter
from edgeseg.runtime.artifacts.adapter import AdapterIO, AdapterManifest
from edgeseg.export.onnx import DEFAULT_OPSET
from edgeseg.runtime.graph import inspect_graph
from edgeseg.runtime.manifest import read_manifest

from edgeseg.adapters import ADAPTERS, CUT_OF, build_adapter
from edgeseg.model.swinunetr import build_swinunetr
from tests.helpers import TINY, ort_session

torch.set_num_threads(2)

FS = TINY.feature_size
INPUTS = {"decoder1": ["features"], "pre-decoder1": ["enc0", "dec0"]}
FP32 = parity.TOLERANCES[("fp32", "random")]


def _adapter(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    pretrained = build_swinunetr(TINY) if kind == "ft-last" else None
    return build_adapter(kind, feature_size=FS, pretrained=pretrained).eval()


def _body(kind: str) -> AdapterManifest:
    return AdapterManifest(adapter=kind, cut=CUT_OF[kind], feature_size=FS, io=AdapterIO(tuple(INPUTS[CUT_OF[kind]])))


@pytest.mark.parametrize("kind", ADAPTERS)
def test_every_adapter_graph_matches_torch_within_the_fp32_tolerance(kind, tmp_path):
    adapter = _adapter(kind)
    names = INPUTS[CUT_OF[kind]]
    manifest = save_adapter(adapter, tmp_path, _body(kind)).record
    assert read_manifest(tmp_path, "adapter") == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([GRAPH, WEIGHTS, "manifest.json"])
    report = manifest["graph_parity"]
    (case,) = report["cases"]
    assert report["passed"] and (report["backend"], report["precision"]) == ("ort-cpu", "fp32")
    assert case["rel_l2"] <= FP32.rel_l2 and case["mask_flip"] <= FP32.mask_flip

    graph = inspect_graph(tmp_path / GRAPH, check=True)
    assert graph["opset"] == DEFAULT_OPSET and graph["precision"] == "fp32" and not graph["external_data"]
    assert [i["name"] for i in graph["inputs"]] == names
    assert [o["name"] for o in graph["outputs"]] == ["logits"]
    for value in graph["inputs"] + graph["outputs"]:  # batch and spatial axes dynamic, channels fixed
        assert value["shape"][0] == "N" and all(not isinstance(d, int) for d in value["shape"][2:]), value
    assert graph["inputs"][0]["shape"][1] == FS and graph["outputs"][0]["shape"][1] == 1

    # Another size and batch than both the export's example (32^3, batch 2) and the product's check.
    inputs = _example_inputs(names, FS, size=40, seed=2, batch=3)
    with torch.inference_mode():
        ref = adapter(*[torch.from_numpy(x) for x in inputs]).numpy()
    (got,) = ort_session(tmp_path / GRAPH).run(["logits"], dict(zip(names, inputs)))
    assert got.shape == ref.shape == (3, 1, 40, 40, 40)
    other = parity.compare({"random": (ref,)}, {"random": (got,)}, lambda outs: outs[0] > 0, artifact=GRAPH,
                           backend="ort-cpu", precision="fp32")
    print(f"{kind}: " + "; ".join(report_line(c) for c in [case, *map(vars, other.cases)]))
    assert other.passed, other.lines()


def report_line(case: dict) -> str:
    return f"rel L2 {case['rel_l2']:.2e}, max abs {case['max_abs']:.2e}, mask flips {case['mask_flip']:.1e}"


def test_a_parity_miss_leaves_no_adapter(tmp_path, monkeypatch):
    """A graph that computes something else than the torch adapter: refused, and the folder holds none of it."""
    import copy

    import edgeseg.export.adapter as adapter_module

    export = adapter_module.export_adapter_onnx

    def export_another(adapter, *args, **kwargs):
        other = copy.deepcopy(adapter)
        with torch.no_grad():
            other.conv.bias.add_(1.0)
        export(other, *args, **kwargs)

    monkeypatch.setattr(adapter_module, "export_adapter_onnx", export_another)
    with pytest.raises(parity.ParityError, match="parity check failed"):
        save_adapter(_adapter("lp"), tmp_path, _body("lp"))
    assert list(tmp_path.iterdir()) == []


def test_the_adapter_graph_fuses_into_a_trunk_without_an_opset_conversion(tmp_path):
    """The adapter's opset is the trunk export's default, so `fuse_graphs` takes it as it is."""
    import onnx

    from edgeseg.export.fuse import _opset

    save_adapter(_adapter("spatial"), tmp_path, _body("spatial"))
    model = onnx.load(str(tmp_path / GRAPH))
    assert _opset(model) == DEFAULT_OPSET and not model.functions
    assert json.loads((tmp_path / "manifest.json").read_text())["io"]["inputs"] == ["features"]
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}

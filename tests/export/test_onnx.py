"""Trunk -> ONNX export on the tiny SwinUNETR: parity with torch, dynamic batch only, I/O, files.

Exports are the slow part (~20-30 s each on 2 cores), so each cut is exported once per session:
the pre-decoder1 graph through the external-data branch (small threshold), the decoder1 graph
self-contained. test_fp16.py reuses the decoder1 graph (same seed, same place under pytest's
base temp dir) when it runs in the same session.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgeseg.export.onnx import (
    EXPORTER_REASON,
    ExportSpec,
    check_trunk_io,
    data_path_for,
    export_trunk_onnx,
    save_ir_model,
)
from edgeseg.export.parity import TOLERANCES
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.graph import inspect_graph

from edgeseg.model.spec import CUTS
from edgeseg.model.swinunetr import build_swinunetr, split
from tests.helpers import TINY, ort_session, rel_l2

torch.set_num_threads(2)

WINDOW = (64, 64, 64)
EXTERNAL_CUT = "pre-decoder1"  # exported through the external-data branch
FP32 = TOLERANCES[("fp32", "random")].rel_l2  # the inputs here are random windows


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_swinunetr(TINY).eval()


def cached_export(base: Path, cut: str, model: torch.nn.Module | None = None) -> tuple[Path, dict | None]:
    """The tiny trunk's graph at `cut` under `base`, exported on first use (shared with test_fp16.py)."""
    folder = base / "tiny-trunk-onnx" / cut
    path = folder / "trunk.onnx"
    result = None
    if not path.exists():
        model = model if model is not None else tiny_model()
        trunk, _ = split(model, cut)
        threshold = 1_000_000 if cut == EXTERNAL_CUT else 1_800_000_000
        result = export_trunk_onnx(trunk, ExportSpec.for_model(TINY, cut=cut), path,
                                   external_data_threshold=threshold).to_dict()
        (folder.parent / f"{cut}.result.json").write_text(json.dumps(result))
    else:
        result = json.loads((folder.parent / f"{cut}.result.json").read_text())
    return path, result


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.getbasetemp()
    return {cut: cached_export(base, cut, model) for cut in CUTS}


@pytest.fixture(scope="module")
def x3() -> np.ndarray:
    return np.random.default_rng(3).random((3, 1, *WINDOW), dtype=np.float32)


@pytest.fixture(scope="module")
def torch_out(model, x3) -> dict[str, list[np.ndarray]]:
    out = {}
    with torch.inference_mode():
        for cut in CUTS:
            trunk, _ = split(model, cut)
            y = trunk(torch.from_numpy(x3))
            out[cut] = [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]
    return out


# --- the spec ------------------------------------------------------------------------------------


def test_export_spec_round_trips_and_validates():
    spec = ExportSpec.for_model(TINY, cut="pre-decoder1", max_batch=8)
    assert spec.window == WINDOW and spec.output_names == ("enc0", "dec0")
    assert ExportSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for bad in (dict(window=(96, 96, 80)), dict(window=(32, 64, 64)), dict(opset=16), dict(max_batch=0),
                dict(cut="encoder"), dict(exporter="torchscript")):
        with pytest.raises(InputError, match="invalid export spec"):
            ExportSpec(**bad)
    with pytest.raises(InputError, match="unknown export spec keys"):
        ExportSpec.from_dict({"cut": "decoder1", "dtype": "fp16"})


def test_dynamic_spatial_axes_are_refused_with_the_reason():
    with pytest.raises(InputError, match="dynamic spatial axes are not supported") as e:
        ExportSpec.from_dict({"cut": "decoder1", "dynamic_spatial": True})
    assert "attention masks" in e.value.fix
    assert "dynamic" not in {f for f in ExportSpec.__dataclass_fields__}
    assert "attention masks" in ExportSpec.__doc__


def test_refuses_a_trunk_split_at_another_cut(model, tmp_path):
    trunk, _ = split(model, "decoder1")
    with pytest.raises(InputError, match="split at 'decoder1'"):
        export_trunk_onnx(trunk, ExportSpec.for_model(TINY, cut="pre-decoder1"), tmp_path / "t.onnx")


def test_refuses_to_overwrite_without_force(model, tmp_path):
    trunk, _ = split(model, "decoder1")
    spec = ExportSpec.for_model(TINY)
    (tmp_path / "t.onnx").write_bytes(b"old")
    with pytest.raises(InputError, match="refusing to overwrite") as e:
        export_trunk_onnx(trunk, spec, tmp_path / "t.onnx")
    assert "--force" in e.value.fix and (tmp_path / "t.onnx").read_bytes() == b"old"
    (tmp_path / "u.onnx.data").write_bytes(b"stale weights")  # a data file alone is not overwritten either
    with pytest.raises(InputError, match="u.onnx.data"):
        export_trunk_onnx(trunk, spec, tmp_path / "u.onnx")
    with pytest.raises(InputError, match=r"end in \.onnx"):
        export_trunk_onnx(trunk, spec, tmp_path / "t.pt")


# --- the exported graphs -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("cut", CUTS)
def test_onnxruntime_matches_torch_at_batch_1_and_3(exported, x3, torch_out, cut):
    path, _ = exported[cut]
    sess = ort_session(path)
    y3 = sess.run(None, {"image": x3})
    y1 = sess.run(None, {"image": x3[1:2]})  # the same graph at another batch size
    assert [y.shape[0] for y in y3] == [3] * len(y3) and [y.shape[0] for y in y1] == [1] * len(y1)
    for got3, got1, ref in zip(y3, y1, torch_out[cut]):
        assert got3.shape == ref.shape and got3.dtype == np.float32
        assert rel_l2(got3, ref) <= FP32
        assert rel_l2(got1, ref[1:2]) <= FP32


@pytest.mark.slow
@pytest.mark.parametrize("cut", CUTS)
def test_graph_io_opset_and_ops(exported, cut):
    path, result = exported[cut]
    info = inspect_graph(path, check=True)
    assert info["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", 1, *WINDOW]}]
    if cut == "decoder1":
        assert info["outputs"] == [{"name": "features", "dtype": "float32", "shape": ["N", 12, *WINDOW]}]
    else:
        assert info["outputs"] == [{"name": "enc0", "dtype": "float32", "shape": ["N", 12, *WINDOW]},
                                   {"name": "dec0", "dtype": "float32", "shape": ["N", 12, 32, 32, 32]}]
    assert info["opset"] >= 17 and info["opset"] == result["opset"]
    assert info["export_spec"]["cut"] == cut and info["export_spec"]["window"] == list(WINDOW)
    ops = info["op_counts"]
    assert info["n_nodes"] == result["n_nodes"] == sum(ops.values())
    # LayerNorm stays one op (10 in the blocks, 4 in patch merging, 5 on the normalised outputs).
    assert ops["LayerNormalization"] == 19
    assert not {"ReduceMean", "Sqrt", "Pow"} & set(ops)
    # The attention-mask ScatterND chains are folded into constants by the optimizer.
    assert "ScatterND" not in ops and result["n_nodes_unoptimized"] > 5 * result["n_nodes"]
    assert result["exporter"] == "dynamo" and result["exporter_reason"] == EXPORTER_REASON


@pytest.mark.slow
def test_another_spatial_size_is_refused(exported):
    path, _ = exported["decoder1"]
    with pytest.raises(Exception, match="(?i)invalid dimensions|dimension"):
        ort_session(path).run(None, {"image": np.zeros((1, 1, 96, 96, 96), np.float32)})
    graph = inspect_graph(path)
    with pytest.raises(InputError) as e:
        check_trunk_io(graph, (96, 96, 96), "decoder1", path=path)
    assert "(64, 64, 64)" in e.value.problem and "(96, 96, 96)" in e.value.problem
    assert "re-export" in e.value.fix and str(path) in str(e.value)
    check_trunk_io(graph, WINDOW, "decoder1", in_channels=1, path=path)
    with pytest.raises(InputError, match="cut 'decoder1', not 'pre-decoder1'"):
        check_trunk_io(graph, WINDOW, "pre-decoder1", path=path)
    with pytest.raises(InputError, match="2 channels|1 channels"):
        check_trunk_io(graph, WINDOW, "decoder1", in_channels=2, path=path)


def _trunk_io(input_shape, outputs=(("features", ["N", 12, 64, 64, 64]),), dtype="float32") -> dict:
    return {"inputs": [{"name": "image", "dtype": dtype, "shape": list(input_shape)}],
            "outputs": [{"name": n, "dtype": "float32", "shape": list(s)} for n, s in outputs]}


def test_the_trunk_io_check_refuses_what_export_must_never_write():
    """The check export runs on every graph it writes: each way a graph can miss the trunk's contract."""
    check_trunk_io(_trunk_io(["N", 1, 64, 64, 64]), WINDOW, "decoder1", in_channels=1)
    check_trunk_io(_trunk_io(["N", 1, 64, 64, 64], (("enc0", ["N", 12, 64, 64, 64]), ("dec0", ["N", 12, 32, 32, 32]))),
                   WINDOW, "pre-decoder1")
    refusals = {
        "dynamic spatial axes": _trunk_io(["N", 1, "N", "N", "N"]),
        "fixed batch of 2": _trunk_io([2, 1, 64, 64, 64]),
        "expected (N, C, D, H, W)": _trunk_io(["N", 64, 64, 64]),
        "dtype is float16": _trunk_io(["N", 1, 64, 64, 64], dtype="float16"),
        "spatial shape (32, 32, 32); expected (64, 64, 64)": _trunk_io(["N", 1, 64, 64, 64],
                                                                      (("features", ["N", 12, 32, 32, 32]),)),
        "cut 'pre-decoder1', not 'decoder1'": _trunk_io(["N", 1, 64, 64, 64], (("enc0", ["N", 12, 64, 64, 64]),
                                                                               ("dec0", ["N", 12, 32, 32, 32]))),
    }
    for problem, graph in refusals.items():
        with pytest.raises(InputError) as e:
            check_trunk_io(graph, WINDOW, "decoder1", in_channels=1)
        assert problem in e.value.problem, (problem, e.value.problem)
    other = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 1, 64, 64, 64]}], "outputs": []}
    with pytest.raises(InputError, match="one input 'image'"):
        check_trunk_io(other, WINDOW, "decoder1")
    with pytest.raises(InputError, match="unknown cut point"):
        check_trunk_io(_trunk_io(["N", 1, 64, 64, 64]), WINDOW, "decoder2")


@pytest.mark.slow
def test_self_contained_graph_has_no_data_file(exported, tmp_path):
    path, result = exported["decoder1"]
    assert result["data_path"] is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["trunk.onnx"]  # no .data, no temp leftovers
    assert result["bytes"] == path.stat().st_size
    assert inspect_graph(path)["external_data"] is False
    # Re-saving it over a folder that holds a stale data file removes that file.
    import onnx_ir as ir

    target = tmp_path / "t.onnx"
    data_path_for(target).write_bytes(b"stale")
    assert save_ir_model(ir.load(path), target, force=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.onnx"]


@pytest.mark.slow
def test_external_data_graph_moves_and_loads_from_any_cwd(exported, x3, torch_out, tmp_path, monkeypatch):
    path, result = exported[EXTERNAL_CUT]
    assert result["data_path"] == str(data_path_for(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["trunk.onnx", "trunk.onnx.data"]
    assert result["bytes"] == path.stat().st_size + data_path_for(path).stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"trunk.onnx.data"}  # relative, beside the graph
    # Move the folder, go somewhere else, load by absolute path.
    shutil.copytree(path.parent, tmp_path / "a")
    moved = Path(shutil.move(tmp_path / "a", tmp_path / "b")) / "trunk.onnx"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert inspect_graph(moved)["external_files"] == ["trunk.onnx.data"]
    onnx.checker.check_model(str(moved))
    y = ort_session(moved.resolve()).run(None, {"image": x3[:1]})
    for got, ref in zip(y, torch_out[EXTERNAL_CUT]):
        assert rel_l2(got, ref[:1]) <= FP32
    assert os.listdir(elsewhere) == []

"""What an ONNX graph file is, read without running it: the one inspector for export and runtime.

`inspect_graph(path)` reads the graph's protobuf (never its external weights), refuses a missing,
corrupt, truncated or incomplete graph, and one whose external weights file is missing, truncated or
not beside it, with an `InputError` naming the file; it returns the graph's inputs and outputs (name,
dtype, shape with "N" for a dynamic dimension), its precision, opset, op histogram, sizes and the
export spec edgeseg recorded in it. `check=True` also runs `onnx.checker` (a full pass over the
file: export does it, the backends leave it to ONNX Runtime's own load).

Torch-free: onnx's protobuf only, so the deployment runtime (`runtime/backends/ort.py`) uses it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx

from edgeseg.runtime.errors import InputError

__all__ = ["DYNAMIC", "EXPORT_SPEC_KEY", "inspect_graph", "value_info"]

DYNAMIC = "N"  # how a dynamic dimension is written in a shape
EXPORT_SPEC_KEY = "edgeseg.export_spec"  # metadata key under which export records its ExportSpec
# ONNX TensorProto element types that make a graph fp16 or bf16
_FLOAT16, _BFLOAT16 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16


def _reexport_fix() -> str:
    return "re-export it (edgeseg export), and copy the .onnx together with its .onnx.data file if it has one"


def _dtype_name(elem_type: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def value_info(v: onnx.ValueInfoProto) -> dict:
    """One graph input or output: {"name", "dtype" (numpy's name), "shape" ("N" for a dynamic dimension)}."""
    t = v.type.tensor_type
    shape = []
    if t.HasField("shape"):
        for d in t.shape.dim:
            shape.append(d.dim_value if d.HasField("dim_value") else DYNAMIC)
    return {"name": v.name, "dtype": _dtype_name(t.elem_type), "shape": shape}


def _external_locations(model: onnx.ModelProto) -> dict[str, int]:
    """External data files the graph refers to -> the bytes it needs from each."""
    needs: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            end = int(info.get("offset", 0)) + int(info.get("length", 0))
            loc = info.get("location", "")
            needs[loc] = max(needs.get(loc, 0), end)
    return needs


def _precision(graph: onnx.GraphProto) -> str:
    """"int8" for a quantized (QDQ) graph, "fp16" if any initializer, Cast target or typed value is float16 (a
    mixed graph), "bf16" likewise, else "fp32"."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return "int8"
    types: set[int] = {init.data_type for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Cast":
            types.update(a.i for a in node.attribute if a.name == "to")
    for vi in (*graph.input, *graph.output, *graph.value_info):
        types.add(vi.type.tensor_type.elem_type)
    return "fp16" if _FLOAT16 in types else "bf16" if _BFLOAT16 in types else "fp32"


def inspect_graph(path: str | Path, *, check: bool = False) -> dict:
    """Describe the ONNX graph at `path` without running it; a graph that cannot be run is an `InputError`.

    Returns inputs/outputs (name, dtype, shape with "N" for dynamic dimensions; initializers listed as
    inputs by old exporters are left out), precision ("fp32", "fp16" for a mixed graph, "bf16", "int8" for a
    QDQ graph), opset, ir_version, producer, node count, op histogram, whether weights are external (and the files),
    bytes (graph plus data files), edgeseg's export spec and the metadata. `check`: also run
    `onnx.checker` on the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("ONNX graph not found", path=path, fix="check the path, or export the trunk first")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(f"not a readable ONNX graph (corrupt or truncated: {type(e).__name__}: {e})",
                         path=path, fix=_reexport_fix()) from None
    graph = model.graph
    if not graph.node or not graph.input or not graph.output or not model.opset_import:
        raise InputError("not a complete ONNX graph (no nodes, inputs, outputs or opset: truncated?)",
                         path=path, fix=_reexport_fix())
    externals = _external_locations(model)
    for loc, need in externals.items():
        data = path.parent / loc
        if Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise InputError(f"external data location {loc!r} is not a file name beside the graph", path=path,
                             fix=_reexport_fix())
        if not data.is_file():
            raise InputError(f"its weights file {loc} is missing", path=data, fix=_reexport_fix())
        if data.stat().st_size < need:
            raise InputError(f"weights file is truncated ({data.stat().st_size} bytes; the graph needs {need})",
                             path=data, fix=_reexport_fix())
    if check:
        try:
            onnx.checker.check_model(str(path))
        except Exception as e:
            raise InputError(f"not a valid ONNX graph ({type(e).__name__}: {str(e).splitlines()[0][:300]})",
                             path=path, fix=_reexport_fix()) from None
    initializer_names = {t.name for t in graph.initializer}
    op_counts = Counter(n.op_type for n in graph.node)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    metadata = {p.key: p.value for p in model.metadata_props}
    spec = None
    if EXPORT_SPEC_KEY in metadata:
        try:
            spec = json.loads(metadata[EXPORT_SPEC_KEY])
        except json.JSONDecodeError:
            spec = None
    return {
        "path": str(path),
        "inputs": [value_info(v) for v in graph.input if v.name not in initializer_names],
        "outputs": [value_info(v) for v in graph.output],
        "precision": _precision(graph),
        "opset": opset,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "n_nodes": len(graph.node),
        "op_counts": dict(op_counts.most_common()),
        "external_data": bool(externals),
        "external_files": sorted(externals),
        "bytes": path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in externals),
        "export_spec": spec,
        "metadata": metadata,
    }

"""fp32 ONNX graph -> mixed-precision (fp16) graph, for strongly typed TensorRT.

TensorRT 11 removed ``BuilderFlag.FP16`` and weak typing is deprecated since 10.12: a strongly typed
engine runs each layer in the precision its ONNX tensors have, so the precision must live in the
graph. This pass writes it there, with explicit ``Cast`` nodes:

- fp16: ``Conv``, ``ConvTranspose``, ``MatMul``, ``Gemm`` (weights and biases stored as fp16), and
  the elementwise and data-movement ops between them (Add, Mul, Div, Erf, LeakyRelu, Reshape,
  Transpose, Slice, Concat, Pad, ...) when every non-constant input they combine is already fp16.
- fp32: normalisations (``LayerNormalization``, ``InstanceNormalization``, ``GroupNormalization``, ...),
  ``Softmax``, reductions (``ReduceMean``, ``ReduceSum``, ...), ``Pow``, ``Sqrt``, ``Exp``, ``Log``,
  ``Reciprocal``, any op this pass does not know, and every elementwise op that mixes an fp32 input
  with an fp16 one (so a decomposed normalisation's ``Sub``/``Div`` after its fp32 reductions stays
  fp32; the fp16 input is cast up, which is exact). Their initializers (scales, biases) stay fp32.
- Inputs of other kinds keep their type: ``Resize`` scales, shapes, indices, ``Shape``/``Cast``
  inputs.
- Graph inputs and outputs stay float32: fp32 I/O keeps the runtime's preprocessing, the feature
  caches and every consumer identical across precisions, and the casts at the boundary are cheap
  next to a 3D convolution.

Written with onnx_ir rather than onnxconverter_common's ``convert_float_to_float16`` (1.16.0). That
one does run on these graphs with onnx 1.23 (checker passes, same 4.5e-4 rel L2 on the tiny trunk),
but it inserted 189 Cast nodes where this pass needs 90, it moves weights of magnitude below 1e-7 up
to +-1e-7 instead of rounding them, it would be one more dependency, and it says nothing about what
it did; this pass decides per value, moves casts above exact data movement, and reports.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.export.onnx import EXTERNAL_DATA_THRESHOLD, _check_target, save_ir_model
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.graph import inspect_graph

__all__ = ["FP16_OPS", "FP32_OPS", "Fp16Result", "to_mixed_fp16"]

FP16_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
FP32_OPS = frozenset({
    "LayerNormalization", "InstanceNormalization", "BatchNormalization", "GroupNormalization",
    "RMSNormalization", "LpNormalization", "MeanVarianceNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceMax", "ReduceMin", "ReduceProd", "GlobalAveragePool", "AveragePool", "GlobalLpPool", "LpPool",
    "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "CumSum",
})
# Elementwise arithmetic and comparisons: fp16 when all their non-constant float inputs are fp16.
ELEMENTWISE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu",
    "Erf", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Max", "Min", "Sum", "Where", "Sign",
    "Floor", "Ceil", "Round", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
})
# Data movement: the output has the input's type; same rule.
MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "Slice", "Concat", "Split", "Gather", "GatherElements", "GatherND", "Squeeze",
    "Unsqueeze", "Flatten", "Expand", "Tile", "Pad", "Identity", "Resize", "DepthToSpace", "SpaceToDepth",
    "MaxPool", "ScatterND", "ScatterElements", "Dropout", "Trilu",
})
# Ops whose float inputs may have any float type and which need no cast (their outputs are not
# float, or their type is set by an attribute).
TYPE_AGNOSTIC_OPS = frozenset({"Shape", "Size", "Cast", "IsNaN", "IsInf", "NonZero"})
# For ops with float inputs of other roles, the inputs that carry the data (the rest keep their type).
DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (0,), "Slice": (0,), "Gather": (0,), "GatherElements": (0,), "GatherND": (0,), "Squeeze": (0,),
    "Unsqueeze": (0,), "Expand": (0,), "Tile": (0,), "Split": (0,), "Resize": (0,), "Dropout": (0,),
    "Trilu": (0,), "Pad": (0, 2), "Where": (1, 2), "ScatterND": (0, 2), "ScatterElements": (0, 2),
}
# Movement ops that commute exactly with a cast to fp16 (Resize and MaxPool left out: interpolation
# and padding values need not).
EXACT_MOVEMENT_OPS = MOVEMENT_OPS - {"Resize", "MaxPool", "ScatterND", "ScatterElements", "Dropout"}
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Fp16Result:
    """What `to_mixed_fp16` wrote and how the graph's compute splits across precisions."""

    src: Path
    path: Path
    data_path: Path | None
    seconds: float
    nodes_by_dtype: dict[str, int]  # compute dtype -> node count ("float16", "float32", "none"), casts excluded
    ops_by_dtype: dict[str, dict[str, int]]  # compute dtype -> op type -> count
    fp32_op_types: list[str]  # op types with at least one node kept in fp32
    n_casts: int  # Cast nodes in the output graph
    n_casts_inserted: int
    bytes: int
    src_bytes: int
    initializers_by_dtype: dict[str, int] = field(default_factory=dict)
    n_weights_clipped: int = 0  # weight values beyond fp16's range, clipped to +-65504

    def to_dict(self) -> dict:
        return {
            "src": str(self.src), "path": str(self.path),
            "data_path": None if self.data_path is None else str(self.data_path),
            "seconds": round(self.seconds, 3), "nodes_by_dtype": dict(self.nodes_by_dtype),
            "ops_by_dtype": {k: dict(v) for k, v in self.ops_by_dtype.items()},
            "fp32_op_types": list(self.fp32_op_types), "n_casts": self.n_casts,
            "n_casts_inserted": self.n_casts_inserted, "bytes": self.bytes, "src_bytes": self.src_bytes,
            "initializers_by_dtype": dict(self.initializers_by_dtype), "n_weights_clipped": self.n_weights_clipped,
        }


def to_mixed_fp16(src: str | Path, dst: str | Path, *, force: bool = False,
                  external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Fp16Result:
    """Convert fp32 graph `src` to mixed precision at `dst` (weights external above the threshold).

    Graph inputs and outputs stay float32 (see the module docstring). Refuses to overwrite `dst`
    unless `force`, and refuses a source that is not a plain fp32 graph.
    """
    import onnx_ir as ir

    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    info = inspect_graph(src, check=True)  # a corrupt or truncated source is an InputError naming it
    _check_target(dst, force)
    if src.resolve() == dst.resolve():
        raise InputError("the fp16 graph would overwrite its fp32 source", path=dst, fix="choose another output")
    bad_io = [v["name"] for v in info["inputs"] + info["outputs"] if v["dtype"] != "float32"]
    if bad_io:
        raise InputError(f"graph inputs/outputs {bad_io} are not float32; expected an fp32 export", path=src,
                         fix="convert the fp32 graph that edgeseg export wrote")
    model = ir.load(src)
    if any(v.dtype == ir.DataType.FLOAT16 for v in _all_values(model.graph)):
        raise InputError("graph already holds float16 tensors (already converted?)", path=src,
                         fix="convert the fp32 graph that edgeseg export wrote")
    if len(model.functions) or any(_has_subgraph(n) for n in model.graph):
        raise InputError("graph has functions or control-flow subgraphs; this pass handles flat graphs only",
                         path=src, fix="export with edgeseg export (which inlines functions)")
    try:
        stats = _convert(model)
    except InputError as e:
        raise InputError(e.problem, path=src, fix=e.fix) from None
    model.metadata_props["edgeseg.precision"] = "mixed-fp16"
    data_path = save_ir_model(model, dst, force=force, external_data_threshold=external_data_threshold)
    size = dst.stat().st_size + (data_path.stat().st_size if data_path else 0)
    by_dtype = Counter()
    for dtype, ops in stats["ops_by_dtype"].items():
        by_dtype[dtype] = sum(ops.values())
    return Fp16Result(
        src=src, path=dst, data_path=data_path, seconds=time.perf_counter() - t0,
        nodes_by_dtype=dict(by_dtype), ops_by_dtype=stats["ops_by_dtype"],
        fp32_op_types=sorted(stats["ops_by_dtype"].get("float32", {})),
        n_casts=sum(1 for n in model.graph if n.op_type == "Cast"), n_casts_inserted=stats["n_casts_inserted"],
        bytes=size, src_bytes=info["bytes"], initializers_by_dtype=stats["initializers_by_dtype"],
        n_weights_clipped=stats["n_weights_clipped"],
    )


def _all_values(graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def _has_subgraph(node) -> bool:
    import onnx_ir as ir

    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())


def _feeds_only(value, dtype, decision, cast_indices) -> bool:
    """Whether every use of `value` is a data input of a node computing in `dtype` (graph outputs: no)."""
    if value.is_graph_output() or not value.uses():
        return False
    for use in value.uses():
        node, index = use[0], use[1]
        if decision.get(node) != dtype or index not in cast_indices(node, dtype):
            return False
    return True


def _convert(model) -> dict:
    """The pass itself, in place on an `onnx_ir.Model`."""
    import onnx_ir as ir
    from onnx_ir.passes.common import (
        LiftConstantsToInitializersPass, RemoveUnusedNodesPass, ShapeInferencePass, TopologicalSortPass,
    )

    F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
    graph = model.graph
    # Constant nodes become initializers so that every constant is handled one way.
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    TopologicalSortPass()(model)
    # Every value's type must be known to decide where casts go (exporters usually record them).
    if any(v.dtype is None for node in graph for v in node.outputs):
        ShapeInferencePass()(model)
        untyped = [v.name for node in graph for v in node.outputs if v.dtype is None]
        if untyped:
            raise InputError(f"ONNX shape inference could not type {len(untyped)} values (e.g. {untyped[:3]})",
                             fix="export the graph with edgeseg export, which records every type")

    def is_float(v) -> bool:  # fp32 in the source; fp16 once this pass has converted it
        return v is not None and v.dtype in (F32, F16)

    def is_const(v) -> bool:
        return v.const_value is not None and not v.is_graph_input()

    def cast_indices(node, dtype) -> list[int]:
        """Inputs of `node` that must have `dtype` when the node computes in `dtype`."""
        if node.op_type in TYPE_AGNOSTIC_OPS:
            return []
        idx = DATA_INPUTS.get(node.op_type)
        return [i for i, v in enumerate(node.inputs) if is_float(v) and (idx is None or i in idx)]

    # Phase 1: decide each node's compute dtype, walking in topological order.
    vdtype: dict = {v: F32 for v in graph.inputs if is_float(v)}
    decision: dict = {}
    for node in graph:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        has_float = any(is_float(v) for v in node.inputs) or any(is_float(v) for v in node.outputs)
        if not has_float:
            d = None
        elif op in TYPE_AGNOSTIC_OPS:
            d = None
        elif op in FP16_OPS:
            d = F16
        elif op in ELEMENTWISE_OPS or op in MOVEMENT_OPS:
            dyn = [vdtype.get(node.inputs[i], F32) for i in cast_indices(node, F16) if not is_const(node.inputs[i])]
            d = F16 if dyn and all(x == F16 for x in dyn) else F32
        else:  # FP32_OPS and every op this pass does not know
            d = F32
        decision[node] = d
        for v in node.outputs:
            if is_float(v):
                vdtype[v] = d or F32

    # Phase 1b: a data-movement op that feeds only fp16 compute moves to fp16 too (the Cast moves up
    # before it): exact, since moving values and rounding them commute, and it halves the traffic.
    # Walking backwards lets whole chains (LayerNorm -> Pad -> roll -> window partition -> MatMul) move.
    for node in reversed(list(graph)):
        if decision.get(node) != F32 or node.op_type not in EXACT_MOVEMENT_OPS:
            continue
        outs = [v for v in node.outputs if is_float(v)]
        if outs and all(_feeds_only(v, F16, decision, cast_indices) for v in outs):
            decision[node] = F16
    vdtype = {v: F32 for v in graph.inputs if is_float(v)}
    for node in graph:
        for v in node.outputs:
            if is_float(v):
                vdtype[v] = decision[node] or F32

    # Which precision each constant is wanted in.
    const_wants: dict = defaultdict(set)
    for node, d in decision.items():
        if d is not None:
            for i in cast_indices(node, d):
                v = node.inputs[i]
                if is_const(v):
                    const_wants[v].add(d)

    # Phase 2: apply. Constants are converted (in place when nothing needs them in fp32, else as an
    # fp16 copy); activations get one Cast per value and target dtype, placed before its first use.
    n_clipped = 0
    const_copy: dict = {}

    def const_as(v, dtype):
        nonlocal n_clipped
        if dtype == F32 or v.dtype == dtype:
            return v
        if v in const_copy:
            return const_copy[v]
        arr = np.asarray(v.const_value.numpy())
        n_clipped += int(np.count_nonzero(np.abs(arr) > FP16_MAX))
        half = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)
        if const_wants[v] == {F16} and not v.is_graph_output():
            v.const_value = ir.tensor(half, name=v.name)
            v.dtype = F16
            new = v
        else:
            new = ir.Value(name=f"{v.name}__fp16", shape=v.shape, type=ir.TensorType(F16),
                           const_value=ir.tensor(half, name=f"{v.name}__fp16"))
            graph.register_initializer(new)
        const_copy[v] = new
        return new

    casts: dict = {}
    n_casts = 0

    def cast_as(v, dtype, before):
        nonlocal n_casts
        key = (v, dtype)
        if key not in casts:
            suffix = "fp16" if dtype == F16 else "fp32"
            node = ir.node("Cast", [v], {"to": dtype}, name=f"{v.name}__cast_{suffix}")
            out = node.outputs[0]
            out.name, out.shape, out.type = f"{v.name}__{suffix}", v.shape, ir.TensorType(dtype)
            graph.insert_before(before, node)
            casts[key] = out
            n_casts += 1
        return casts[key]

    ops_by_dtype: dict[str, Counter] = defaultdict(Counter)
    for node in list(graph):
        d = decision.get(node)
        ops_by_dtype["none" if d is None else ("float16" if d == F16 else "float32")][node.op_type] += 1
        if d is None:
            continue
        for i in cast_indices(node, d):
            v = node.inputs[i]
            if is_const(v):
                if v.dtype != d:
                    node.replace_input_with(i, const_as(v, d))
            elif vdtype.get(v, F32) != d:
                node.replace_input_with(i, cast_as(v, d, node))
        for v in node.outputs:
            if v.dtype == F32:
                v.dtype = d

    # Graph outputs back to float32, under their own names.
    for k, v in enumerate(list(graph.outputs)):
        if v.dtype == F16:
            name = v.name
            v.name = f"{name}__fp16"
            node = ir.node("Cast", [v], {"to": F32}, name=f"{name}__cast_fp32")
            out = node.outputs[0]
            out.name, out.shape, out.type = name, v.shape, ir.TensorType(F32)
            graph.append(node)
            graph.outputs[k] = out
            n_casts += 1

    RemoveUnusedNodesPass()(model)  # drops initializers replaced by their fp16 copies
    init_dtypes = Counter(str(np.dtype(v.dtype.numpy())) if v.dtype is not None else "?"
                          for v in graph.initializers.values())
    return {
        "ops_by_dtype": {k: dict(c.most_common()) for k, c in ops_by_dtype.items()},
        "n_casts_inserted": n_casts,
        "initializers_by_dtype": dict(init_dtypes),
        "n_weights_clipped": n_clipped,
    }

"""FLOPs of an ONNX graph, counted from its static shapes (no weights read, nothing run).

Conv, ConvTranspose, MatMul and Gemm are counted as 2 x multiply-accumulates (bias additions, norms,
softmax and element-wise work are not: they are a few percent of a SwinUNETR trunk and not what a
tensor core does), the convention of `torch.utils.flop_counter` too, so the two counts agree on the
same module. Shapes come from ONNX shape inference with the dynamic batch axis set to `batch`; a
counted node whose shapes cannot be inferred is listed in `unknown` instead of being guessed.

At feature_size 48 on a 96^3 window this gives 636 GFLOPs for the trunk cut at decoder1 and 293
GFLOPs at pre-decoder1 (the decoder1 block's full-resolution convolutions are the difference).
`count_module_flops` is the same count from a torch module (torch's FlopCounterMode on the meta device,
nothing computed): for a script that has the module but no exported graph (benchmarks/gpu_check.py), and
the cross-check of `count_onnx_flops` in the tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class FlopCount:
    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    nodes: int = 0  # counted nodes
    unknown: list[str] = field(default_factory=list)  # counted op types whose shapes were not inferred
    batch: int = 1

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def to_dict(self) -> dict:
        return {**asdict(self), "gflops": round(self.gflops, 3)}


def count_module_flops(module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one call of `module` on an input of `input_shape` (batch included), counted by torch on a
    meta-device copy: no memory, nothing computed, the module itself left where it is."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(module).to("meta")
    with torch.inference_mode(False), torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(*input_shape, device="meta"))
    return int(counter.get_total_flops())


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_flops(op: str, inputs: list[tuple[int, ...] | None], outputs: list[tuple[int, ...] | None],
               attrs: dict[str, Any] | None = None) -> int | None:
    """FLOPs of one node from its input/output shapes (None where a needed shape is unknown).

    Pure: the rule per op type, testable on hand-made shapes.
    """
    attrs = attrs or {}  # the group is in the weight's shape: W[1] is already C_in / group (C_out / group transposed)
    if op == "Conv":
        w, y = inputs[1] if len(inputs) > 1 else None, outputs[0]
        if w is None or y is None:
            return None
        # W: (Cout, Cin / group, *kernel); Y: (N, Cout, *spatial)
        return 2 * _prod(y) * _prod(w[1:])
    if op == "ConvTranspose":
        x, w = inputs[0], inputs[1] if len(inputs) > 1 else None
        if x is None or w is None:
            return None
        # W: (Cin, Cout / group, *kernel); every input element meets Cout / group x kernel weights
        return 2 * _prod(x) * _prod(w[1:])
    if op == "MatMul":
        a, b = inputs[0], inputs[1] if len(inputs) > 1 else None
        if a is None or b is None:
            return None
        a2 = (1, *a) if len(a) == 1 else tuple(a)
        b2 = (*b, 1) if len(b) == 1 else tuple(b)
        m, k, n = a2[-2], a2[-1], b2[-1]
        batch_a, batch_b = a2[:-2], b2[:-2]
        rank = max(len(batch_a), len(batch_b))
        batch_a = (1,) * (rank - len(batch_a)) + tuple(batch_a)
        batch_b = (1,) * (rank - len(batch_b)) + tuple(batch_b)
        batch = _prod(max(p, q) for p, q in zip(batch_a, batch_b))
        return 2 * batch * m * k * n
    if op == "Gemm":
        a, b = inputs[0], inputs[1] if len(inputs) > 1 else None
        if a is None or b is None:
            return None
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return 2 * m * k * n
    return 0


def _static_model(path: str | Path, batch: int):
    """The graph with float weights turned into shaped inputs (nothing large in memory), batch fixed."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    g = model.graph
    keep = []
    for init in g.initializer:
        # Large tensors become inputs with their type and shape: shape inference needs no values for them.
        if _prod(init.dims) > 64 and init.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    inits = {i.name for i in keep}
    for vi in g.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if not d.HasField("dim_value"):
                if i != 0:
                    raise ValueError(f"{path}: input {vi.name!r} has a dynamic axis {i} besides the batch")
                d.Clear()
                d.dim_value = int(batch)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


def count_onnx_flops(path: str | Path, *, batch: int = 1) -> FlopCount:
    """FLOPs of one run of the graph at `batch` (per window: divide by `batch`, or pass batch=1)."""
    model = _static_model(path, batch)
    g = model.graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            shapes[vi.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        shapes[vi.name] = None if any(d is None for d in dims) else tuple(dims)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)

    result = FlopCount(total=0, batch=batch)
    for node in g.node:
        if node.op_type not in COUNTED_OPS:
            continue
        attrs = {k: _attr(node, k) for k in ("transA", "transB")}
        flops = node_flops(node.op_type, [shapes.get(n) for n in node.input], [shapes.get(n) for n in node.output],
                           attrs)
        if flops is None:
            result.unknown.append(node.name or node.op_type)
            continue
        result.total += flops
        result.by_op[node.op_type] = result.by_op.get(node.op_type, 0) + flops
        result.nodes += 1
    return result


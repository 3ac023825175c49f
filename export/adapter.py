"""An adapter folder: `adapter.safetensors` (trainable weights), `adapter.onnx` (for fusion and the
runtime) and `manifest.json`. The ONNX graph takes the trunk's outputs by name and returns the organ
logit; unlike the trunk, its spatial axes are dynamic (convolutions and instance norms only).

The graph goes through the trunk's export path (`export/onnx.py`): the dynamo exporter at the
default opset (`DEFAULT_OPSET`, so the adapter fuses with a default trunk export without a version
conversion), onnxscript's optimizer, and the atomic, checked save. Its parity against the torch
module is checked with `parity.compare` and the fp32 tolerance before anything is called an adapter,
on random features of another size and batch than the export's example, so the dynamic axes are
exercised too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np

from edgeseg.export.parity import ParityReport, compare
from edgeseg.runtime.artifacts.adapter import AdapterManifest
from edgeseg.runtime.atomic import atomic_path, unlink_own
from edgeseg.runtime.errors import InputError

WEIGHTS, GRAPH = AdapterManifest.WEIGHTS, AdapterManifest.GRAPH
OUTPUT = "logits"
HALF_RESOLUTION = ("dec0",)  # trunk outputs at half the window's resolution (the pre-decoder1 cut's second)


def _example_inputs(names: list[str], channels: int, size: int = 32, seed: int = 0, batch: int = 1) -> list[np.ndarray]:
    """Random features in the trunk's layout: the first output at full resolution, `dec0` at half."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, channels, *(size // 2 if n in HALF_RESOLUTION else size,) * 3))
            .astype(np.float32) for n in names]


def _dynamic_shapes(names: list[str]) -> tuple[dict, ...]:
    """Batch and spatial axes dynamic; a half-resolution input's sides are exactly half the others'."""
    from torch.export import Dim

    batch = Dim("N", min=1)
    if any(n in HALF_RESOLUTION for n in names):
        half = [Dim(f"half_{axis}", min=2) for axis in "dhw"]
        full = [2 * d for d in half]  # torch.export needs the relation: the block concatenates both
    else:
        half, full = [], [Dim(axis, min=2) for axis in "dhw"]
    return tuple({0: batch, **dict(zip((2, 3, 4), half if n in HALF_RESOLUTION else full))} for n in names)


def export_adapter_onnx(adapter, names: list[str], channels: int, path: Path, *, opset: int | None = None) -> None:
    """Export `adapter` to `path` through the trunk's exporter, optimizer and checked atomic save."""
    import torch

    from edgeseg.export.onnx import DEFAULT_OPSET, export_dynamo, optimize_graph, save_ir_model

    # Batch 2 and 32^3: torch.export specialises axes whose example size is 0 or 1.
    example = tuple(torch.from_numpy(x) for x in _example_inputs(names, channels, batch=2))
    # forward(*features): torch.export binds the inputs to one tuple argument, so the shapes nest once more.
    model, _ = export_dynamo(adapter, example, names, [OUTPUT], (_dynamic_shapes(names),),
                             DEFAULT_OPSET if opset is None else opset)
    optimize_graph(model)
    model.doc_string = f"edgeseg adapter on {', '.join(names)}: spatial axes and batch dynamic"
    save_ir_model(model, path, force=True)


def check_adapter_graph(adapter, names: list[str], channels: int, path: Path) -> ParityReport:
    """Parity of the adapter graph (ONNX Runtime CPU) against the torch module, at the fp32 tolerance."""
    from edgeseg.runtime.availability import require

    require("ort-cpu", "ONNX Runtime (the adapter graph's parity check)")  # [cpu] or [gpu]: the hint says which
    import onnxruntime as ort
    import torch

    # The backend contract takes one input; the adapter graph takes the cut's outputs by name. Another
    # size (48^3) and batch (1) than the export's example: the dynamic axes must hold.
    inputs = _example_inputs(names, channels, size=48, seed=1)
    with torch.inference_mode():
        ref = adapter(*[torch.from_numpy(x) for x in inputs]).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT], dict(zip(names, inputs)))[0]
    return compare({"random": (ref,)}, {"random": (got,)}, lambda outs: outs[0] > 0, artifact=path.name,
                   backend="ort-cpu", precision="fp32")


def save_adapter(adapter, out: str | Path, manifest: AdapterManifest, *, force: bool = False) -> AdapterManifest:
    """Write weights, graph (parity-checked) and `manifest` (its graph's parity added) into `out`; returns the
    manifest as written."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, channels = list(manifest.io.inputs), manifest.feature_size
    try:
        with atomic_path(out / WEIGHTS, force=True) as tmp:
            save_file({k: v.detach().contiguous() for k, v in adapter.state_dict().items()}, str(tmp))
        export_adapter_onnx(adapter, names, channels, out / GRAPH)
        report = check_adapter_graph(adapter, names, channels, out / GRAPH)
        report.raise_if_failed(fix="the adapter graph differs from the torch adapter; report the numbers")
        manifest = dataclasses.replace(manifest, extra={**manifest.extra, "graph_parity": report.to_dict()})
        return manifest.write(out, [WEIGHTS, GRAPH])
    except BaseException:
        for name in (WEIGHTS, GRAPH, "manifest.json"):  # an adapter folder is complete or holds none of it
            with contextlib.suppress(OSError, InputError):
                unlink_own(out / name)
        raise

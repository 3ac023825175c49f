"""An adapter folder: `adapter.safetensors` (trainable weights), `adapter.onnx` (for fusion and the
runtime) and `manifest.json`. The ONNX graph takes the trunk's outputs by name and returns the organ
logit; unlike the trunk, its spatial axes are dynamic (convolutions and instance norms only).
Parity of the graph against the torch module is checked before anything is called an adapter.
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


def _example_inputs(names: list[str], channels: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Random features in the trunk's layout: the first output at full resolution, `dec0` at half."""
    rng = np.random.default_rng(seed)
    shapes = {"dec0": size // 2}
    return [rng.standard_normal((1, channels, *(shapes.get(n, size),) * 3)).astype(np.float32) for n in names]


def export_adapter_onnx(adapter, names: list[str], channels: int, path: Path) -> None:
    import torch

    example = tuple(torch.from_numpy(x) for x in _example_inputs(names, channels))
    axes = {n: {0: "N", 2: f"{n}_d", 3: f"{n}_h", 4: f"{n}_w"} for n in names}
    axes["logits"] = {0: "N", 2: "d", 3: "h", 4: "w"}
    with atomic_path(path, force=True) as tmp:
        torch.onnx.export(adapter, example, str(tmp), input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=18, dynamo=False)


def check_adapter_graph(adapter, names: list[str], channels: int, path: Path) -> ParityReport:
    import onnxruntime as ort
    import torch

    # The backend contract takes one input; the adapter graph takes the cut's outputs by name.
    inputs = _example_inputs(names, channels, size=48, seed=1)
    with torch.inference_mode():
        ref = adapter(*[torch.from_numpy(x) for x in inputs]).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], dict(zip(names, inputs)))[0]
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

"""Export the frozen SwinUNETR trunk to ONNX (fp32), and check that a graph is the trunk it should be.

The graph: one input ``image`` of shape ``(N, in_channels, D, H, W)`` float32, where only the batch
``N`` is dynamic; outputs ``features`` (cut ``decoder1``) or ``enc0`` and ``dec0`` (cut
``pre-decoder1``), float32, batch ``N`` as well.

Why the spatial shape is fixed (and there is no option to make it dynamic): MONAI's SwinUNETR builds
its shifted-window attention masks, its window padding and its window counts from the input's spatial
shape in Python. Tracing bakes them in for the traced shape. A graph exported with dynamic spatial
axes still has those constants inside: it loads, and then fails (or, worse, computes garbage) at any
other spatial shape. So the spatial shape is the model's preprocessing window (96^3 for the public
checkpoints) and a graph for another window is another export.

Exporter: ``torch.onnx.export(..., dynamo=True)`` followed by ``onnxscript.optimizer.optimize`` with
large constant-folding limits, which folds the ScatterND chains that rebuild the attention masks on
every run into constants. The TorchScript exporter (``dynamo=False``) was measured against it and
not kept: docs/export.md gives the numbers. The adapters (`export/adapter.py`) go through the same
exporter (`export_dynamo`), optimizer and saving.

`check_trunk_io` is the one check of a trunk graph's inputs and outputs (name, dtype, fixed window,
dynamic batch, the cut's outputs): export runs it on every graph it writes. Reading a graph file back
is `edgeseg.runtime.graph.inspect_graph`, shared with the runtime.

Weights live in the ``.onnx`` file below `EXTERNAL_DATA_THRESHOLD` bytes (protobuf cannot hold more
than 2 GB) and in ``<name>.onnx.data`` beside it above; the graph names the data file by a relative
location, so the pair can be moved together and loaded from any working directory. Both files are
written under temporary names in the target folder, checked with ``onnx.checker`` and renamed into
place (data file first, graph last), so an interrupted export never leaves a graph that looks
complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgeseg.model.spec import CUTS
from edgeseg.runtime.atomic import refuse_link, unlink_own
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.graph import DYNAMIC, EXPORT_SPEC_KEY, value_info

__all__ = [
    "DEFAULT_OPSET", "EXPORTERS", "EXPORTER_REASON", "EXTERNAL_DATA_THRESHOLD", "INPUT_NAME", "ExportResult",
    "ExportSpec", "check_trunk_io", "export_dynamo", "export_trunk_onnx", "optimize_graph", "output_names",
    "save_ir_model",
]

INPUT_NAME = "image"
OUTPUT_NAMES = {"decoder1": ("features",), "pre-decoder1": ("enc0", "dec0")}
EXPORTERS = ("dynamo",)  # TorchScript (dynamo=False) was measured and not kept: see docs/export.md
MIN_OPSET = 17
DEFAULT_OPSET = 18
# The dynamo exporter emits opset 18; asked for 17 it tries onnx's version converter, which has no
# Pad adapter down to 17, and keeps 18. We ask it for at least 18 and record what the graph has.
DYNAMO_MIN_OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of initializers; protobuf's hard limit is 2 GB
EXTERNAL_TENSOR_MIN_BYTES = 1024  # with external data, tensors smaller than this stay inline
# onnxscript's constant-folding limits (elements): large enough to fold the attention-mask
# ScatterND chains, small enough not to bake the ~40M-value per-window masks in as constants.
FOLD_LIMIT = 10**7
METADATA_KEY = EXPORT_SPEC_KEY
DYNAMIC_BATCH = DYNAMIC

# Recorded in every export result and trunk manifest; the measurements behind it are in docs/export.md.
EXPORTER_REASON = ("dynamo: folds the attention masks into constants and keeps LayerNormalization as one op, a "
                   "4x-16x smaller graph than TorchScript's; measurements in docs/export.md")


def output_names(cut: str) -> tuple[str, ...]:
    """Graph output names of a trunk exported at `cut`."""
    _check_cut(cut)
    return OUTPUT_NAMES[cut]


def _check_cut(cut: str) -> None:
    if cut not in CUTS:
        raise InputError(f"unknown cut point {cut!r}; choices: {', '.join(CUTS)}", fix=f"use one of {', '.join(CUTS)}")


@dataclass(frozen=True)
class ExportSpec:
    """How a trunk is exported.

    `window` is the model's preprocessing window (`ModelSpec.window`): the graph's fixed spatial
    shape. Only the batch axis is dynamic (1..`max_batch`, the range a TensorRT profile is built
    for); there is deliberately no option for dynamic spatial axes: SwinUNETR's shifted-window
    attention masks and window padding are baked for one spatial shape at trace time, so a graph
    exported with dynamic spatial axes fails at run time at any other shape.
    `opset` is the opset asked for (>= 17); `ExportResult.opset` is the one the graph has.
    """

    cut: str = "decoder1"
    window: tuple[int, int, int] = (96, 96, 96)
    opset: int = DEFAULT_OPSET
    max_batch: int = 4
    exporter: str = "dynamo"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "window", tuple(int(w) for w in self.window))
        except (TypeError, ValueError):
            raise InputError(f"window {self.window!r} must be three integers", fix="e.g. window 96,96,96") from None
        problems = []
        if self.cut not in CUTS:
            problems.append(f"unknown cut point {self.cut!r} (choices: {', '.join(CUTS)})")
        if len(self.window) != 3 or any(w % 32 or w < 64 for w in self.window):
            problems.append(
                f"window {self.window} must have three sides, each a multiple of 32 and >= 64 "
                "(the model's preprocessing window)"
            )
        if not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            problems.append(f"opset {self.opset!r} must be an integer >= {MIN_OPSET} (LayerNormalization needs 17)")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            problems.append(f"max_batch {self.max_batch!r} must be an integer >= 1")
        if self.exporter not in EXPORTERS:
            problems.append(f"exporter {self.exporter!r} is not one of {', '.join(EXPORTERS)}")
        if problems:
            raise InputError("invalid export spec: " + "; ".join(problems), fix="correct the export options")

    @classmethod
    def for_model(cls, model_spec, cut: str = "decoder1", **kwargs) -> "ExportSpec":
        """The export spec of `model_spec` (an `edgeseg.model.spec.ModelSpec`): its window, at `cut`."""
        return cls(cut=cut, window=tuple(model_spec.window), **kwargs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES[self.cut]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["window"] = list(self.window)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExportSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        dynamic = sorted(k for k in d if "dynamic" in k or "spatial" in k)
        if dynamic:
            raise InputError(
                f"export spec keys {dynamic}: dynamic spatial axes are not supported",
                fix="remove them: SwinUNETR bakes its attention masks and padding for one spatial shape; "
                "export one graph per window (only the batch axis is dynamic)",
            )
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown export spec keys {sorted(unknown)}", fix=f"use only {sorted(known)}")
        d = dict(d)
        if "window" in d:
            d["window"] = tuple(d["window"])
        return cls(**d)


@dataclass
class ExportResult:
    """What `export_trunk_onnx` wrote and what the graph is."""

    path: Path
    data_path: Path | None  # external weights file, or None when the graph holds its weights
    seconds: float
    opset: int  # the opset the graph has (not necessarily the one asked for)
    n_nodes: int
    op_counts: dict[str, int]
    bytes: int  # graph file plus data file
    exporter: str
    exporter_reason: str
    n_nodes_unoptimized: int | None = None  # the exporter's graph before onnxscript's optimizer
    spec: ExportSpec | None = None
    seconds_by_step: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "data_path": None if self.data_path is None else str(self.data_path),
            "seconds": round(self.seconds, 3),
            "opset": self.opset,
            "n_nodes": self.n_nodes,
            "op_counts": dict(self.op_counts),
            "bytes": self.bytes,
            "exporter": self.exporter,
            "exporter_reason": self.exporter_reason,
            "n_nodes_unoptimized": self.n_nodes_unoptimized,
            "spec": None if self.spec is None else self.spec.to_dict(),
            "seconds_by_step": {k: round(v, 3) for k, v in self.seconds_by_step.items()},
        }


# --- export ----------------------------------------------------------------------------------------


def data_path_for(path: str | Path) -> Path:
    """Where the external weights of graph `path` live: ``<name>.onnx.data`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def _check_target(out_path: Path, force: bool) -> None:
    if out_path.suffix != ".onnx":
        raise InputError("an ONNX graph's file name must end in .onnx", path=out_path, fix="e.g. trunk.onnx")
    if force:
        return
    for p in (out_path, data_path_for(out_path)):
        if p.exists():
            raise InputError("already exists; refusing to overwrite it", path=p,
                             fix="pass --force to overwrite, or choose another output")


def _in_channels(trunk) -> int:
    from torch import nn

    proj = getattr(getattr(getattr(trunk, "swinViT", None), "patch_embed", None), "proj", None)
    if isinstance(proj, nn.modules.conv._ConvNd):
        return proj.in_channels
    for module in trunk.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    raise InputError("cannot tell the trunk's input channels (no convolution found)", fix="export an edgeseg Trunk")


def export_trunk_onnx(trunk, spec: ExportSpec, out_path: str | Path, *, force: bool = False,
                      external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> ExportResult:
    """Export `trunk` (an `edgeseg.model.swinunetr.Trunk`, or any module with its I/O) to `out_path`.

    The weights go to ``<out_path>.data`` when they total more than `external_data_threshold`
    bytes (the default keeps below protobuf's 2 GB limit; tests pass a small value to exercise it).
    Refuses to overwrite an existing graph or data file unless `force`.
    """
    import torch

    out_path = Path(out_path)
    _check_target(out_path, force)
    trunk_cut = getattr(trunk, "cut", None)
    if trunk_cut is not None and trunk_cut != spec.cut:
        raise InputError(f"the trunk was split at {trunk_cut!r} but the export spec says cut {spec.cut!r}",
                         fix="split the model at the cut you export (or change the export spec)")
    in_channels = _in_channels(trunk)
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    # Traced with batch 2: torch.export specialises a dimension whose example size is 0 or 1.
    example = torch.zeros(2, in_channels, *spec.window)
    batch = torch.export.Dim(DYNAMIC_BATCH, min=1, max=max(2, spec.max_batch))
    model, n_raw = export_dynamo(trunk, (example,), [INPUT_NAME], spec.output_names, ({0: batch},), spec.opset)
    steps["export"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    optimize_graph(model)
    steps["optimize"] = time.perf_counter() - t1
    try:  # the exporter's own output: a miss here is a bug in this module or the exporter, not the user's input
        check_trunk_io(ir_io(model), spec.window, spec.cut, in_channels=in_channels)
    except InputError as e:
        raise RuntimeError(f"the exported graph is not the trunk promised: {e.problem}") from None
    model.metadata_props[METADATA_KEY] = json.dumps(spec.to_dict(), sort_keys=True)
    model.doc_string = f"edgeseg SwinUNETR trunk, cut {spec.cut}, window {list(spec.window)}, batch dynamic"

    t2 = time.perf_counter()
    data_path = save_ir_model(model, out_path, force=force, external_data_threshold=external_data_threshold)
    steps["save_and_check"] = time.perf_counter() - t2
    op_counts = Counter(node.op_type for node in model.graph)
    size = out_path.stat().st_size + (data_path.stat().st_size if data_path else 0)
    return ExportResult(
        path=out_path, data_path=data_path, seconds=time.perf_counter() - t0, opset=_ir_opset(model),
        n_nodes=sum(op_counts.values()), op_counts=dict(op_counts.most_common()), bytes=size,
        exporter=spec.exporter, exporter_reason=EXPORTER_REASON,
        n_nodes_unoptimized=n_raw, spec=spec, seconds_by_step=steps,
    )


def export_dynamo(module, example: tuple, input_names, output_names, dynamic_shapes: tuple, opset: int):
    """`module` in eval mode through ``torch.onnx.export(dynamo=True)``, unoptimised: (onnx_ir.Model, its node count).

    The one exporter of edgeseg's graphs (trunk and adapters). `dynamic_shapes` holds one
    ``{axis: torch.export.Dim}`` per input; `opset` is raised to `DYNAMO_MIN_OPSET` (what the
    exporter emits). Give dynamic axes example sizes above 1 (torch.export specialises 0 and 1).
    """
    import logging

    import torch

    # torch.onnx logs a warning per torchvision op it cannot register; edgeseg needs none of them.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    was_training = module.training
    module.eval()
    with warnings.catch_warnings():  # torch's own pytree deprecation, raised inside torch.export
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        # One batch Dim shared by several inputs (an adapter's enc0 and dec0) is, rightly, one axis name.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis.*")
        try:
            with torch.no_grad():
                program = torch.onnx.export(
                    module, tuple(example), None, dynamo=True, input_names=list(input_names),
                    output_names=list(output_names), dynamic_shapes=tuple(dynamic_shapes),
                    opset_version=max(opset, DYNAMO_MIN_OPSET), optimize=False, verify=False, report=False,
                    verbose=False,
                )
        finally:
            registration.setLevel(level)
            module.train(was_training)
    model = program.model
    return model, len(list(model.graph))


def optimize_graph(model) -> None:
    """onnxscript's optimizer with large folding limits, on an `onnx_ir.Model`, in place.

    Constant folding alone runs first: it collapses the ~5000-node mask-building chains before the
    pattern rewriter walks the graph, which halves the optimizer's time for the same result.
    """
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from onnxscript import optimizer

    optimizer.fold_constants(model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    RemoveUnusedNodesPass()(model)
    optimizer.optimize(model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)


def ir_io(model) -> dict:
    """The inputs and outputs of an `onnx_ir.Model`, as `inspect_graph` describes a graph file's."""
    import onnx_ir as ir

    return {"inputs": [value_info(ir.serde.serialize_value(v)) for v in model.graph.inputs],
            "outputs": [value_info(ir.serde.serialize_value(v)) for v in model.graph.outputs]}


def check_trunk_io(graph: dict, window: tuple[int, int, int], cut: str, *, in_channels: int | None = None,
                   path: str | Path | None = None) -> None:
    """Check that `graph` (`inspect_graph(path)`, or `ir_io(model)`) is an edgeseg trunk for `window` at `cut`.

    One input `INPUT_NAME`, float32, (N, C, D, H, W) with a dynamic batch and the fixed `window`
    (and `in_channels` channels when given); the cut's outputs by name, at the window's size (dec0
    at half of it). A graph exported for another window (or another cut, or with dynamic spatial
    axes) is refused with an `InputError` that names both shapes.
    """
    _check_cut(cut)
    window = tuple(int(w) for w in window)
    fix_window = (f"re-export the trunk for window {list(window)} (edgeseg export), or use the window the graph "
                  "was exported for")
    inputs = graph["inputs"]
    if [i["name"] for i in inputs] != [INPUT_NAME]:
        raise InputError(f"graph inputs {[i['name'] for i in inputs]}; an edgeseg trunk has one input {INPUT_NAME!r}",
                         path=path, fix="export the trunk with edgeseg export")
    shape = inputs[0]["shape"]
    if len(shape) != 5:
        raise InputError(f"graph input {INPUT_NAME!r} has shape {shape}; expected (N, C, D, H, W)", path=path,
                         fix="export the trunk with edgeseg export")
    spatial = shape[2:]
    if any(not isinstance(s, int) for s in spatial):
        raise InputError(
            f"graph input {INPUT_NAME!r} has dynamic spatial axes {spatial}: SwinUNETR bakes its attention masks "
            f"and padding for one spatial shape, so this graph is wrong at any shape but the traced one",
            path=path, fix=fix_window)
    if tuple(spatial) != window:
        raise InputError(
            f"graph input {INPUT_NAME!r} has spatial shape {tuple(spatial)} but the expected window is {window}",
            path=path, fix=fix_window)
    if isinstance(shape[0], int):
        raise InputError(f"graph input {INPUT_NAME!r} has a fixed batch of {shape[0]}; edgeseg trunks have a dynamic "
                         "batch", path=path, fix="export the trunk with edgeseg export")
    if in_channels is not None and shape[1] != in_channels:
        raise InputError(f"graph input has {shape[1]} channels; the model has {in_channels}", path=path,
                         fix="export the trunk of this model")
    if inputs[0]["dtype"] != "float32":
        raise InputError(f"graph input dtype is {inputs[0]['dtype']}; edgeseg graphs take float32", path=path,
                         fix="export with edgeseg export (fp16 graphs keep float32 I/O)")
    outs = [o["name"] for o in graph["outputs"]]
    if outs != list(OUTPUT_NAMES[cut]):
        have = next((c for c, n in OUTPUT_NAMES.items() if list(n) == outs), None)
        raise InputError(
            f"graph outputs {outs} are those of cut {have!r}, not {cut!r} (outputs {list(OUTPUT_NAMES[cut])})"
            if have else f"graph outputs {outs}; cut {cut!r} has outputs {list(OUTPUT_NAMES[cut])}",
            path=path, fix=f"export the trunk at cut {cut!r}")
    factors = (1,) if cut == "decoder1" else (1, 2)
    for out, f in zip(graph["outputs"], factors):
        want = tuple(w // f for w in window)
        got = tuple(out["shape"][2:])
        if got != want:
            raise InputError(f"graph output {out['name']!r} has spatial shape {got}; expected {want} for window {window}",
                             path=path, fix=fix_window)


def _ir_opset(model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


# --- saving ----------------------------------------------------------------------------------------


def _internalize(model) -> None:
    """Read every external initializer into memory, so the model can be saved anywhere."""
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            value.const_value = ir.tensor(tensor.numpy(), name=value.name)


def save_ir_model(model, out_path: str | Path, *, force: bool = False,
                  external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Path | None:
    """Save an `onnx_ir.Model` to `out_path` atomically, checked; return the data file's path, or None.

    Self-contained below `external_data_threshold` bytes of initializers; above it, weights go to
    ``<name>.onnx.data`` (relative location). A stale data file beside a self-contained graph is
    removed, so the folder never holds a data file the graph does not use.
    """
    import onnx_ir as ir

    out_path = Path(out_path)
    _check_target(out_path, force)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data_final = data_path_for(out_path)
    for p in (out_path, data_final):
        refuse_link(p, doing="replaces a file")
    total = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    external = total > external_data_threshold
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
    try:
        tmp_graph = tmp_dir / out_path.name
        tmp_data = tmp_dir / data_final.name
        if external:
            ir.save(model, tmp_graph, external_data=data_final.name, size_threshold_bytes=EXTERNAL_TENSOR_MIN_BYTES)
        else:
            _internalize(model)
            ir.save(model, tmp_graph)
        external = external and tmp_data.exists()  # every tensor may have been small enough to stay inline
        onnx.checker.check_model(str(tmp_graph))  # path-based: works with external data and > 2 GB
        for p in (tmp_data, tmp_graph):
            if p.exists():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        if external:
            os.replace(tmp_data, data_final)
        os.replace(tmp_graph, out_path)  # the graph last: it is what makes the pair look complete
        if not external and data_final.exists():
            unlink_own(data_final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return data_final if external else None

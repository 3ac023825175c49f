"""`edgeseg fuse`: one trunk folder + adapter folders -> one engine folder (`fused.<precision>.onnx`).

The fused graph is the trunk graph as exported (never re-exported) with every adapter graph appended:
the trunk's outputs feed each adapter's inputs by name, each adapter's logit goes through a `Sigmoid`,
and the graph's outputs are ``prob_<organ>`` (N, 1, D, H, W) float32, one per organ, in the order the
adapters were given. The trunk runs once per window, whatever the number of organs. Adapter graphs
keep their fp32 weights in the fp16 engine too (the mixed fp16 trunk keeps float32 I/O).

Parity is part of fusion, as of export: each fused graph is run in ONNX Runtime CPU against PyTorch
fp32 (trunk rebuilt from the checkpoint the trunk manifest names, checked by sha256, + the torch
adapters loaded from their safetensors + sigmoid) on the trunk's parity inputs; masks are prob > 0.5.
A miss keeps the graph under a `.rejected` name with its report and fails. `manifest.json` (kind
"engine") is written last.

int8: the fused fp32 graph is quantized as a whole (trunk and adapters) by the writer `edgeseg export`
uses (export/int8.py: QDQ graph + NNCF's OpenVINO IR, each parity-checked against the same reference).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from edgeseg.export.parity import ParityReport
from edgeseg.runtime.atomic import unlink_own
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.lock import locks_output
from edgeseg.runtime.artifacts.adapter import AdapterManifest
from edgeseg.runtime.artifacts.engine import AdapterRef, EngineManifest, TrunkRef
from edgeseg.runtime.artifacts.graphs import GraphIO
from edgeseg.runtime.artifacts.trunk import TrunkManifest
from edgeseg.runtime.support import DEFAULT_GRAPH_PRECISIONS, check_graph_precisions

__all__ = ["fuse", "fuse_graphs", "torch_engine"]

INPUT_NAME = "image"
Log = Callable[[str], None]


# --- checks ---------------------------------------------------------------------------------------


def _read_inputs(trunk_dir: Path, adapter_dirs: Sequence[Path]) -> tuple[TrunkManifest, list[dict]]:
    trunk = TrunkManifest.from_folder(trunk_dir)
    trunk_hash = trunk.sha256
    if not adapter_dirs:
        raise InputError("no adapter given: an engine fuses the trunk with at least one adapter",
                         fix="pass one or more adapter folders (edgeseg adapt ... --out DIR)")
    adapters: list[dict] = []
    seen: dict[str, Path] = {}
    for folder in adapter_dirs:
        m = AdapterManifest.from_folder(folder)
        made_by = m.trunk_manifest_sha256
        if made_by != trunk_hash:
            raise InputError(
                f"the adapter was trained on features of trunk manifest {str(made_by)[:12]}, but the trunk "
                f"{trunk_dir} has manifest {trunk_hash[:12]}: its weights do not fit this trunk", path=folder,
                fix="re-adapt on a cache built with this trunk (edgeseg cache ... ; edgeseg adapt ...), "
                    "or fuse with the trunk the adapter was trained on")
        if m.cut != trunk.cut:
            raise InputError(f"the adapter takes the {m.cut!r} cut, the trunk was exported at {trunk.cut!r}",
                             path=folder, fix="fuse adapters with a trunk exported at their cut")
        organ = m.organ
        if not organ:
            raise InputError("the adapter manifest names no organ", path=folder, fix="re-adapt it with this edgeseg")
        if organ in seen:
            raise InputError(f"two adapters for organ {organ!r}: {seen[organ]} and {folder}", path=folder,
                             fix="pass one adapter per organ")
        seen[organ] = Path(folder)
        inputs = list(m.io.inputs)
        if inputs != list(trunk.io.outputs):
            raise InputError(f"the adapter takes inputs {inputs}, the trunk outputs {list(trunk.io.outputs)}",
                             path=folder, fix="re-adapt on a cache built with this trunk")
        adapters.append({"folder": Path(folder), "manifest": m, "organ": organ})
    return trunk, adapters


# --- graph surgery --------------------------------------------------------------------------------


def _has_subgraphs(graph) -> bool:
    import onnx

    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
               for a in n.attribute)


def _opset(model) -> int:
    """The model's default-domain (ai.onnx) opset."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def fuse_graphs(trunk_model, adapters: Sequence[tuple[str, object]]):
    """The fused ModelProto: `trunk_model` (onnx.ModelProto) with each (organ, adapter ModelProto) appended.

    Adapter names (nodes, edges, initializers) get the prefix ``<organ>/``, except their inputs, which
    are the trunk's outputs by name; each adapter's logit goes through a Sigmoid to ``prob_<organ>``.
    The trunk's outputs stop being graph outputs. Both models are modified in place where convenient.
    """
    import onnx
    from onnx import helper

    fused = onnx.ModelProto()
    fused.CopyFrom(trunk_model)
    g = fused.graph
    trunk_outputs = {o.name: o for o in g.output}
    batch = trunk_model.graph.output[0].type.tensor_type.shape.dim[0]
    trunk_opset = _opset(fused)
    taken = {n.name for n in g.node} | {o for n in g.node for o in n.output} | {i.name for i in g.initializer} \
        | {i.name for i in g.input}
    new_outputs = []
    for organ, adapter in adapters:
        a = onnx.ModelProto()
        a.CopyFrom(adapter)
        if _has_subgraphs(a.graph) or len(a.functions):
            raise InputError(f"the {organ} adapter graph has subgraphs or functions, which fusion does not handle",
                             fix="re-adapt with this edgeseg (adapter graphs are plain convolutions)")
        if _opset(a) != trunk_opset:
            import onnx.version_converter

            a = onnx.version_converter.convert_version(a, trunk_opset)
        a_inputs = [i.name for i in a.graph.input if i.name not in {t.name for t in a.graph.initializer}]
        missing = [n for n in a_inputs if n not in trunk_outputs]
        if missing:
            raise InputError(f"the {organ} adapter graph takes {missing}, which the trunk does not output "
                             f"(it outputs {list(trunk_outputs)})", fix="re-adapt on a cache built with this trunk")
        if len(a.graph.output) != 1:
            raise InputError(f"the {organ} adapter graph has {len(a.graph.output)} outputs, not one logit",
                             fix="re-adapt with this edgeseg")
        prefix = f"{organ}/"
        keep = set(a_inputs)

        def ren(name: str, keep: set = keep, prefix: str = prefix) -> str:
            return name if (not name or name in keep) else prefix + name

        for init in a.graph.initializer:
            init.name = ren(init.name)
            g.initializer.append(init)
        for sparse in a.graph.sparse_initializer:
            sparse.values.name = ren(sparse.values.name)
            g.sparse_initializer.append(sparse)
        for node in a.graph.node:
            node.name = prefix + (node.name or node.op_type)
            node.input[:] = [ren(x) for x in node.input]
            node.output[:] = [ren(x) for x in node.output]
            g.node.append(node)
        for vi in a.graph.value_info:
            if vi.name not in keep:
                vi.name = ren(vi.name)
                g.value_info.append(vi)
        logits = ren(a.graph.output[0].name)
        prob = EngineManifest.output_name(organ)
        clash = {prob, logits} & taken
        if clash:
            raise InputError(f"fused names {sorted(clash)} clash with names in the trunk graph",
                             fix="report this: organ names should not collide with trunk graph names")
        g.node.append(helper.make_node("Sigmoid", [logits], [prob], name=f"{prefix}sigmoid"))
        out = helper.make_tensor_value_info(prob, onnx.TensorProto.FLOAT, None)
        dims = out.type.tensor_type.shape.dim
        first = dims.add()
        first.CopyFrom(batch)
        shape = [1] + [d for d in _spatial(trunk_model)]
        for v in shape:
            dims.add().dim_value = int(v)
        new_outputs.append(out)
        taken |= {prob, logits}
        for o in a.opset_import:
            if o.domain not in ("", "ai.onnx") and all(x.domain != o.domain for x in fused.opset_import):
                fused.opset_import.append(o)
        fused.ir_version = max(fused.ir_version, a.ir_version)
    del g.output[:]
    g.output.extend(new_outputs)
    fused.producer_name = "edgeseg.fuse"
    return fused


def _spatial(trunk_model) -> list[int]:
    dims = trunk_model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims[2:]]


# --- parity reference -----------------------------------------------------------------------------


def torch_modules(trunk_dir: Path, trunk: TrunkManifest, adapters: list[dict]):
    """The engine's PyTorch fp32 form, in eval mode: (trunk split at the cut from the checkpoint the trunk manifest
    names, checked by sha256; [each adapter built and loaded from its safetensors]). Adapters as `_read_inputs` lists them."""
    from safetensors.torch import load_file

    from edgeseg.adapters import build_adapter
    from edgeseg.model.checkpoint import load_exported_checkpoint
    from edgeseg.model.swinunetr import split

    model = load_exported_checkpoint(trunk, trunk_dir, needed_for="the fused engine's torch form needs the trunk's checkpoint")
    trunk_module, _ = split(model, trunk.cut)
    modules = []
    for a in adapters:
        m = a["manifest"]
        module = build_adapter(m.adapter, feature_size=m.feature_size,
                               pretrained=model if m.adapter == "ft-last" else None)
        module.load_state_dict(load_file(str(a["folder"] / AdapterManifest.WEIGHTS)))
        modules.append(module.eval())
    return trunk_module.eval(), modules


def torch_engine(folder: str | Path):
    """An engine folder's graph as one torch module (trunk + adapters + sigmoid; outputs ``prob_<organ>`` in the
    manifest's order), rebuilt from the trunk and adapter folders its manifest names (each checked against the
    hash recorded at fusion). For measuring an engine on a torch backend (benchmarks/gpu_check.py); `edgeseg predict`
    runs the fused graph itself."""
    import torch

    folder = Path(folder)
    manifest = EngineManifest.from_folder(folder, verify_files=False)
    if manifest.trunk is None or not manifest.adapters:
        raise InputError("the engine manifest names no trunk or adapters to rebuild its torch form from", path=folder,
                         fix=f"fuse it again ({EngineManifest.REBUILD})")
    trunk_dir = Path(manifest.trunk.folder)
    trunk, adapters = _read_inputs(trunk_dir, [Path(a.folder) for a in manifest.adapters])
    recorded = [manifest.trunk.manifest_sha256, *(a.manifest_sha256 for a in manifest.adapters)]
    if [trunk.sha256, *(a["manifest"].sha256 for a in adapters)] != recorded:
        raise InputError("its trunk or adapter folders changed since the engine was fused from them", path=folder,
                         fix=f"fuse it again ({EngineManifest.REBUILD})")
    trunk_module, modules = torch_modules(trunk_dir, trunk, adapters)

    class Fused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.adapters = trunk_module, torch.nn.ModuleList(modules)

        def forward(self, x):
            feats = self.trunk(x)
            feats = feats if isinstance(feats, (tuple, list)) else (feats,)
            return tuple(torch.sigmoid(a(*feats)) for a in self.adapters)

    return Fused().eval()


def _torch_reference(trunk_dir: Path, trunk: TrunkManifest, adapters: list[dict], inputs: dict) -> dict:
    """PyTorch fp32: trunk split at the cut from the recorded checkpoint + torch adapters + sigmoid."""
    import torch
    from edgeseg.export.trunk import torch_outputs

    trunk_module, modules = torch_modules(trunk_dir, trunk, adapters)
    features = torch_outputs(trunk_module, inputs)
    reference = {}
    with torch.inference_mode():
        for name, outs in features.items():
            feats = [torch.from_numpy(o) for o in outs]
            reference[name] = tuple(torch.sigmoid(mod(*feats)).numpy().copy() for mod in modules)
    return reference


def _masks(outputs: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(o) > 0.5 for o in outputs])


def _check(path: Path, precision: str, inputs, reference, *, threads: int | None, files: Sequence[Path]) -> ParityReport:
    from edgeseg.export.trunk import check_graph

    return check_graph(path, precision, inputs, reference, _masks, threads=threads, files=files,
                       fix="the fused graph is kept under a .rejected name with its report; check that the trunk and "
                           "adapters are the ones recorded, or report the numbers")


# --- fuse ------------------------------------------------------------------------------------------


@locks_output("edgeseg fuse")  # one run per --out: a second one is refused
def fuse(trunk_dir: str | Path, adapter_dirs: Sequence[str | Path], out: str | Path, *,
         precisions: Sequence[str] = DEFAULT_GRAPH_PRECISIONS, tensorrt: bool = False, force: bool = False,
         threads: int | None = None, calibration: Sequence[str | Path] | None = None,
         calibration_windows: int | None = None, log: Log = print) -> dict:
    """Fuse the trunk in `trunk_dir` with the adapters in `adapter_dirs` into folder `out`; returns its manifest.

    One fused graph per precision in `precisions` that the trunk folder holds (a precision it lacks is
    skipped with a log line; none at all is refused; int8 is quantized from the fused fp32 graph, so it
    needs the trunk's fp32 graph, and takes `calibration` / `calibration_windows` as `export_trunk` does).
    `tensorrt=True` also builds a TensorRT engine from the fused fp16 graph (TensorRT and a GPU needed;
    refused before any work otherwise).
    """
    import onnx
    import onnx_ir as ir
    from edgeseg.export.onnx import save_ir_model
    from edgeseg.export.trunk import parity_inputs, prepare_int8

    from edgeseg.model.spec import ModelSpec

    trunk_dir, out = Path(trunk_dir), Path(out)
    adapter_dirs = [Path(a) for a in adapter_dirs]
    precisions = check_graph_precisions(precisions)
    int8 = prepare_int8(precisions, calibration, calibration_windows)
    if tensorrt:
        from edgeseg.runtime.availability import require

        if "fp16" not in precisions:
            raise InputError("--tensorrt builds from the fused fp16 graph", fix="add fp16 to --precision")
        require("tensorrt", "TensorRT")  # BackendUnavailable with the install hint, before any work
    EngineManifest.claim(out, force=force, dry_run=True)  # only an edgeseg engine is replaced
    trunk, adapters = _read_inputs(trunk_dir, adapter_dirs)
    EngineManifest.claim(out, force=force)
    present = [p for p in precisions if p in trunk.graphs or (p == "int8" and "fp32" in trunk.graphs)]
    present.sort(key=lambda p: p == "int8")  # last: it is quantized from the fused fp32 graph
    for p in precisions:
        if p not in present:
            log(f"the trunk has no {'fp32 graph to quantize' if p == 'int8' else p + ' graph'}: no fused {p} graph")
    if not present:
        raise InputError(f"the trunk holds none of the precisions asked for ({', '.join(precisions)})", path=trunk_dir,
                         fix="ask for a precision the trunk has, or re-export it with --precision fp32,fp16")
    if tensorrt and "fp16" not in present:
        raise InputError("--tensorrt builds from the fused fp16 graph, and the trunk has no fp16 graph", path=trunk_dir,
                         fix="re-export the trunk with --precision fp32,fp16")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    organs = [a["organ"] for a in adapters]

    t0 = time.perf_counter()
    model_spec = ModelSpec.from_dict(dict(trunk.model_spec))
    cal = int8(model_spec, timings, log) if int8 and "int8" in present else None
    inputs = parity_inputs(model_spec)
    reference = _torch_reference(trunk_dir, trunk, adapters, inputs)
    timings["parity_reference"] = time.perf_counter() - t0

    adapter_models = [(a["organ"], onnx.load(str(a["folder"] / AdapterManifest.GRAPH))) for a in adapters]
    graphs: dict[str, dict] = {}
    files: list[Path] = []
    scratch: list[Path] = []
    try:
        for precision in present:
            if precision == "int8":
                from edgeseg.export.int8 import write_int8

                fp32_path = out / EngineManifest.graph_name("fp32")
                if "fp32" not in graphs:  # the fused fp32 graph is only the quantizer's source: made, then removed
                    src = trunk_dir / trunk.graphs["fp32"]["file"]
                    data = save_ir_model(ir.serde.deserialize_model(fuse_graphs(onnx.load(str(src)), adapter_models)),
                                         fp32_path, force=force)
                    scratch += [fp32_path] + ([data] if data else [])
                trained = all(a["manifest"].extra.get("steps") for a in adapters)  # `edgeseg adapt` records its steps
                graphs["int8"], these = write_int8(fp32_path, out, "fused", cal, inputs, reference, _masks, threads=threads,
                                                   trained=trained, force=force, log=log, timings=timings)
                graphs["int8"]["trunk_graph"] = trunk.graphs["fp32"]["file"]
                files += these
                continue
            t0 = time.perf_counter()
            src = trunk_dir / trunk.graphs[precision]["file"]
            fused = fuse_graphs(onnx.load(str(src)), adapter_models)
            path = out / EngineManifest.graph_name(precision)
            log(f"fusing {src.name} with {len(adapters)} adapter(s) ({', '.join(organs)}) -> {path.name} ...")
            data = save_ir_model(ir.serde.deserialize_model(fused), path, force=force)
            del fused
            these = [path] + ([data] if data else [])
            timings[f"fuse_{precision}"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            log(f"parity of {path.name} (ONNX Runtime CPU vs PyTorch fp32 trunk + adapters) ...")
            report = _check(path, precision, inputs, reference, threads=threads, files=these)
            timings[f"parity_{precision}"] = time.perf_counter() - t0
            for line in report.lines():
                log(line)
            graphs[precision] = {"file": path.name, "data_file": data.name if data else None,
                                 "trunk_graph": src.name, "parity": report.to_dict()}
            files += these
    finally:  # the fused fp32 graph made only for the quantizer goes, even when a graph is rejected
        for f in scratch:
            unlink_own(f)  # missing_ok: a graph that was never written

    engines = {}
    if tensorrt:
        engines = _build_tensorrt(out, trunk_dir, trunk, inputs, reference, log, force, timings)
        files += [out / e["file"] for e in engines.values()]

    manifest = EngineManifest(
        organs=tuple(organs),
        trunk=TrunkRef(str(trunk_dir.resolve()), trunk.sha256),
        adapters=tuple(AdapterRef(a["organ"], a["manifest"].adapter, str(a["folder"].resolve()), a["manifest"].sha256)
                       for a in adapters),
        cut=trunk.cut,
        model_spec=trunk.model_spec,
        export_spec=trunk.export_spec,
        preprocess=trunk.preprocess,
        preprocess_sha256=trunk.preprocess_sha256,
        window=tuple(model_spec.window),
        io=GraphIO(INPUT_NAME, tuple(EngineManifest.output_name(o) for o in organs)),
        graphs=graphs,
        engines=engines,
        extra={"parity_inputs": sorted(inputs), "timings_seconds": {k: round(v, 3) for k, v in timings.items()}},
    )
    return dict(manifest.write(out, [f.relative_to(out) for f in files]).record)


def _build_tensorrt(out: Path, trunk_dir: Path, trunk: TrunkManifest, inputs, reference, log: Log, force: bool,
                    timings: dict) -> dict:
    from edgeseg.export.trunk import build_checked_engine

    return build_checked_engine(out, out / EngineManifest.graph_name("fp16"), trunk.max_batch, inputs, reference, _masks, log, force,
                                timings, stem="fused", timing_cache_dir=trunk_dir)

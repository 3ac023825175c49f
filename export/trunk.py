"""`edgeseg export`: checkpoint -> trunk graphs (ONNX fp32, mixed fp16, int8 QDQ + OpenVINO IR, optional
TensorRT plan) + manifest.

Parity is part of export: each graph is run against PyTorch fp32 on a random window, a window of
the real CT shipped with edgeseg and a phantom window; a miss keeps the graph under a `.rejected`
name with its report and fails the export. Nothing is called a trunk until `manifest.json` is
written, last, listing every file with its sha256.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.export.parity import ParityReport, compare
from edgeseg.runtime.atomic import unlink_own, write_text_atomic
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.lock import locks_output
from edgeseg.runtime.artifacts.graphs import GraphIO
from edgeseg.runtime.artifacts.trunk import CheckpointRef, TrunkManifest
from edgeseg.runtime.manifest import sha256_file
from edgeseg.runtime.support import DEFAULT_GRAPH_PRECISIONS, check_graph_precisions

Log = Callable[[str], None]


# --- parity inputs and references ---------------------------------------------------------------


def parity_inputs(model_spec, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Named (1, C, D, H, W) float32 windows: random, the shipped real CT, a phantom around its liver."""
    from edgeseg.assets import EXAMPLE_CT
    from edgeseg.data.phantom import SOURCE, generate_case
    from edgeseg.runtime.nifti import Scan
    from edgeseg.runtime.preprocess import crop_window, preprocess, preprocess_scan, to_model_grid

    pre = model_spec.preprocess
    window = pre.window
    c = model_spec.in_channels
    rng = np.random.default_rng(seed)
    inputs = {"random": rng.random((1, c, *window), dtype=np.float32)}

    real = preprocess(EXAMPLE_CT, pre).image
    inputs["real_ct"] = _as_batch(crop_window(real, tuple(s // 2 for s in real.shape), window), c)

    case = generate_case(seed, SOURCE, spacing=pre.spacing)
    import nibabel as nib

    prepared = preprocess_scan(Scan(Path("phantom"), case.ct.astype(np.float32), case.affine, nib.Nifti1Header()), pre)
    liver = to_model_grid(case.labels["liver"], prepared.transform, order=0)
    centre = tuple(int(v) for v in np.argwhere(liver).mean(0)) if liver.any() else tuple(s // 2 for s in liver.shape)
    inputs["phantom"] = _as_batch(crop_window(prepared.image, centre, window), c)
    return inputs


def _as_batch(window: np.ndarray, channels: int) -> np.ndarray:
    return np.array(np.broadcast_to(window, (1, channels, *window.shape)), dtype=np.float32)  # a writable copy


def torch_outputs(trunk, inputs: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, ...]]:
    """PyTorch fp32 eager outputs of the trunk: the reference every export is held to."""
    import torch

    out = {}
    with torch.inference_mode():
        for name, x in inputs.items():
            y = trunk(torch.from_numpy(x))
            out[name] = tuple(t.numpy().copy() for t in (y if isinstance(y, tuple) else (y,)))
    return out


def mask_function(head) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """Trunk outputs -> the head's masks (logit > 0, i.e. sigmoid > 0.5), computed in torch fp32."""
    import torch

    def masks(outputs: Sequence[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            logits = head(*[torch.from_numpy(np.ascontiguousarray(o, dtype=np.float32)) for o in outputs])
        return (logits > 0).numpy()

    return masks


# --- export -------------------------------------------------------------------------------------


def _reject(out: Path, files: Sequence[Path], report: ParityReport) -> None:
    """Keep a failed artifact for inspection under a `.rejected` name, with its report beside it."""
    for f in files:
        if f.exists():
            f.replace(f.with_name(f.name + ".rejected"))
    write_text_atomic(out / f"{Path(report.artifact).name}.parity.rejected.json",
                      json.dumps(report.to_dict(), indent=2), force=True)


def check_graph(path: Path, precision: str, inputs, reference, masks, *, threads: int | None,
                files: Sequence[Path], fix: str = "the graph is kept under a .rejected name with its report; check "
                                                   "the checkpoint and the exporter versions, or report the numbers",
                backend: str = "ort", tolerance: str | None = None) -> ParityReport:
    """Run graph `path` on the CPU (ONNX Runtime, or OpenVINO for an IR) on the parity inputs; reject it (and
    raise) on a miss."""
    from edgeseg.runtime.backends import open_backend

    runner = open_backend(backend, path, precision=precision, device="cpu", threads=threads)
    with runner:
        got = {name: runner.predict(x) for name, x in inputs.items()}
    report = compare(reference, got, masks, artifact=path.name, backend="ort-cpu" if backend == "ort" else backend,
                     precision=precision, tolerance=tolerance)
    if not report.passed:
        _reject(path.parent, files, report)
        report.raise_if_failed(fix=fix)
    return report


@locks_output("edgeseg export")  # one run per --out: a second one is refused
def export_trunk(
    checkpoint: str | Path,
    out: str | Path,
    *,
    cut: str = "decoder1",
    precisions: Sequence[str] = DEFAULT_GRAPH_PRECISIONS,
    max_batch: int = 4,
    tensorrt: bool = False,
    spec=None,
    allow_partial: bool = False,
    threads: int | None = None,
    force: bool = False,
    calibration: Sequence[str | Path] | None = None,
    calibration_windows: int | None = None,
    trained_head: bool | None = None,
    log: Log = lambda msg: None,
) -> dict:
    """Export the trunk of `checkpoint` into folder `out`; returns the manifest written there.

    int8 in `precisions` also quantizes the fp32 graph (export/int8.py) on `calibration_windows` windows of
    the NIfTI CTs in `calibration` (default: the shipped CT and a phantom of each scanner domain).
    `trained_head` False declares the checkpoint's head untrained (seeded random benchmark weights): int8
    mask flips are then recorded, not judged (parity.py); None: trained when the checkpoint has a head.
    """
    import torch

    from edgeseg.export.fp16 import to_mixed_fp16
    from edgeseg.export.onnx import ExportSpec, export_trunk_onnx
    from edgeseg.model.checkpoint import load_checkpoint
    from edgeseg.model.swinunetr import split

    precisions = check_graph_precisions(precisions)
    if tensorrt and "fp16" not in precisions:
        raise InputError("--tensorrt builds from the mixed fp16 graph", fix="add fp16 to --precision")
    int8 = prepare_int8(precisions, calibration, calibration_windows)
    out = Path(out)
    TrunkManifest.claim(out, force=force, dry_run=True)  # only an edgeseg trunk is replaced
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    model, model_spec, load_report = load_checkpoint(checkpoint, spec, allow_partial=allow_partial)
    cal = int8(model_spec, timings, log) if int8 else None  # a calibration file that is not a CT stops here
    TrunkManifest.claim(out, force=force)  # the checkpoint is good: the old trunk goes
    ckpt_sha = sha256_file(checkpoint)
    timings["load_checkpoint"] = time.perf_counter() - t0
    log(load_report.summary())
    export_spec = ExportSpec.for_model(model_spec, cut=cut, max_batch=max_batch)
    trunk, head = split(model, cut)
    if not load_report.head_loaded:
        # No trained head: flips are measured through a fixed random 1x1x1 head (seeded, reproducible).
        torch.manual_seed(0)
        model.out.conv.conv.reset_parameters()
        log("no head in the checkpoint: mask flips measured through a fixed random head (seed 0)")

    t0 = time.perf_counter()
    inputs = parity_inputs(model_spec)
    reference = torch_outputs(trunk, inputs)
    masks = mask_function(head)
    timings["parity_reference"] = time.perf_counter() - t0

    graphs: dict[str, dict] = {}
    files: list[Path] = []
    fp32_path = out / TrunkManifest.graph_name("fp32")
    log(f"exporting {cut} trunk to ONNX ({export_spec.window}, batch 1..{max_batch}) ...")
    result = export_trunk_onnx(trunk, export_spec, fp32_path, force=force)
    timings["export_fp32"] = result.seconds
    fp32_files = [result.path] + ([result.data_path] if result.data_path else [])
    for precision in precisions:
        if precision == "int8":
            from edgeseg.export.int8 import write_int8

            trained = load_report.head_loaded if trained_head is None else trained_head
            graphs["int8"], these = write_int8(fp32_path, out, "trunk", cal, inputs, reference, masks, threads=threads,
                                               trained=trained, force=force, log=log, timings=timings)
            files += these
            continue
        if precision == "fp32":
            path, these, meta = result.path, fp32_files, result.to_dict()
        else:
            t0 = time.perf_counter()
            fp16 = to_mixed_fp16(fp32_path, out / TrunkManifest.graph_name("fp16"), force=force)
            timings["convert_fp16"] = time.perf_counter() - t0
            path = Path(fp16.path)
            these = [path] + ([Path(fp16.data_path)] if getattr(fp16, "data_path", None) else [])
            meta = fp16.to_dict()
        log(f"parity of {path.name} (ONNX Runtime CPU vs PyTorch fp32) ...")
        t0 = time.perf_counter()
        report = check_graph(path, precision, inputs, reference, masks, threads=threads, files=these)
        timings[f"parity_{precision}"] = time.perf_counter() - t0
        for line in report.lines():
            log(line)
        graphs[precision] = {"file": path.name, "export": _relative(meta, out), "parity": report.to_dict()}
        files += these
    if "fp32" not in precisions:  # the fp32 graph was only the source of the fp16 / int8 ones
        for f in fp32_files:
            unlink_own(f)

    engines = {}
    if tensorrt:
        engines = build_checked_engine(out, out / TrunkManifest.graph_name("fp16"), max_batch, inputs, reference, masks, log, force,
                                       timings)
        files += [out / e["file"] for e in engines.values()]

    manifest = TrunkManifest(
        checkpoint=CheckpointRef(str(Path(checkpoint).resolve()), ckpt_sha, load_report.to_dict()),
        model_spec=model_spec.to_dict(),
        export_spec=export_spec.to_dict(),
        preprocess=model_spec.preprocess,
        preprocess_sha256=model_spec.preprocess.sha256(),
        cut=cut,
        io=GraphIO("image", tuple(export_spec.output_names)),
        graphs=graphs,
        engines=engines,
        extra={"parity_inputs": sorted(inputs), "timings_seconds": {k: round(v, 3) for k, v in timings.items()}},
    )
    return dict(manifest.write(out, [f.relative_to(out) for f in files]).record)


def prepare_int8(precisions: Sequence[str], calibration, windows: int | None):
    """When int8 is asked for: check NNCF and the calibration files now (before any slow work) and return
    `make(model_spec, timings, log) -> Calibration`; else None (and calibration options are refused)."""
    if "int8" not in precisions:
        if calibration or windows is not None:
            raise InputError("--calibration / --calibration-windows only apply to int8 graphs", fix="add int8 to --precision")
        return None
    from edgeseg.export.int8 import DEFAULT_WINDOWS, calibration_windows, check_calibration_files, require_nncf

    require_nncf()
    check_calibration_files(calibration)

    def make(model_spec, timings: dict, log: Log):
        t0 = time.perf_counter()
        n = DEFAULT_WINDOWS if windows is None else windows
        what = ", ".join(map(str, calibration)) if calibration else "the shipped CT and phantoms of both scanner domains"
        log(f"int8 calibration: {n} windows of {what} ...")
        cal = calibration_windows(model_spec, calibration, count=n)
        timings["calibration_windows"] = time.perf_counter() - t0
        return cal

    return make


def _relative(meta: dict, out: Path) -> dict:
    """File paths in the manifest are relative to the artifact folder, so the folder can move."""
    fixed = dict(meta)
    for key in ("path", "data_path", "src"):
        if fixed.get(key):
            fixed[key] = Path(fixed[key]).name
    return fixed


def build_checked_engine(out: Path, fp16_path: Path, max_batch: int, inputs, reference, masks, log: Log, force: bool,
                         timings: dict, *, stem: str = "trunk", timing_cache_dir: Path | None = None) -> dict:
    """Build the TensorRT engine of `fp16_path` into `out`, check its parity, return its manifest entry.

    The timing cache lives in `timing_cache_dir` (default `out`): fusion reuses the trunk's, so the
    rebuild is quick.
    """
    from edgeseg.export.tensorrt import build_engine, engine_key, plan_name
    from edgeseg.runtime.backends import open_backend

    key, key_text = engine_key()
    plan = out / plan_name(key, stem=stem)
    log(f"building TensorRT engine {plan.name} (strongly typed, from {fp16_path.name}) ...")
    build = build_engine(fp16_path, plan, min_batch=1, opt_batch=max_batch, max_batch=max_batch,
                         timing_cache_path=(timing_cache_dir or out) / f"timing.{key_text}.cache", force=force)
    timings["build_tensorrt"] = build.seconds
    backend = open_backend("tensorrt", plan, manifest_key=key)
    with backend:
        got = {name: backend.predict(x) for name, x in inputs.items()}
    report = compare(reference, got, masks, artifact=plan.name, backend="tensorrt", precision="fp16")
    for line in report.lines():
        log(line)
    if not report.passed:
        _reject(out, [plan], report)
        report.raise_if_failed(fix="the engine is kept under a .rejected name with its report")
    entry = build.to_dict()
    entry["plan_path"] = plan.name
    return {key_text: {"file": plan.name, "key": key, "build": entry, "parity": report.to_dict()}}

"""INT8 post-training quantization of an fp32 graph (trunk or fused engine), two ways, one calibration.

* ``<stem>.int8.onnx``: an ONNX QDQ graph from ONNX Runtime's static quantizer (`quantize_static`,
  QDQ format). Weights int8 per output channel, symmetric; activations int8 per tensor, symmetric
  (zero point 0): what TensorRT's explicit quantization takes (int8 Q/DQ with a zero zero-point), what
  ONNX Runtime CPU runs with its int8 kernels and what OpenVINO reads as well; biases stay float. The compute ops
  (Conv, ConvTranspose, MatMul, Gemm) are quantized; LayerNorm, Softmax, GELU and the residual adds
  stay fp32 between them.
* ``<stem>.int8.xml/.bin``: an OpenVINO IR from NNCF (`nncf.quantize` on the fp32 graph read by
  OpenVINO), for the OpenVINO CPU backend.

Calibration windows come from CT volumes: by default the real CT shipped with edgeseg and one phantom
of each scanner domain (SOURCE and TARGET) generated at the model's spacing, or NIfTI files the user
names; the windows are centred on random body voxels (seeded). The manifest records the sources
(repository-relative path and sha256, or the phantom's domain, seed and generator version), the
window count and each quantizer's settings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeseg.runtime.errors import BackendUnavailable, InputError

__all__ = ["Calibration", "DEFAULT_WINDOWS", "NNCF_SETTINGS", "QDQ_SETTINGS", "calibration_windows",
           "quantize_nncf", "quantize_qdq"]

DEFAULT_WINDOWS = 12
PHANTOM_SEED = 7  # not the parity phantom's seed (0): calibration and parity see different cases
PHANTOM_Z_RANGE = (-260.0, 200.0)  # mm: every organ, bounded so a phantom stays small at fine spacings
BODY_LEVEL = 0.05  # a window centre is a voxel above this on the [0, 1] input scale (inside the body)
NNCF_HINT = "pip install 'edgeseg[int8]' (nncf; it needs openvino too)"

# What ONNX Runtime's static quantizer is asked (recorded in the manifest as it is).
QDQ_SETTINGS: dict[str, Any] = {
    "quant_format": "QDQ",
    "activation_type": "QInt8",
    "weight_type": "QInt8",
    "per_channel": True,
    "calibrate_method": "MinMax",
    "op_types_to_quantize": ["Conv", "ConvTranspose", "MatMul", "Gemm"],
    # QuantizeBias False: biases stay float. TensorRT's parser refuses a DequantizeLinear of int32 (ONNX Runtime's
    # default bias form: "only activation types allowed as input to this layer", onnx/onnx-tensorrt#850); ONNX
    # Runtime's CPU graph fuses the same nodes either way (10 QLinearConv, 25 QLinearMatMul on the shipped model).
    "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
}
# NNCF's settings, chosen on the shipped model of the time (the 3000-step stand-in: feature size 12, its trained head;
# 12 calibration windows; the 6000-step one gives 0.090% / 0.088 worst flips / rel L2 with the kept setting):
# mask flips against PyTorch fp32 over the 3 parity windows and 6 more body windows (worst / mean), rel L2 worst:
#   preset PERFORMANCE, no model type                      0.117% / 0.064%, 0.103  (all compute layers int8)
#   PERFORMANCE, ignored_scope types MVN + Softmax         0.080% / 0.045%, 0.089  (all int8)
#   PERFORMANCE, model_type TRANSFORMER (SmoothQuant)      0.070% / 0.042%, 0.086  (all int8)  <- kept
#   MIXED, model_type TRANSFORMER                          0.060% / 0.036%, 0.081  (5 of 54 layers left f32)
#   MIXED, no model type                                   0.094% / 0.045%, 0.069  (5 of 52 layers left f32)
# TRANSFORMER (it keeps LayerNorm/Softmax unquantized and smooths the MatMul inputs) beats the ignored scope
# with every compute layer in int8; MIXED's gain comes from leaving layers in f32. For comparison ONNX
# Runtime's QDQ graph (QDQ_SETTINGS) gives 0.122% / 0.053%, 0.093 on the same windows, and OpenVINO
# running that QDQ graph 0.932% / 0.386%, 0.43: OpenVINO runs NNCF's IR, not the QDQ graph.
NNCF_SETTINGS: dict[str, Any] = {"preset": "PERFORMANCE", "model_type": "TRANSFORMER", "ignored_types": []}


# --- calibration -------------------------------------------------------------------------------


@dataclass
class Calibration:
    """Calibration windows, (1, C, D, H, W) float32 each, and what they were cut from."""

    windows: list[np.ndarray]
    sources: list[dict]
    seed: int = 0
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"windows": len(self.windows), "seed": self.seed, "sources": list(self.sources),
                "window_shape": list(self.windows[0].shape[1:]) if self.windows else None}


def _file_source(path: Path) -> dict:
    from edgeseg.runtime.manifest import portable_path, sha256_file

    return {"kind": "nifti", "path": portable_path(path), "sha256": sha256_file(path)}


def _volumes(model_spec, paths: Sequence[str | Path] | None, seed: int):
    """(prepared [0, 1] volume, source record) per calibration source, read one at a time."""
    import nibabel as nib

    from edgeseg.assets import EXAMPLE_CT
    from edgeseg.runtime.nifti import Scan, load_scan
    from edgeseg.runtime.preprocess import preprocess_scan

    pre = model_spec.preprocess
    if paths:
        check_calibration_files(paths)
        for p in paths:
            p = Path(p)
            scan = load_scan(p)  # a file that is not a CT in HU is refused here, naming it
            yield preprocess_scan(scan, pre).image, _file_source(p)
        return
    yield preprocess_scan(load_scan(EXAMPLE_CT), pre).image, _file_source(EXAMPLE_CT)
    from edgeseg.data.phantom import SOURCE, TARGET, generate_case
    from edgeseg.data.phantom.cases import PHANTOM_VERSION

    for k, domain in enumerate((SOURCE, TARGET)):
        case = generate_case(PHANTOM_SEED + seed + k, domain, spacing=pre.spacing, z_range=PHANTOM_Z_RANGE)
        scan = Scan(Path(f"phantom-{domain.name}"), case.ct.astype(np.float32), case.affine, nib.Nifti1Header())
        yield preprocess_scan(scan, pre).image, {
            "kind": "phantom", "domain": domain.name, "seed": PHANTOM_SEED + seed + k, "spacing": list(pre.spacing),
            "z_range": list(PHANTOM_Z_RANGE), "generator_version": PHANTOM_VERSION}


def calibration_windows(model_spec, paths: Sequence[str | Path] | None = None, *, count: int = DEFAULT_WINDOWS,
                        seed: int = 0) -> Calibration:
    """`count` windows spread evenly over the sources, centred on random body voxels (seeded)."""
    from edgeseg.runtime.preprocess import crop_window

    if count < 1:
        raise InputError(f"--calibration-windows {count}: at least one window is needed", fix="e.g. --calibration-windows 12")
    window = tuple(model_spec.preprocess.window)
    c = model_spec.in_channels
    rng = np.random.default_rng(seed)
    volumes = list(_volumes(model_spec, paths, seed))
    windows: list[np.ndarray] = []
    sources: list[dict] = []
    for i, (image, source) in enumerate(volumes):
        n = count // len(volumes) + (1 if i < count % len(volumes) else 0)
        body = np.argwhere(image[::4, ::4, ::4] > BODY_LEVEL) * 4
        if not len(body):
            raise InputError("holds no voxel inside the HU window: nothing to calibrate on",
                             path=source.get("path"), fix="pass a CT that shows the abdomen")
        for centre in body[rng.choice(len(body), size=n, replace=len(body) < n)]:
            w = crop_window(image, tuple(int(v) for v in centre), window)
            windows.append(np.array(np.broadcast_to(w, (1, c, *window)), dtype=np.float32))
        sources.append(dict(source, windows=n))
    return Calibration(windows, sources, seed)


# --- ONNX Runtime QDQ -----------------------------------------------------------------------------


def quantize_qdq(src: str | Path, dst: str | Path, calibration: Calibration, *, force: bool = False) -> dict:
    """Write the QDQ int8 graph of fp32 graph `src` at `dst`; returns what was done (for the manifest)."""
    from edgeseg.runtime.availability import require

    require("ort-cpu", "ONNX Runtime (its static quantizer)")
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from edgeseg.export.onnx import _check_target
    from edgeseg.runtime.graph import inspect_graph

    src, dst = Path(src), Path(dst)
    info = inspect_graph(src)
    _check_target(dst, force)
    name = info["inputs"][0]["name"]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration.windows)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {name: x}

    s = QDQ_SETTINGS
    tmp = dst.with_name(dst.name + ".partial")
    t0 = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    # quantize_static advises ORT's pre-processing on the root logger; it is left out on purpose: its
    # optimizer fuses ORT-only ops that TensorRT and OpenVINO would not take.
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType[s["activation_type"]], weight_type=QuantType[s["weight_type"]],
                        per_channel=s["per_channel"], calibrate_method=CalibrationMethod[s["calibrate_method"]],
                        op_types_to_quantize=list(s["op_types_to_quantize"]), extra_options=dict(s["extra_options"]))
        tmp.replace(dst)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)  # the calibrator's own scratch graph lives in a temporary folder of its own
    q = inspect_graph(dst)
    return {"quantizer": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
            "settings": s, "seconds": round(time.perf_counter() - t0, 3), "bytes": q["bytes"],
            "quantized_nodes": q["op_counts"].get("QuantizeLinear", 0)}


# --- NNCF -> OpenVINO IR --------------------------------------------------------------------------


def require_nncf():
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"INT8 export needs NNCF and OpenVINO ({e.name} is not installed)", fix=NNCF_HINT) from None
    return nncf


def quantize_nncf(src: str | Path, dst: str | Path, calibration: Calibration, *, settings: dict | None = None,
                  force: bool = False) -> dict:
    """Write the NNCF int8 OpenVINO IR of fp32 graph `src` at `dst` (.xml, weights in the .bin beside it)."""
    nncf = require_nncf()
    import openvino as ov

    src, dst = Path(src), Path(dst)
    if dst.suffix != ".xml":
        raise InputError("an OpenVINO IR is written as a .xml file", path=dst, fix="name it <stem>.int8.xml")
    for p in (dst, dst.with_suffix(".bin")):
        if p.exists() and not force:
            raise InputError("already exists; refusing to overwrite it", path=p,
                             fix="pass --force to overwrite, or choose another output")
    s = dict(NNCF_SETTINGS if settings is None else settings)
    logging.getLogger("nncf").setLevel(logging.WARNING)  # not one INFO line per unquantized node
    t0 = time.perf_counter()
    model = ov.Core().read_model(str(src))
    kwargs: dict[str, Any] = {"subset_size": len(calibration.windows), "preset": nncf.QuantizationPreset[s["preset"]]}
    if s.get("model_type"):
        kwargs["model_type"] = nncf.ModelType[s["model_type"]]
    if s.get("ignored_types"):
        kwargs["ignored_scope"] = nncf.IgnoredScope(types=list(s["ignored_types"]))
    quantized = nncf.quantize(model, nncf.Dataset(calibration.windows), **kwargs)
    tmp = dst.with_name(dst.stem + ".partial.xml")
    try:
        ov.save_model(quantized, str(tmp), compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(dst.with_suffix(".bin"))
        tmp.replace(dst)  # the .xml last: it is what names the IR
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    n_fq = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    return {"quantizer": "nncf.quantize", "nncf": nncf.__version__, "openvino": ov.get_version(), "settings": s,
            "seconds": round(time.perf_counter() - t0, 3), "fake_quantize_nodes": n_fq,
            "weights_file": dst.with_suffix(".bin").name,
            "bytes": dst.stat().st_size + dst.with_suffix(".bin").stat().st_size}


# --- the graphs, parity-checked: one writer for `edgeseg export` and `edgeseg fuse` ----------------


def check_calibration_files(paths: Sequence[str | Path] | None) -> None:
    """Refuse a missing calibration file before any slow work (whether it is a CT is checked when read)."""
    for p in paths or ():
        if not Path(p).is_file():
            raise InputError("calibration CT not found", path=p,
                             fix="pass existing NIfTI CT files to --calibration (comma-separated), or leave it out "
                                 "for the default (the shipped CT and phantoms of both scanner domains)")


def write_int8(fp32_path: Path, out: Path, stem: str, calibration: Calibration, inputs, reference, masks, *,
               threads: int | None, trained: bool, force: bool, log, timings: dict) -> tuple[dict, list[Path]]:
    """Quantize `fp32_path` both ways into `out` (`<stem>.int8.onnx`, `<stem>.int8.xml/.bin`), check the parity
    of each (the QDQ graph on ONNX Runtime CPU, the IR on OpenVINO) against the same PyTorch fp32 reference;
    a miss keeps the graph under a `.rejected` name with its report and raises. `trained`: the masks come
    from a trained head (else the "int8-untrained" row: flips recorded, not judged). Returns the manifest's
    graphs["int8"] entry and the files written."""
    from edgeseg.export.trunk import check_graph

    tolerance = "int8" if trained else "int8-untrained"
    if not trained:
        log("int8 parity: no trained head, so mask flips are recorded but not judged (parity.py, 'int8-untrained')")

    qdq_path, ir_path = out / f"{stem}.int8.onnx", out / f"{stem}.int8.xml"
    log(f"quantizing {fp32_path.name} to int8 QDQ (ONNX Runtime, {len(calibration.windows)} calibration windows) ...")
    qdq = quantize_qdq(fp32_path, qdq_path, calibration, force=force)
    timings["quantize_int8_qdq"] = qdq["seconds"]
    t0 = time.perf_counter()
    log(f"parity of {qdq_path.name} (ONNX Runtime CPU vs PyTorch fp32) ...")
    report = check_graph(qdq_path, "int8", inputs, reference, masks, threads=threads, files=[qdq_path],
                         tolerance=tolerance)
    timings["parity_int8"] = time.perf_counter() - t0
    for line in report.lines():
        log(line)
    log(f"quantizing {fp32_path.name} to an int8 OpenVINO IR (NNCF, {NNCF_SETTINGS}) ...")
    nncf_meta = quantize_nncf(fp32_path, ir_path, calibration, force=force)
    timings["quantize_int8_nncf"] = nncf_meta["seconds"]
    t0 = time.perf_counter()
    log(f"parity of {ir_path.name} (OpenVINO CPU vs PyTorch fp32) ...")
    ir_files = [ir_path, ir_path.with_suffix(".bin")]
    ir_report = check_graph(ir_path, "int8", inputs, reference, masks, threads=threads, files=ir_files,
                            backend="openvino", tolerance=tolerance)
    timings["parity_int8_openvino"] = time.perf_counter() - t0
    for line in ir_report.lines():
        log(line)
    entry = {"file": qdq_path.name, "source": fp32_path.name, "tolerance": tolerance,
             "calibration": calibration.to_dict(),
             "quantization": qdq, "parity": report.to_dict(),
             "openvino": {"file": ir_path.name, "weights_file": ir_path.with_suffix(".bin").name,
                          "quantization": nncf_meta, "parity": ir_report.to_dict()}}
    return entry, [qdq_path, *ir_files]

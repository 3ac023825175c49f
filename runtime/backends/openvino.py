"""OpenVINO backend (CPU): the fastest CPU path, f32 or bf16, with the precision that RAN recorded.

OpenVINO's CPU plugin picks bf16 by itself on CPUs with native bf16 (AVX-512 BF16, AMX) when no
precision hint is given, so the hint is ALWAYS set here. What actually runs is read back twice: the
compiled model's `INFERENCE_PRECISION_HINT`, and the runtime precision of every compute layer
(Convolution, FullyConnected, MatMul, ...) in `get_runtime_model()`.

What the CPU plugin does with a hint it cannot honour (read from its Config::readProperties): a
bf16 or f16 hint on a CPU without hardware support for it is dropped and the plugin keeps its
default, which is bf16 on bf16-capable CPUs and f32 otherwise. So "bf16" on an older CPU runs f32,
and "f16" on an AVX-512 BF16 CPU without AVX512-FP16 runs bf16 (measured on AMD EPYC with
AVX-512 BF16, OpenVINO 2026.4). fp16 is therefore refused here: it is not a CPU precision.

int8 is NNCF's quantized IR (`edgeseg export --precision int8`): its FakeQuantize'd layers run in
int8 (u8/i8 runtime precisions) and the rest with the bf16 hint, which the plugin drops to f32 on a
CPU without bf16. On the shipped model the bf16 rest changes nothing measurable (worst parity window
0.068% mask flips against 0.070% with an f32 rest) and it is the faster one.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime.backends.base import Backend, BackendInfo, TensorSpec
from edgeseg.runtime.errors import InputError

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}  # int8: the hint for the layers left unquantized
INT8_RUNTIME = frozenset({"i8", "u8"})
COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm"})


def ran_precision(requested: str, compiled_hint: str, compute_precisions: dict[str, int],
                  capabilities: list[str] | tuple[str, ...]) -> tuple[str, str | None]:
    """The precision that runs, from what OpenVINO reports, and a note when it differs from the request.

    compiled_hint: the compiled model's INFERENCE_PRECISION_HINT ("f32", "bf16", ...);
    compute_precisions: runtime precision -> number of compute layers running in it.
    """
    half = sum(n for p, n in compute_precisions.items() if p in ("bf16", "f16"))
    int8 = sum(n for p, n in compute_precisions.items() if p in INT8_RUNTIME)
    total = sum(compute_precisions.values())
    if int8:
        note = None if int8 == total else f"{int8} of {total} compute layers run in int8, the rest in " + \
            ", ".join(sorted(p for p, n in compute_precisions.items() if p not in INT8_RUNTIME and n))
        if requested != "int8":
            note = f"{requested} was requested but the graph is quantized: {int8} of {total} compute layers run in int8"
        return "int8", note
    if requested == "int8":
        return ("bf16" if half else "fp32"), "int8 was requested but no compute layer runs in int8 (not a quantized graph?)"
    if total:
        kinds = {p for p, n in compute_precisions.items() if p in ("bf16", "f16") and n}
        ran = ("bf16" if "bf16" in kinds else "fp16") if half else "fp32"
    else:  # no compute layer (a toy graph): trust the compiled hint
        ran = {"bf16": "bf16", "f16": "fp16"}.get(compiled_hint, "fp32")
    note = None
    if ran != requested:
        if requested == "bf16" and "BF16" not in capabilities:
            note = (f"bf16 was requested but this CPU has no native bf16 (capabilities: {', '.join(capabilities)}); "
                    "OpenVINO drops the hint and runs f32")
        else:
            note = f"{requested} was requested but OpenVINO compiled {compiled_hint} and runs {ran}"
    elif half and half < total:
        note = f"{half} of {total} compute layers run in {ran}, the rest in f32"
    return ran, note


class OpenVinoBackend(Backend):
    """An ONNX graph (or OpenVINO IR .xml) compiled for the CPU with an explicit precision hint.

    `threads` sets INFERENCE_NUM_THREADS; `cache_dir` sets CACHE_DIR so the compile (about 8 s at
    feature_size 48) is paid once per graph, OpenVINO version and CPU. The precision ("fp32" or "bf16";
    fp16 is refused by the support table, with the reason above) is checked by `open_backend`.
    """

    name = "openvino"

    def __init__(self, model_path: str | Path, precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | Path | None = None, *, performance_hint: str = "LATENCY") -> None:
        super().__init__()
        self.path = Path(model_path)
        self.precision = precision
        self.threads = threads
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.performance_hint = performance_hint
        self._compiled = None
        self._request = None

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[self.precision], "PERFORMANCE_HINT": self.performance_hint}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.cache_dir is not None:
            cfg["CACHE_DIR"] = str(self.cache_dir)
        return cfg

    def _activate(self) -> None:
        import openvino as ov

        from edgeseg.runtime.host import cpu_model

        core = ov.Core()
        capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            # Compiling from the path (not a read model) lets CACHE_DIR skip reading the graph too.
            compiled = core.compile_model(str(self.path), "CPU", self.config())
        except Exception as e:
            raise InputError(f"OpenVINO cannot compile this graph: {type(e).__name__}: {e}", path=self.path,
                             fix="re-export it with `edgeseg export`") from None
        if len(compiled.inputs) != 1:
            raise InputError(f"has {len(compiled.inputs)} inputs; the backends take one (the image window)", path=self.path,
                             fix="export the trunk with a single input 'image'")
        hint = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        counts: Counter[str] = Counter()
        for op in compiled.get_runtime_model().get_ops():
            rt = op.get_rt_info()
            if "layerType" in rt and _any_str(rt["layerType"]) in COMPUTE_LAYERS:
                counts[_any_str(rt["runtimePrecision"]) if "runtimePrecision" in rt else "?"] += 1
        ran, note = ran_precision(self.precision, hint, dict(counts), capabilities)
        if self.precision == "int8" and ran != "int8":
            raise InputError("int8 was asked for, but OpenVINO runs no layer of this graph in int8: it is not a "
                             "quantized graph", path=self.path,
                             fix="pass the int8 IR that `edgeseg export --precision int8` writes (trunk.int8.xml)")
        threads = int(compiled.get_property("INFERENCE_NUM_THREADS")) or self.threads or os.cpu_count()
        detail: dict[str, Any] = {
            "openvino": ov.get_version(), "graph": str(self.path), "requested_hint": HINTS[self.precision],
            "compiled_hint": hint, "compute_layer_precisions": dict(counts), "cpu_capabilities": capabilities,
            "threads": threads, "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
        }
        try:
            detail["loaded_from_cache"] = bool(compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:
            pass
        if note:
            detail["note"] = note
        self.inputs = tuple(_spec(p) for p in compiled.inputs)
        self.outputs = tuple(_spec(p) for p in compiled.outputs)
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.info = BackendInfo(backend="openvino", precision=ran, device=f"CPU ({cpu_model()}, {threads} threads)",
                                detail=detail)

    def _deactivate(self) -> None:
        self._request = None
        self._compiled = None

    def _predict(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        self._request.infer({0: batch})
        # The request reuses its output buffers: copy before the next call overwrites them.
        return tuple(np.array(self._request.get_output_tensor(i).data, copy=True) for i in range(len(self.outputs)))


def _type_name(t: Any) -> str:
    get = getattr(t, "get_type_name", None)
    return get() if callable(get) else str(t)


def _any_str(value: Any) -> str:
    astype = getattr(value, "astype", None)
    return astype(str) if callable(astype) else str(value)


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()).name, shape)

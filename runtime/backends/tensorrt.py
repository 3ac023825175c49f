"""Native TensorRT backend: a serialized engine (`.plan`) run with TensorRT's name-based API.

Written against TensorRT 10.x/11.x (docs.nvidia.com/deeplearning/tensorrt, Python API and the
10.x -> 11.x migration guide): `Runtime.deserialize_cuda_engine`, `create_execution_context`,
`set_input_shape`, `set_tensor_address` for every I/O tensor (names from `num_io_tensors`,
`get_tensor_name`, `get_tensor_mode`), `execute_async_v3(stream)`.

GPU memory and streams: cuda-python's runtime API (`cuda.bindings.runtime`), as TensorRT's Python
samples do; no torch on the deployment path. Buffers grow to the largest batch seen and are reused.

Engines are specific to the TensorRT version, the GPU (and its compute capability) and CUDA: the
engine key (`engine_key_from_facts`) records all four, and `check_engine_key` refuses a mismatch with
a message naming the differing field(s) and the rebuild command. The key logic and the engine
inspector parser (`half_fraction`) are pure functions over dicts/strings, testable without TensorRT.

Not yet run on hardware: no TensorRT was installable where this was written and no GPU has been
lent, so only the pure functions have run; the `trt`-marked tests in tests/runtime/test_backends.py
and tests/export/test_tensorrt.py run the backend wherever TensorRT and an NVIDIA GPU are present.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime.backends.base import Backend, BackendInfo, TensorSpec
from edgeseg.runtime.errors import BackendUnavailable, InputError
from edgeseg.runtime.support import Device

REBUILD = "rebuild the engine on this machine: edgeseg export CHECKPOINT --out DIR --tensorrt"
TRT_HINT = "pip install 'edgeseg[trt]' on a machine with an NVIDIA GPU (the wheels fetch NVIDIA's libraries at install time)"
KEY_FIELDS = {"tensorrt": "TensorRT version", "gpu": "GPU", "compute_capability": "compute capability", "cuda": "CUDA"}


# --- engine key: pure ------------------------------------------------------------------------------
def engine_key_from_facts(tensorrt_version: str, gpu: str, compute_capability: str, cuda: str) -> dict[str, str]:
    """The four facts a TensorRT engine (and its timing cache) is tied to."""
    return {"tensorrt": str(tensorrt_version), "gpu": str(gpu), "compute_capability": str(compute_capability),
            "cuda": str(cuda)}


def _slug(text: str) -> str:
    text = re.sub(r"\b(nvidia|geforce)\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "gpu"


def key_string(key: dict[str, str]) -> str:
    """A short file-name-safe form, e.g. ``trt10.13.3.9-sm86-cu12.8-rtx-3060`` for ``trunk.<key>.plan``."""
    cc = str(key["compute_capability"]).replace(".", "")
    return f"trt{key['tensorrt']}-sm{cc}-cu{key['cuda']}-{_slug(key['gpu'])}"


def engine_key_differences(plan_key: dict, current_key: dict) -> list[str]:
    """Human-readable differences, one per field of KEY_FIELDS that differs (or is missing)."""
    diffs = []
    for field, label in KEY_FIELDS.items():
        built, here = plan_key.get(field), current_key.get(field)
        if built is None or str(built) != str(here):
            was = "(not recorded)" if built is None else built
            diffs.append(f"{label}: engine built with {was}, this machine has {here}")
    return diffs


def check_engine_key(plan_manifest_key: dict, current_key: dict, *, path: str | Path | None = None) -> None:
    """Refuse an engine built for another TensorRT version, GPU, compute capability or CUDA."""
    if not isinstance(plan_manifest_key, dict):
        raise InputError("the engine's manifest has no engine key (TensorRT version, GPU, compute capability, CUDA)",
                         path=path, fix=REBUILD)
    diffs = engine_key_differences(plan_manifest_key, current_key)
    if diffs:
        raise InputError("the TensorRT engine was built for another setup (" + "; ".join(diffs) + ")", path=path, fix=REBUILD)


# --- engine inspector: pure ------------------------------------------------------------------------
def _tensor_type(entry: Any) -> str:
    if not isinstance(entry, dict):
        return ""
    # TensorRT 11.x: separate "DataType" / "Format"; 10.x: one "Format/Datatype" string.
    return str(entry.get("DataType") or entry.get("Format/Datatype") or entry.get("Format") or "").lower()


def _kind(type_text: str) -> str | None:
    if any(t in type_text for t in ("half", "fp16", "float16")):
        return "half"
    if any(t in type_text for t in ("bf16", "bfloat")):
        return "bf16"
    if any(t in type_text for t in ("float", "fp32")):
        return "float"
    if any(t in type_text for t in ("int8", "fp8", "int4", "fp4")):
        return "quantized"
    return None


def layer_precisions(engine_json: str | dict) -> dict[str, int] | None:
    """Count engine layers by the type of their outputs, from `get_engine_information(JSON)`.

    Returns e.g. {"half": 120, "float": 14}; None when the engine was built without detailed profiling
    verbosity (layers are bare names then and carry no types).
    """
    info = json.loads(engine_json) if isinstance(engine_json, str) else engine_json
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        return None
    counts: dict[str, int] = {}
    for layer in layers:
        kinds = {_kind(_tensor_type(o)) for o in layer.get("Outputs", [])} - {None}
        kind = next((k for k in ("half", "bf16", "quantized", "float") if k in kinds), "other")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def half_fraction(engine_json: str | dict) -> float | None:
    """Fraction of layers that output half (fp16) tensors; None when the engine carries no layer types."""
    counts = layer_precisions(engine_json)
    if counts is None:
        return None
    total = sum(counts.values())
    return counts.get("half", 0) / total if total else 0.0


def precision_label(fraction: float | None, io_dtypes: list[str]) -> str:
    if fraction is None:
        return "fp16 (I/O)" if "float16" in io_dtypes else "unknown (engine built without detailed profiling verbosity)"
    return f"fp16 (strongly typed, {fraction:.0%} of layers half)" if fraction > 0 else "fp32"


# --- TensorRT access -------------------------------------------------------------------------------
def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed", fix=TRT_HINT) from None
    except Exception as e:  # broken install: libnvinfer missing
        raise BackendUnavailable(f"tensorrt does not import: {type(e).__name__}: {e}", fix=TRT_HINT) from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is too old: edgeseg needs 10.x or newer (name-based I/O, "
                                 "strongly typed networks)", fix=TRT_HINT)
    return trt


def current_engine_key(device_id: int = 0) -> dict[str, str]:
    """The engine key of this machine: TensorRT version, GPU name, compute capability, CUDA runtime."""
    from edgeseg.runtime.backends._cuda import gpu_facts

    trt = import_tensorrt()
    facts = gpu_facts(device_id)
    return engine_key_from_facts(trt.__version__, facts["gpu"], facts["compute_capability"], facts["cuda"])


def device_memory_bytes(engine: Any) -> int | None:
    """Scratch memory a context needs: `device_memory_size_v2` (10.x+, the only one in 11.x), else the old name."""
    for attr in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, attr, None)
        if value is not None:
            return int(value)
    return None


class TensorRTBackend(Backend):
    """A TensorRT `.plan` on one GPU. `manifest_key` (from the engine's manifest) is checked first."""

    name = "tensorrt"
    device = Device.CUDA

    def __init__(self, plan_path: str | Path, manifest_key: dict | None = None, *, precision: str | None = None,
                 device_id: int = 0) -> None:
        super().__init__()
        self.path = Path(plan_path)
        self.manifest_key = manifest_key
        self.precision = precision
        self.device_id = device_id
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _activate(self) -> None:
        from edgeseg.runtime.backends import _cuda

        trt = import_tensorrt()
        cudart = _cuda.import_cudart()
        facts = _cuda.gpu_facts(self.device_id, cudart)
        here = engine_key_from_facts(trt.__version__, facts["gpu"], facts["compute_capability"], facts["cuda"])
        if self.manifest_key is not None:
            check_engine_key(self.manifest_key, here, path=self.path)
        _cuda.call(cudart, cudart.cudaSetDevice(self.device_id))

        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise InputError(f"TensorRT {trt.__version__} could not deserialize this engine: it was built for another "
                             f"TensorRT version or GPU (this machine: {facts['gpu']}, compute capability "
                             f"{facts['compute_capability']}, CUDA {facts['cuda']})", path=self.path, fix=REBUILD)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise InputError(f"has {len(inputs)} inputs; the backends take one (the image window)", path=self.path, fix=REBUILD)
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        shapes = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in names}
        lo, opt, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(inputs[0], 0))

        inspector = engine.create_engine_inspector()
        layer_json = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        counts = layer_precisions(layer_json)
        fraction = half_fraction(layer_json)
        ran = "fp32" if fraction == 0 else "fp16" if fraction else None
        if self.precision is not None and ran is not None and ran != self.precision:
            raise InputError(f"is an {ran} engine ({0 if not fraction else fraction:.0%} half-precision layers), but "
                             f"precision {self.precision!r} was asked for", path=self.path,
                             fix="build the engine from the fp16 graph (`edgeseg export ... --tensorrt`)")

        self._trt, self._cudart, self._cuda = trt, cudart, _cuda
        self._engine, self._runtime = engine, runtime
        self._context = engine.create_execution_context()
        self._stream = _cuda.call(cudart, cudart.cudaStreamCreate())
        self._in, self._outs, self._dtypes = inputs[0], outputs, dtypes
        self._batch_range = (lo[0], opt[0], hi[0])
        self.inputs = (TensorSpec(inputs[0], dtypes[inputs[0]].name, tuple(None if d < 0 else d for d in shapes[inputs[0]]),
                                  (lo[0], hi[0])),)  # the profile's batch range: checked with the rest of the input
        self.outputs = tuple(TensorSpec(n, dtypes[n].name, tuple(None if d < 0 else d for d in shapes[n])) for n in outputs)
        self.info = BackendInfo(
            backend="tensorrt",
            precision=precision_label(fraction, [d.name for d in dtypes.values()]),
            device=f"{facts['gpu']} (compute capability {facts['compute_capability']})",
            detail={"tensorrt": trt.__version__, "plan": str(self.path), "engine_key": here,
                    "cuda_driver": facts["driver_cuda"], "layer_precisions": counts, "half_fraction": fraction,
                    "batch_range": list(self._batch_range), "device_memory_bytes": device_memory_bytes(engine),
                    "memory": "cuda-python (cudaMalloc / cudaMemcpyAsync on one stream)"},
        )

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cuda.call(self._cudart, self._cudart.cudaFree(ptr))
            ptr = int(self._cuda.call(self._cudart, self._cudart.cudaMalloc(nbytes)))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _predict(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        cudart, call, ctx = self._cudart, self._cuda.call, self._context
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if not ctx.set_input_shape(self._in, tuple(batch.shape)):
            raise InputError(f"TensorRT refused input shape {batch.shape}", path=self.path, fix=REBUILD)
        src = self._device_buffer(self._in, batch.nbytes)
        call(cudart, cudart.cudaMemcpyAsync(src, batch.ctypes.data, batch.nbytes, h2d, self._stream))
        ctx.set_tensor_address(self._in, src)
        results = []
        for name in self._outs:
            host = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtypes[name])
            ctx.set_tensor_address(name, self._device_buffer(name, max(host.nbytes, 1)))
            results.append(host)
        if not ctx.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path} (see the TensorRT log above)")
        for name, host in zip(self._outs, results):
            call(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes, d2h, self._stream))
        call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return tuple(results)

    def _deactivate(self) -> None:
        cudart, call = self._cudart, self._cuda.call
        try:
            call(cudart, cudart.cudaStreamSynchronize(self._stream))
        finally:
            for ptr, _ in self._buffers.values():
                cudart.cudaFree(ptr)
            self._buffers.clear()
            cudart.cudaStreamDestroy(self._stream)
            self._context = None
            self._engine = None

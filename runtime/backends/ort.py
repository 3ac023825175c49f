"""ONNX Runtime backend: CPU, CUDA execution provider, or TensorRT execution provider.

Providers are listed in order so that nodes a GPU provider cannot run go to the next one (TensorRT
EP -> CUDA EP -> CPU), but the whole session never silently lands on the CPU: after the session
starts, the requested GPU provider must be among `session.get_providers()`, or this raises
BackendUnavailable (ONNX Runtime itself only logs that a provider's libraries were not found).

Precision is the graph's: the fp32 export or the mixed fp16 export (fp16 Conv/MatMul, fp32
normalisations). On the TensorRT EP, fp16 comes from that graph: `trt_fp16_enable` stays False,
which is also what makes ONNX Runtime build the TensorRT network strongly typed (weak typing, what
`trt_fp16_enable` turns on, is deprecated in TensorRT 10.12 and removed in 11).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.runtime.backends.base import Backend, BackendInfo, TensorSpec
from edgeseg.runtime.errors import BackendUnavailable, InputError
from edgeseg.runtime.gpu_pairs import ORT_GPU_HINT
from edgeseg.runtime.graph import inspect_graph
from edgeseg.runtime.support import Device

ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16", "tensor(int64)": "int64", "tensor(int32)": "int32",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}
PROVIDER = {Device.CPU: "CPUExecutionProvider", Device.CUDA: "CUDAExecutionProvider",
            Device.TENSORRT: "TensorrtExecutionProvider"}
GPU_FIX = ("check the driver (nvidia-smi) and that CUDA 12 / cuDNN 9 (and TensorRT for the TensorRT EP) are installed "
           "where onnxruntime-gpu finds them (pip install 'edgeseg[gpu]'; onnxruntime.preload_dlls() uses the nvidia-* "
           "pip packages); or choose device='cpu' explicitly")
FP16_CPU_NOTE = ("ONNX Runtime's CPU provider has no fp16 Conv/MatMul kernels on x86: it inserts Casts and runs those "
                 "nodes in fp32 (fp16-rounded weights, slower than the fp32 graph); use the fp32 graph on CPU")

def _shape_option(name: str, sample_dims: tuple[int | str, ...], batch: int) -> str:
    if any(not isinstance(d, int) for d in sample_dims):
        raise InputError(f"input {name!r} has dynamic dimensions other than the batch: {sample_dims}",
                         fix="export with a fixed window (only the batch dimension dynamic)")
    return f"{name}:" + "x".join(str(d) for d in (batch, *sample_dims))


def cpu_device(threads: int | None) -> str:
    from edgeseg.runtime.host import cpu_model

    return f"CPU ({cpu_model()}, {threads or os.cpu_count()} threads)"


class OrtBackend(Backend):
    """An ONNX graph on ONNX Runtime.

    device: "cpu" (intra-op `threads`, optional `arena=False` to drop the CPU memory arena: about 1.5 GB
    less peak at feature_size 48), "cuda" (CUDA EP then CPU for unsupported nodes) or "tensorrt"
    (TensorRT EP, then CUDA EP, then CPU; engines and timing caches under `cache_dir`).
    precision: None accepts the graph's; "fp32"/"fp16" must match the graph (pass the matching export).
    Device and precision are checked against the support table by `open_backend`; on the TensorRT EP the
    batch range is part of the input's spec, so `predict`'s one input check covers it.
    """

    name = "ort"

    def __init__(self, onnx_path: str | Path, precision: str | None = None, device: str = "cpu",
                 threads: int | None = None, arena: bool = True, cache_dir: str | Path | None = None, *,
                 device_id: int = 0, min_batch: int = 1, opt_batch: int | None = None, max_batch: int = 4,
                 workspace_bytes: int = 4 << 30, builder_optimization_level: int = 3,
                 gpu_mem_limit: int | None = None, cudnn_conv_algo_search: str = "EXHAUSTIVE",
                 log_severity_level: int = 3) -> None:
        super().__init__()
        if not 1 <= min_batch <= (opt_batch or max_batch) <= max_batch:
            raise InputError(f"batch range must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}",
                             fix="pass min_batch <= opt_batch <= max_batch")
        self.path = Path(onnx_path)
        self.precision = precision
        self.device = Device(device)
        self.threads = threads
        self.arena = arena
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.device_id = device_id
        self.batch_range = (min_batch, opt_batch or max_batch, max_batch)
        self.workspace_bytes = workspace_bytes
        self.builder_optimization_level = builder_optimization_level
        self.gpu_mem_limit = gpu_mem_limit
        self.cudnn_conv_algo_search = cudnn_conv_algo_search
        self.log_severity_level = log_severity_level
        self._session = None

    # --- provider configuration (pure: testable without a GPU) ---------------------------------
    def cuda_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"device_id": self.device_id, "cudnn_conv_algo_search": self.cudnn_conv_algo_search}
        if self.gpu_mem_limit:
            opts["gpu_mem_limit"] = int(self.gpu_mem_limit)
        return opts

    def tensorrt_options(self, input_name: str, sample_dims: tuple[int | str, ...]) -> dict[str, Any]:
        lo, opt, hi = self.batch_range
        opts: dict[str, Any] = {
            "device_id": self.device_id,
            # fp16 lives in the graph; True would switch ONNX Runtime to weak typing (removed in TensorRT 11).
            "trt_fp16_enable": False,
            "trt_max_workspace_size": int(self.workspace_bytes),
            "trt_builder_optimization_level": int(self.builder_optimization_level),
            "trt_profile_min_shapes": _shape_option(input_name, sample_dims, lo),
            "trt_profile_opt_shapes": _shape_option(input_name, sample_dims, opt),
            "trt_profile_max_shapes": _shape_option(input_name, sample_dims, hi),
        }
        if self.cache_dir is not None:
            opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(self.cache_dir),
                         "trt_timing_cache_enable": True, "trt_timing_cache_path": str(self.cache_dir)})
        return opts

    def providers(self, graph: dict) -> list:
        if self.device is Device.CPU:
            return ["CPUExecutionProvider"]
        if self.device is Device.CUDA:
            return [("CUDAExecutionProvider", self.cuda_options()), "CPUExecutionProvider"]
        if len(graph["inputs"]) != 1:
            raise InputError(f"has {len(graph['inputs'])} inputs; the backends take one (the image window)", path=self.path,
                             fix="export the trunk with a single input 'image'")
        (image,) = graph["inputs"]
        return [("TensorrtExecutionProvider", self.tensorrt_options(image["name"], tuple(image["shape"][1:]))),
                ("CUDAExecutionProvider", self.cuda_options()), "CPUExecutionProvider"]

    # --- lifecycle ----------------------------------------------------------------------------
    def _activate(self) -> None:
        import onnxruntime as ort

        graph = inspect_graph(self.path)
        if self.precision is not None and self.precision != graph["precision"]:
            have = "a mixed fp16" if graph["precision"] == "fp16" else f"an {graph['precision']}"
            raise InputError(f"is {have} graph, but precision {self.precision!r} was asked for", path=self.path,
                             fix=f"pass the {self.precision} export (trunk.{self.precision}.onnx), or precision=None to "
                                 "run the graph as it is" + (" (TensorRT takes fp16 from the graph, not from a flag)"
                                                             if self.device is Device.TENSORRT else ""))
        wanted = PROVIDER[self.device]
        available = ort.get_available_providers()
        if wanted not in available:
            raise BackendUnavailable(f"{wanted} is not in this onnxruntime build ({ort.__version__}; it has "
                                     f"{', '.join(available)})",
                                     fix=f"{ORT_GPU_HINT}; or choose device='cpu' explicitly")
        if self.device.is_gpu and hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception:  # it only helps find CUDA/cuDNN; the provider check below is what decides
                pass
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

        so = ort.SessionOptions()
        so.log_severity_level = self.log_severity_level
        so.intra_op_num_threads = int(self.threads or 0)
        so.inter_op_num_threads = 1
        so.enable_cpu_mem_arena = bool(self.arena)
        providers = self.providers(graph)
        try:
            session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:
            if self.device is Device.CPU:
                raise InputError(f"ONNX Runtime cannot load this graph: {type(e).__name__}: {e}", path=self.path,
                                 fix="re-export it with `edgeseg export`") from None
            raise BackendUnavailable(f"ONNX Runtime could not start {wanted}: {type(e).__name__}: {e}", fix=GPU_FIX) from None
        loaded = session.get_providers()
        if wanted not in loaded:
            raise BackendUnavailable(f"{wanted} did not load (ONNX Runtime would have run on {', '.join(loaded)}): "
                                     "its CUDA/cuDNN/TensorRT libraries were not found or no GPU is visible", fix=GPU_FIX)

        ins, outs = session.get_inputs(), session.get_outputs()
        if len(ins) != 1:
            raise InputError(f"has {len(ins)} inputs; the backends take one (the image window)", path=self.path,
                             fix="export the trunk with a single input 'image'")
        batch = (self.batch_range[0], self.batch_range[2]) if self.device is Device.TENSORRT else None
        self.inputs = tuple(_spec(a, batch) for a in ins)
        self.outputs = tuple(_spec(a) for a in outs)
        self._session = session
        self._out_names = [o.name for o in outs]
        self._ort = ort

        detail: dict[str, Any] = {
            "onnxruntime": ort.__version__, "providers": loaded, "provider_options": _jsonable(session.get_provider_options()),
            "graph": str(self.path), "graph_precision": graph["precision"], "opset": graph["opset"],
        }
        if self.device is Device.CPU:
            detail.update(threads=self.threads or os.cpu_count(), cpu_mem_arena=self.arena)
            device = cpu_device(self.threads)
            if graph["precision"] == "fp16":
                detail["note"] = FP16_CPU_NOTE
        else:
            from edgeseg.runtime.backends._cuda import gpu_name

            device = f"{gpu_name(self.device_id)} ({wanted})"
            if self.device is Device.TENSORRT:
                detail["batch_range"] = list(self.batch_range)
                detail["note"] = ("nodes TensorRT cannot take run on the CUDA EP; engines and timing caches are cached "
                                  + (f"under {self.cache_dir}" if self.cache_dir else "nowhere (pass cache_dir)"))
        precision = "fp16 (mixed graph)" if graph["precision"] == "fp16" else graph["precision"]
        self.info = BackendInfo(backend=f"ort-{self.device}", precision=precision, device=device, detail=detail)

    def _deactivate(self) -> None:
        self._session = None

    def _predict(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.device is Device.CPU:
            return tuple(self._session.run(self._out_names, {self.inputs[0].name: batch}))
        # IOBinding: input copied to the GPU once, outputs allocated there by ONNX Runtime, copied back once.
        value = self._ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self.device_id)
        binding = self._session.io_binding()
        binding.bind_input(self.inputs[0].name, "cuda", self.device_id, batch.dtype, list(batch.shape), value.data_ptr())
        for name in self._out_names:
            binding.bind_output(name, "cuda", self.device_id)
        self._session.run_with_iobinding(binding)
        return tuple(binding.copy_outputs_to_cpu())


def _spec(arg: Any, batch_range: tuple[int, int] | None = None) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, ORT_TYPES.get(arg.type, arg.type), shape, batch_range)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool, type(None), list)) else str(value)

"""PyTorch backend: the module itself, eager or torch.compile'd, fp32 or autocast fp16/bf16.

The only backend that needs torch; torch is imported when the backend activates, so importing this
module costs nothing on a deployment box. fp16 autocast runs on CUDA only; bf16 autocast runs on
CPU too (conv/linear/matmul in bf16, the rest fp32). CUDA graphs (optional, CUDA only) capture one
graph per batch size with a static input buffer; each call copies the batch in and replays.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from edgeseg.runtime.backends.base import Backend, BackendInfo, TensorSpec
from edgeseg.runtime.errors import BackendUnavailable, InputError
from edgeseg.runtime.support import Device


class TorchBackend(Backend):
    """`module` (e.g. the trunk) run by PyTorch under `torch.inference_mode()`; outputs as float32 numpy.

    input_shape: per-sample (C, D, H, W) the input must have; None checks only the channel count (taken
    from the module's first Conv3d) and the number of dimensions. Device ("cpu", "cuda" or "cuda:N") and
    precision are checked against the support table by `open_backend`.
    """

    name = "torch"

    def __init__(self, module: Any, precision: str = "fp32", device: str = "cpu", compile: bool = False,
                 cuda_graphs: bool = False, *, threads: int | None = None,
                 input_shape: tuple[int, ...] | None = None, input_name: str = "image") -> None:
        super().__init__()
        kind, _, index = str(device).partition(":")
        self.device = Device(kind)
        if cuda_graphs and self.device is not Device.CUDA:
            raise InputError("CUDA graphs need device='cuda'", fix="drop cuda_graphs, or run on a GPU")
        self.module = module
        self.precision = precision
        self.torch_device = f"{kind}:{index}" if index else kind  # what torch.device() takes
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.threads = threads
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.input_name = input_name
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}

    def _activate(self) -> None:
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("torch is not installed", fix="pip install 'edgeseg[train]' (with a CPU or CUDA build of "
                                                                   "torch)") from None
        if self.device is Device.CUDA and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch {torch.__version__} sees no CUDA device "
                                     f"({'CPU build' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda})",
                                     fix="install a CUDA build of torch on a machine with an NVIDIA GPU, or use device='cpu'")
        if self.threads:
            torch.set_num_threads(int(self.threads))  # process-wide: torch has one intra-op pool
        self._torch = torch
        self._device = torch.device(self.torch_device)
        self.module.eval().to(self._device)
        self._fn = torch.compile(self.module) if self.compile else self.module
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

        if self.input_shape is not None:
            sample: tuple[int | None, ...] = self.input_shape
        else:
            conv = next((m for m in self.module.modules() if isinstance(m, torch.nn.Conv3d)), None)
            sample = (None if conv is None else conv.in_channels, None, None, None)
        dtype = next((p.dtype for p in self.module.parameters()), torch.float32)
        self.inputs = (TensorSpec(self.input_name, str(dtype).replace("torch.", ""), (None, *sample)),)

        if self._device.type == "cuda":
            index = self._device.index if self._device.index is not None else torch.cuda.current_device()
            device = torch.cuda.get_device_name(index)
        else:
            from edgeseg.runtime.host import cpu_model

            device = f"CPU ({cpu_model()}, {torch.get_num_threads()} threads)"
        self.info = BackendInfo(
            backend=f"torch-{self._device.type}",
            precision=self.precision if self._dtype is None else f"{self.precision} (autocast)",
            device=device,
            detail={"torch": torch.__version__, "compile": self.compile, "cuda_graphs": self.cuda_graphs,
                    "threads": torch.get_num_threads(), "inference_mode": True,
                    "cuda": torch.version.cuda, "module": type(self.module).__name__},
        )

    def _deactivate(self) -> None:
        self._graphs.clear()

    def _autocast(self) -> Any:
        if self._dtype is None:
            return contextlib.nullcontext()
        # CUDA graph capture needs the autocast weight cache off (PyTorch's CUDA graphs notes).
        return self._torch.autocast(device_type=self._device.type, dtype=self._dtype, cache_enabled=not self.cuda_graphs)

    def _run(self, x: Any) -> tuple[Any, ...]:
        with self._autocast():
            out = self._fn(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def _predict(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self._device, non_blocking=False)
            if self.cuda_graphs:
                outs = self._replay(x)
            else:
                outs = self._run(x)
            result = tuple(o.detach().float().cpu().numpy() for o in outs)
        if not self.outputs:
            self.outputs = tuple(TensorSpec(f"output_{i}", "float32", (None, *r.shape[1:])) for i, r in enumerate(result))
        return result

    def forward(self, x: Any) -> tuple[Any, ...]:
        """The module on a tensor already on the backend's device, outputs left there (no host copies, no sync):
        what a benchmark times to separate the compute from `predict`'s transfers."""
        if not self._active:
            raise RuntimeError("backend torch is not active: activate() it before forward()")
        with self._torch.inference_mode():
            return self._replay(x) if self.cuda_graphs else self._run(x)

    def _replay(self, x: Any) -> tuple[Any, ...]:
        """One CUDA graph per batch size: warm up on a side stream, capture with a static input, replay."""
        torch = self._torch
        n = int(x.shape[0])
        if n not in self._graphs:
            static_in = torch.empty_like(x)
            static_in.copy_(x)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._run(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in)
            self._graphs[n] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[n]
        static_in.copy_(x)
        graph.replay()
        return tuple(o.clone() for o in static_out)

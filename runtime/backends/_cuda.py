"""CUDA without torch: the few runtime calls the TensorRT backend needs, through cuda-python.

One documented approach for device memory: NVIDIA's `cuda-python` bindings (``cuda.bindings.runtime``
since cuda-python 12.6, ``cuda.cudart`` before), as TensorRT's own Python samples use. Every call
returns a tuple whose first item is the error code; `call()` checks it. Nothing here imports torch.

Not yet run on hardware: no GPU has been lent where this was written (nor cuda-python with a driver
to call); the `gpu`- and `trt`-marked tests run it wherever an NVIDIA GPU is present.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from edgeseg.runtime.errors import BackendUnavailable

CUDA_PYTHON_HINT = "pip install cuda-python (NVIDIA's CUDA bindings; the TensorRT backend allocates GPU memory with it)"


def import_cudart() -> Any:
    """The CUDA runtime module of cuda-python, or BackendUnavailable with the install hint."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except ImportError:
        raise BackendUnavailable("cuda-python is not installed: the TensorRT backend needs it for GPU memory and streams",
                                 fix=CUDA_PYTHON_HINT) from None


def call(cudart: Any, result: Any) -> Any:
    """Check a cuda-python result tuple ``(err, *values)``; return the value(s)."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        try:
            name = cudart.cudaGetErrorName(err)[1].decode()
            text = cudart.cudaGetErrorString(err)[1].decode()
        except Exception:  # pragma: no cover - error while describing an error
            name, text = str(err), ""
        raise RuntimeError(f"CUDA error {name}: {text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _version(v: int) -> str:
    # CUDA encodes versions as 1000 * major + 10 * minor.
    return f"{v // 1000}.{(v % 1000) // 10}"


def gpu_facts(device_id: int = 0, cudart: Any | None = None) -> dict:
    """Name, compute capability and CUDA runtime/driver versions of one GPU."""
    cudart = cudart or import_cudart()
    count = call(cudart, cudart.cudaGetDeviceCount())
    if count == 0 or device_id >= count:
        raise BackendUnavailable(f"no CUDA device {device_id} (found {count})",
                                 fix="check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    prop = call(cudart, cudart.cudaGetDeviceProperties(device_id))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, (bytes, bytearray)) else str(prop.name)
    return {
        "gpu": name.split("\x00", 1)[0].strip(),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "cuda": _version(call(cudart, cudart.cudaRuntimeGetVersion())),
        "driver_cuda": _version(call(cudart, cudart.cudaDriverGetVersion())),
    }


def gpu_name(device_id: int = 0) -> str:
    """A GPU's name for reports, without torch: cuda-python if present, else nvidia-smi, else its index."""
    try:
        return gpu_facts(device_id)["gpu"]
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader", "-i", str(device_id)],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return f"CUDA device {device_id}"

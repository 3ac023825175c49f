"""One place that decides whether GPU / TensorRT / OpenVINO tests can run here, and says why not.

Each `requires_*()` returns a decorator that marks the test (`gpu`, `trt`, `openvino`) and skips it
with a reason naming what is missing and how to get it (`openvino_marks()`: the same as a list, for
`pytest.param`). The `*_missing()` functions return that
reason (or None) for tests that need to decide at run time.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import pytest


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def gpu_missing() -> str | None:
    """Why torch cannot use a CUDA GPU here, or None when it can."""
    if not _installed("torch"):
        return "no CUDA GPU check possible: torch is not installed (pip install 'edgeseg[train]')"
    import torch

    if torch.version.cuda is None:
        return f"no CUDA GPU: torch {torch.__version__} is a CPU build (install a CUDA build on an NVIDIA GPU machine)"
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible to torch {torch.__version__} (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    return None


def trt_missing() -> str | None:
    """Why the native TensorRT path cannot run here, or None when it can."""
    if not _installed("tensorrt"):
        return "TensorRT not installed: pip install 'edgeseg[trt]' on an NVIDIA GPU machine"
    if not (_installed("cuda.bindings") or _installed("cuda.cudart")):
        return "cuda-python not installed (the TensorRT backend's GPU memory): pip install cuda-python"
    return gpu_missing()


def ort_gpu_missing(provider: str = "CUDAExecutionProvider") -> str | None:
    """Why ONNX Runtime cannot offer `provider` here, or None when it lists it (and a GPU is visible)."""
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no {provider}: "
                "pip install 'edgeseg[gpu]' (onnxruntime-gpu) on an NVIDIA GPU machine")
    return gpu_missing()


def openvino_missing() -> str | None:
    if not _installed("openvino"):
        return "OpenVINO not installed: pip install 'edgeseg[openvino]'"
    return None


def _marks(category: pytest.MarkDecorator, reason: str | None) -> list[pytest.MarkDecorator]:
    return [category, pytest.mark.skipif(reason is not None, reason=reason or "")]


def _mark(category: pytest.MarkDecorator, reason: str | None) -> Callable:
    def decorate(obj: Callable) -> Callable:
        for mark in _marks(category, reason):
            obj = mark(obj)
        return obj

    return decorate


def requires_gpu() -> Callable:
    return _mark(pytest.mark.gpu, gpu_missing())


def requires_trt() -> Callable:
    return _mark(pytest.mark.trt, trt_missing())


def requires_ort_gpu(provider: str = "CUDAExecutionProvider") -> Callable:
    return _mark(pytest.mark.gpu, ort_gpu_missing(provider))


def requires_openvino() -> Callable:
    return _mark(pytest.mark.openvino, openvino_missing())


def openvino_marks() -> list[pytest.MarkDecorator]:
    """For `pytest.param(..., marks=openvino_marks())`."""
    return _marks(pytest.mark.openvino, openvino_missing())

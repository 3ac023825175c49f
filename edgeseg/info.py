"""What this machine is and what edgeseg can run on it: versions, devices, backends."""

from __future__ import annotations

import os
import platform
import sys

from edgeseg import __version__
from edgeseg.runtime import gpu_pairs
from edgeseg.runtime.availability import module_version, probe_backends
from edgeseg.runtime.host import cpu_model, memory_gib

LIBRARIES = ("numpy", "scipy", "nibabel", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript",
             "torch", "monai", "einops", "safetensors", "openvino", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python", "typer", "rich")
# optional libraries that are not backends: name -> (what edgeseg does with it, how to get it, what else it needs)
OPTIONAL = {
    "tritonclient": ("edgeseg triton parses the config.pbtxt it writes with Triton's own protobuf",
                     "pip install 'edgeseg[triton]'", ()),
    "ray": ("edgeseg predict --ray segments a cohort on Ray Data actors (a local Ray, or a cluster)",
            "pip install 'edgeseg[ray]'", ("pyarrow", "pandas")),  # ray[data]: Ray Data's blocks are Arrow/pandas
}


def _optional_detail(name: str, hint: str, needs: tuple[str, ...]) -> str:
    if not module_version(name):
        return f"not installed: {hint}"
    missing = [n for n in needs if not module_version(n)]
    return f"installed, but it also needs {', '.join(missing)}: {hint}" if missing else "installed"


def environment_report() -> dict:
    backends = probe_backends()
    return {
        "edgeseg": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": {"model": cpu_model(), "cores": os.cpu_count(), "memory_gib": memory_gib()},
        "libraries": {name: module_version(name) for name in LIBRARIES},
        "backends": [b.to_dict() for b in backends],
        "diagnosis": gpu_pairs.report(),  # GPU libraries that do not pair up: which, which version, what to install
        "optional": [{"name": name, "version": module_version(name), "for": what,
                      "detail": _optional_detail(name, hint, needs)}
                     for name, (what, hint, needs) in OPTIONAL.items()],
    }

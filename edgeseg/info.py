"""What this machine is and what edgeseg can run on it: versions, devices, backends."""

from __future__ import annotations

import os
import platform
import sys

from edgeseg import __version__
from edgeseg.runtime.availability import module_version, probe_backends

LIBRARIES = ("numpy", "scipy", "nibabel", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript",
             "torch", "monai", "einops", "safetensors", "openvino", "tensorrt", "typer", "rich")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def environment_report() -> dict:
    backends = probe_backends()
    return {
        "edgeseg": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": {"model": cpu_model(), "cores": os.cpu_count(), "memory_gib": memory_gib()},
        "libraries": {name: module_version(name) for name in LIBRARIES},
        "backends": [b.to_dict() for b in backends],
    }

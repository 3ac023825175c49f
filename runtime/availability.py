"""Which inference backends can run on this machine, and why the others cannot.

Torch-free: a deployment box answers `edgeseg info` without torch. Nothing here falls back
silently; a backend that is not usable says why and how to install it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import asdict, dataclass

from edgeseg.runtime.errors import BackendUnavailable


@dataclass(frozen=True)
class BackendStatus:
    name: str
    usable: bool
    detail: str  # version and devices when usable, the reason when not
    install_hint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def installed(name: str) -> bool:
    """Whether a module can be found, without importing it; a broken finder counts as not installed."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def module_version(name: str) -> str | None:
    """Version of an installed distribution without importing it (fast, safe for heavy modules)."""
    from importlib import metadata

    for dist in (name, name.replace("_", "-")):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _torch_statuses() -> list[BackendStatus]:
    hint = "pip install torch==2.13.0 (CPU) or CUDA torch from pytorch.org, then pip install 'edgeseg[train]'"
    if not installed("torch"):
        return [
            BackendStatus("torch-cpu", False, "torch is not installed (the runtime does not need it)", hint),
            BackendStatus("torch-cuda", False, "torch is not installed", hint),
        ]
    import torch

    cpu = BackendStatus("torch-cpu", True, f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if torch.version.cuda is None:
        cuda = BackendStatus("torch-cuda", False, f"torch {torch.__version__} is a CPU build",
                             "install a CUDA build of torch (pytorch.org) on a machine with an NVIDIA GPU")
    elif not torch.cuda.is_available():
        cuda = BackendStatus("torch-cuda", False, f"torch built for CUDA {torch.version.cuda} but no CUDA device is visible",
                             "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    else:
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        cuda = BackendStatus("torch-cuda", True, f"CUDA {torch.version.cuda}: {names}")
    return [cpu, cuda]


def _onnxruntime_statuses() -> list[BackendStatus]:
    if not installed("onnxruntime"):
        hint = ("pip install 'edgeseg[cpu]' (ONNX Runtime for the CPU), or 'edgeseg[gpu]' on a CUDA machine "
                "(onnxruntime-gpu: CUDA and TensorRT execution providers, and the CPU)")
        return [BackendStatus(n, False, "onnxruntime is not installed", hint) for n in ("ort-cpu", "ort-cuda", "ort-tensorrt")]
    import onnxruntime as ort

    providers = set(ort.get_available_providers())
    from edgeseg.runtime.gpu_pairs import ORT_GPU_HINT as gpu_hint
    out = [BackendStatus("ort-cpu", "CPUExecutionProvider" in providers, f"onnxruntime {ort.__version__}")]
    for name, provider in (("ort-cuda", "CUDAExecutionProvider"), ("ort-tensorrt", "TensorrtExecutionProvider")):
        if provider in providers:
            # Listed is not the same as loadable: the provider's CUDA libraries are only found at session creation.
            out.append(BackendStatus(name, True, f"{provider} listed by onnxruntime {ort.__version__} "
                                     "(CUDA/cuDNN libraries are checked when a session starts)"))
        else:
            out.append(BackendStatus(name, False, f"{provider} not in this onnxruntime build ({ort.__version__})", gpu_hint))
    return out


def _tensorrt_status() -> BackendStatus:
    hint = "pip install 'edgeseg[trt]' on a machine with an NVIDIA GPU (the wheels fetch NVIDIA's libraries at install time)"
    if not installed("tensorrt"):
        return BackendStatus("tensorrt", False, "tensorrt is not installed", hint)
    try:
        import tensorrt as trt
    except Exception as e:  # a broken install (missing libnvinfer) raises at import
        return BackendStatus("tensorrt", False, f"tensorrt does not import: {type(e).__name__}: {e}", hint)
    return BackendStatus("tensorrt", True, f"TensorRT {trt.__version__} (needs a CUDA GPU at run time)")


def _openvino_status() -> BackendStatus:
    hint = "pip install 'edgeseg[openvino]'"
    if not installed("openvino"):
        return BackendStatus("openvino", False, "openvino is not installed", hint)
    try:
        import openvino as ov

        core = ov.Core()
        devices = ", ".join(core.available_devices)
        version = ov.get_version()
    except Exception as e:
        return BackendStatus("openvino", False, f"openvino does not start: {type(e).__name__}: {e}", hint)
    return BackendStatus("openvino", True, f"OpenVINO {version}: {devices}")


def _with_pairs(statuses: list[BackendStatus]) -> list[BackendStatus]:
    """Mismatched GPU library pairs (runtime.gpu_pairs) named on the backends they break, before first use."""
    from edgeseg.runtime.gpu_pairs import diagnose, gather_facts

    findings = diagnose(gather_facts())
    out = []
    for s in statuses:
        for f in (f for f in findings if s.name in f.affects):
            if f.severity == "error":
                s = BackendStatus(s.name, False, f.problem if s.usable else f"{s.detail}; {f.problem}", f.fix)
            else:  # may run, but not as a matched pair: say so, and how to pair it
                s = BackendStatus(s.name, s.usable, f"{s.detail} (warning: {f.problem}; fix: {f.fix})",
                                  s.install_hint if s.usable else f.fix)
        out.append(s)
    return out


def probe_backends() -> list[BackendStatus]:
    """Every backend edgeseg knows, usable or not, in a stable order."""
    return _with_pairs([*_torch_statuses(), *_onnxruntime_statuses(), _openvino_status(), _tensorrt_status()])


def status(name: str) -> BackendStatus:
    """The probe of one backend by its status name ("ort-cuda", ...): only that one (probing torch is slow)."""
    if name.startswith("ort-"):
        found = next(s for s in _onnxruntime_statuses() if s.name == name)
    elif name == "openvino":
        found = _openvino_status()
    elif name == "tensorrt":
        found = _tensorrt_status()
    else:
        found = next(s for s in _torch_statuses() if s.name == name)
    return _with_pairs([found])[0]


def require(name: str, title: str) -> None:
    """Refuse, with the probe's reason and install hint, a backend that cannot run here."""
    found = status(name)
    if not found.usable:
        raise BackendUnavailable(f"{title} cannot run here: {found.detail}", fix=found.install_hint or None)

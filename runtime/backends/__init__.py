"""Inference backends: one registry, explicit choices, no silent fallback.

``open_backend(name, model, ...)`` builds one backend by name and refuses, with the install hint,
when it cannot run here (``BackendUnavailable``). ``choose_backend(candidates)`` is the explicit
"auto" mode: it tries candidates in the fixed preference order below, skips the unusable ones, and
returns the backend that loaded together with a reason that names what ran and why every faster
candidate was skipped, so the CLI can print it.

Preference order (fastest first, as measured for this model; see design.md):

1. ``tensorrt-fp16``      native TensorRT engine built from the mixed fp16 graph
2. ``ort-tensorrt-int8``  ONNX Runtime, TensorRT execution provider, QDQ int8 graph (explicit quantization)
3. ``ort-tensorrt-fp16``  ONNX Runtime, TensorRT execution provider, mixed fp16 graph
4. ``ort-cuda``           ONNX Runtime, CUDA execution provider
5. ``torch-cuda``         PyTorch on the GPU (when torch and a CUDA build are present)
6. ``openvino-int8``      OpenVINO CPU, NNCF's int8 IR
7. ``openvino-bf16``      OpenVINO CPU in bf16, only when the caller's parity predicate accepts it
8. ``openvino-fp32``      OpenVINO CPU in f32
9. ``ort-cpu``            ONNX Runtime CPU
10. ``torch-cpu``         PyTorch eager on the CPU

The int8 candidates are offered only when int8 is asked for (a quantized graph is a different model).

Which backend runs on which device in which precision, and why the other combinations are refused,
is the one table of `edgeseg.runtime.support`; `open_backend` consults it before loading anything.
Torch-free: backend modules (and their heavy libraries) are imported only when opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeseg.runtime.availability import require
from edgeseg.runtime.backends.base import Backend, BackendInfo, TensorSpec, check_batch
from edgeseg.runtime.errors import BackendUnavailable, EdgesegError, InputError
from edgeseg.runtime.support import DEVICES, PROBES, BackendName, check_combination

__all__ = [
    "PREFERENCE", "Backend", "BackendInfo", "Candidate", "TensorSpec", "check_batch",
    "choose_backend", "default_candidates", "open_backend",
]

PREFERENCE = ("tensorrt-fp16", "ort-tensorrt-int8", "ort-tensorrt-fp16", "ort-cuda", "torch-cuda", "openvino-int8",
              "openvino-bf16", "openvino-fp32", "ort-cpu", "torch-cpu")


def _model_path(model: Any, suffixes: tuple[str, ...], backend: str) -> Path:
    if not isinstance(model, (str, Path)):
        raise InputError(f"backend {backend!r} takes a path to a {' or '.join(suffixes)} file, got {type(model).__name__}",
                         fix="pass the file exported by `edgeseg export`")
    path = Path(model)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"backend {backend!r} takes a {' or '.join(suffixes)} file", path=path,
                         fix="onnx graphs go to 'ort' or 'openvino', .plan engines to 'tensorrt'")
    if not path.is_file():
        raise InputError("does not exist", path=path, fix="check the path, or export the model first (`edgeseg export`)")
    return path


def open_backend(name: str | BackendName, model: Any, *, precision: str | None = None, device: str | None = None,
                 threads: int | None = None, cache_dir: str | Path | None = None, **options: Any) -> Backend:
    """Build (not yet activate) the backend `name` for `model`.

    `model` is an ONNX path ("ort", "openvino"), a TensorRT `.plan` path ("tensorrt") or a torch
    `nn.Module` ("torch"). `precision` None means the backend's default: what the artifact holds for
    "ort" and "tensorrt" (fp32, mixed fp16 or int8 QDQ graph/engine), fp32 for "openvino" and "torch"; an
    explicit precision is checked against the artifact and refused when it cannot be honoured.
    Raises InputError for a wrong name/device/precision/path (the support table's reason),
    BackendUnavailable (with the install hint) when the backend's library or device is missing here.
    Never falls back to another backend.
    """
    key, dev, index, prec = check_combination(name, device, precision)
    precision = None if prec is None else prec.value
    probe = PROBES[(key, dev)]
    if index is not None and key is not BackendName.TORCH:
        options.setdefault("device_id", index)

    if key is BackendName.ORT:
        path = _model_path(model, (".onnx",), key.value)
        require(probe.name, probe.title)
        from edgeseg.runtime.backends.ort import OrtBackend

        return OrtBackend(path, precision=precision, device=dev.value, threads=threads, cache_dir=cache_dir, **options)
    if key is BackendName.OPENVINO:
        path = _model_path(model, (".onnx", ".xml"), key.value)
        require(probe.name, probe.title)
        from edgeseg.runtime.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(path, precision=precision or "fp32", threads=threads, cache_dir=cache_dir, **options)
    if key is BackendName.TENSORRT:
        path = _model_path(model, (".plan", ".engine"), key.value)
        require(probe.name, probe.title)
        from edgeseg.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(path, precision=precision, **options)
    require(probe.name, probe.title)
    import torch.nn

    if not isinstance(model, torch.nn.Module):
        raise InputError(f"backend 'torch' takes a torch nn.Module, got {type(model).__name__}",
                         fix="pass the trunk module (edgeseg.model.swinunetr.split), or use 'ort' for an ONNX file")
    from edgeseg.runtime.backends.torch import TorchBackend

    return TorchBackend(model, precision=precision or "fp32", device=dev.value if index is None else f"{dev}:{index}",
                        threads=threads, **options)


# --- explicit auto mode --------------------------------------------------------------------------
Predicate = Callable[[Backend], "bool | tuple[bool, str]"]


@dataclass
class Candidate:
    """One way to run the model, for `choose_backend`: what `open_backend` gets, plus an optional check.

    `accept(backend)` runs after activation (e.g. a parity test against fp32); returning False, or
    (False, why), rejects the candidate and `choose_backend` moves on, saying why.
    """

    backend: str
    model: Any
    precision: str | None = None
    device: str | None = None
    options: dict = field(default_factory=dict)
    accept: Predicate | None = None

    @property
    def label(self) -> str:
        device = str(self.device or DEVICES.get(self.backend, ("cpu",))[0]).split(":")[0]
        if self.backend == "ort":
            return f"ort-tensorrt-{self.precision or 'fp16'}" if device == "tensorrt" else f"ort-{device}"
        if self.backend == "openvino":
            return f"openvino-{self.precision or 'fp32'}"
        if self.backend == "tensorrt":
            return "tensorrt-fp16"
        return f"torch-{device}"


def _rank(candidate: Candidate) -> int:
    return PREFERENCE.index(candidate.label) if candidate.label in PREFERENCE else len(PREFERENCE)


def default_candidates(*, plan: str | Path | None = None, onnx_fp32: str | Path | None = None,
                       onnx_fp16: str | Path | None = None, module: Any = None, bf16_parity_ok: Predicate | None = None,
                       threads: int | None = None, cache_dir: str | Path | None = None,
                       manifest_key: dict | None = None) -> list[Candidate]:
    """Every candidate the given artifacts allow, in preference order.

    openvino-bf16 is offered only when `bf16_parity_ok` is given (it runs on the opened backend and
    must accept it); without a predicate bf16 is never picked automatically.
    """
    cands: list[Candidate] = []
    if plan is not None:
        cands.append(Candidate("tensorrt", plan, precision="fp16",
                               options={"manifest_key": manifest_key} if manifest_key else {}))
    if onnx_fp16 is not None:
        cands.append(Candidate("ort", onnx_fp16, precision="fp16", device="tensorrt", options={"cache_dir": cache_dir}))
    gpu_graph = onnx_fp16 if onnx_fp16 is not None else onnx_fp32
    if gpu_graph is not None:
        cands.append(Candidate("ort", gpu_graph, device="cuda"))
    if module is not None:
        cands.append(Candidate("torch", module, device="cuda"))
    if onnx_fp32 is not None:
        if bf16_parity_ok is not None:
            cands.append(Candidate("openvino", onnx_fp32, precision="bf16", options={"threads": threads, "cache_dir": cache_dir},
                                   accept=bf16_parity_ok))
        cands.append(Candidate("openvino", onnx_fp32, precision="fp32", options={"threads": threads, "cache_dir": cache_dir}))
        cands.append(Candidate("ort", onnx_fp32, device="cpu", options={"threads": threads}))
    if module is not None:
        cands.append(Candidate("torch", module, device="cpu", options={"threads": threads}))
    return sorted(cands, key=_rank)


def choose_backend(candidates: list[Candidate]) -> tuple[Backend, str]:
    """Activate the first usable candidate in `PREFERENCE` order; return it (active: the caller
    deactivates it) and why it was chosen.

    The reason reads e.g. ``"openvino-fp32 (fp32 on CPU (...)); skipped: tensorrt-fp16: TensorRT cannot
    run here: tensorrt is not installed; ..."``. Raises BackendUnavailable listing every reason when
    none can run.
    """
    if not candidates:
        raise InputError("no backend candidates: nothing to run", fix="export the model first (`edgeseg export`)")
    skipped: list[str] = []
    for cand in sorted(candidates, key=_rank):
        opts = {k: v for k, v in cand.options.items() if v is not None}
        try:
            backend = open_backend(cand.backend, cand.model, precision=cand.precision, device=cand.device, **opts)
            backend.activate()
        except EdgesegError as e:  # BackendUnavailable, InputError (e.g. an engine built for another GPU)
            skipped.append(f"{cand.label}: {e.problem}")
            continue
        if cand.accept is not None:
            try:
                verdict = cand.accept(backend)
            except Exception as e:  # a failing check rejects the candidate, and says so
                verdict = (False, f"the check raised {type(e).__name__}: {e}")
            ok, why = verdict if isinstance(verdict, tuple) else (bool(verdict), "")
            if not ok:
                backend.deactivate()
                skipped.append(f"{cand.label}: rejected by the parity check{': ' + why if why else ''}")
                continue
        info = backend.describe()
        reason = f"{cand.label} ({info.precision} on {info.device})"
        if skipped:
            reason += "; skipped: " + "; ".join(skipped)
        return backend, reason
    raise BackendUnavailable("no candidate backend can run here: " + "; ".join(skipped),
                             fix="install one of the backends named above (see `edgeseg info`)")

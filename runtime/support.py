"""What runs where: the backends, devices and precisions edgeseg knows, and the one table of the
combinations it runs (with the reason and the fix for those it does not).

Every layer asks this module and nothing else: the CLI's choices are these enums, `open_backend`
refuses an unsupported combination through `check_combination` before it loads anything, and opening
an artifact folder reads from the table which of the folder's files a combination runs
(`Combination.runs`). Whether a supported combination can run on *this* machine (library installed,
GPU visible) is the other question, answered by `edgeseg.runtime.availability` through the probe each
backend-and-device pair names in `PROBES`.

Import-light (no numpy): the CLI builds its options from these enums when it starts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import Enum

from edgeseg.runtime.errors import InputError


class _Named(str, Enum):
    """A str enum that prints as its value (in messages, f-strings and JSON alike)."""

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__  # equal to its value, so hashed as its value: a member and its text are one dict key


class BackendName(_Named):
    """An inference backend of `edgeseg.runtime.backends`."""

    ORT = "ort"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    TORCH = "torch"


# What a user may ask for: a backend by name, or "auto" (`choose_backend` picks, and says why).
BackendChoice = _Named("BackendChoice", [("AUTO", "auto"), *((b.name, b.value) for b in BackendName)])


class Device(_Named):
    """Where a backend runs. TENSORRT is ONNX Runtime's TensorRT execution provider (on the GPU)."""

    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"

    @property
    def is_gpu(self) -> bool:
        return self is not Device.CPU


class Precision(_Named):
    """The precision a backend runs (fp16 on ONNX Runtime and TensorRT: the mixed fp16 graph; int8: the
    post-training quantized graphs, QDQ ONNX or NNCF's OpenVINO IR)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


# The graphs `edgeseg export` and `edgeseg fuse` can write (fp16: the mixed graph; int8: QDQ ONNX + OpenVINO
# IR): not the same list as `Precision`, which also holds what a backend makes of a graph (bf16 is
# OpenVINO's or torch's, from fp32). DEFAULT_GRAPH_PRECISIONS: what they write when not told (int8 needs a
# calibration and NNCF, so it is asked for).
GRAPH_PRECISIONS: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
DEFAULT_GRAPH_PRECISIONS: tuple[Precision, ...] = (Precision.FP32, Precision.FP16)


class Source(_Named):
    """The file of an artifact folder that a combination runs."""

    FP32_GRAPH = "fp32"  # trunk.fp32.onnx / fused.fp32.onnx
    FP16_GRAPH = "fp16"  # the mixed fp16 graph
    INT8_GRAPH = "int8"  # trunk.int8.onnx / fused.int8.onnx: the QDQ graph (ONNX Runtime, TensorRT)
    INT8_IR = "int8-ir"  # trunk.int8.xml / fused.int8.xml: NNCF's OpenVINO IR
    ENGINE = "engine"  # a TensorRT plan (built from the mixed fp16 graph)
    CHECKPOINT = "checkpoint"  # the torch module, rebuilt from the checkpoint a trunk's manifest names

    @property
    def graph_precision(self) -> str:
        """The precision of the graph this source is (what `Trunk.graph_precision` records)."""
        if self in (Source.INT8_GRAPH, Source.INT8_IR):
            return "int8"
        return "fp16" if self in (Source.FP16_GRAPH, Source.ENGINE) else "fp32"


@dataclass(frozen=True)
class Refusal:
    """Why edgeseg does not run something, and what to do instead: an InputError waiting to be raised."""

    problem: str
    fix: str

    def error(self, **kw) -> InputError:
        return InputError(self.problem, fix=self.fix, **kw)


@dataclass(frozen=True)
class Combination:
    """One backend on one device in one precision: supported (`refused` None) or not, and why."""

    backend: BackendName
    device: Device
    precision: Precision
    runs: Source | Refusal  # what of an artifact folder it runs; a Refusal when no artifact edgeseg writes holds it
    refused: Refusal | None = None


@dataclass(frozen=True)
class Probe:
    """The availability probe for one backend on one device (`availability.status`), and its name in messages."""

    name: str  # "ort-cuda", ...: a `BackendStatus.name`
    title: str  # "ONNX Runtime on 'cuda'": "<title> cannot run here: <the probe's reason>"


PROBES: dict[tuple[BackendName, Device], Probe] = {
    (BackendName.ORT, Device.CPU): Probe("ort-cpu", "ONNX Runtime on 'cpu'"),
    (BackendName.ORT, Device.CUDA): Probe("ort-cuda", "ONNX Runtime on 'cuda'"),
    (BackendName.ORT, Device.TENSORRT): Probe("ort-tensorrt", "ONNX Runtime on 'tensorrt'"),
    (BackendName.OPENVINO, Device.CPU): Probe("openvino", "OpenVINO"),
    (BackendName.TENSORRT, Device.CUDA): Probe("tensorrt", "TensorRT"),
    (BackendName.TORCH, Device.CPU): Probe("torch-cpu", "PyTorch on 'cpu'"),
    (BackendName.TORCH, Device.CUDA): Probe("torch-cuda", "PyTorch on 'cuda'"),
}
DEVICES: dict[BackendName, tuple[Device, ...]] = {
    b: tuple(d for (pb, d) in PROBES if pb is b) for b in BackendName
}  # first: the backend's default device
DEFAULT_PRECISION = {BackendName.ORT: Precision.FP32, BackendName.OPENVINO: Precision.FP32,
                     BackendName.TENSORRT: Precision.FP16, BackendName.TORCH: Precision.FP32}  # of an artifact folder

_ORT_NO_BF16 = Refusal("ONNX Runtime runs the graph's own precision (fp32 or mixed fp16), not bf16",
                       "use precision fp32 with the fp32 graph or fp16 with the fp16 graph "
                       "(bf16 on CPU: the 'openvino' backend)")
_OPENVINO_NO_FP16 = Refusal("OpenVINO's CPU plugin does not run fp16 on this kind of CPU: an f16 hint is dropped and "
                            "it runs its default (bf16 on bf16-capable CPUs, else f32)",
                            "use precision 'fp32', or 'bf16' on a CPU with AVX-512 BF16/AMX (check its parity first); "
                            "--backend ort runs the fp16 graph")
_TENSORRT_NO_BF16 = Refusal("a TensorRT engine runs the precision it was built with (fp16 or fp32), not bf16",
                            "build the engine from the graph of the precision you want")
_TENSORRT_ONLY_FP16 = Refusal("the TensorRT engines edgeseg builds run the mixed fp16 graph",
                              "use precision fp16 (or none) with --backend tensorrt, or another backend for fp32")
_TENSORRT_NO_INT8 = Refusal("the TensorRT engines edgeseg builds run the mixed fp16 graph; int8 on TensorRT is the "
                            "QDQ graph as explicit quantization through ONNX Runtime's TensorRT execution provider",
                            "use --backend ort --device tensorrt --precision int8")
_TORCH_NO_INT8 = Refusal("the torch backend runs the checkpoint in fp32/bf16/fp16; int8 is a quantized graph",
                         "use --backend ort or openvino with precision int8 (edgeseg export --precision int8)")
_TORCH_FP16_CPU = Refusal("fp16 autocast runs on CUDA only",
                          "use precision='bf16' (or 'fp32') on the CPU, or device='cuda'")


def _row(backend: BackendName, device: Device, precision: Precision, runs: Source | Refusal,
         refused: Refusal | None = None) -> Combination:
    return Combination(backend, device, precision, runs, refused)


_B, _D, _P, _S = BackendName, Device, Precision, Source
TABLE: tuple[Combination, ...] = (
    *(row for d in DEVICES[_B.ORT] for row in (
        _row(_B.ORT, d, _P.FP32, _S.FP32_GRAPH),
        _row(_B.ORT, d, _P.FP16, _S.FP16_GRAPH),  # on the CPU: computed in fp32 (no fp16 kernels on x86)
        _row(_B.ORT, d, _P.BF16, _ORT_NO_BF16, _ORT_NO_BF16),
        # the QDQ graph: int8 kernels on the CPU; explicit quantization on the TensorRT EP; the CUDA EP runs it
        # as ONNX Runtime places its Q/DQ nodes
        _row(_B.ORT, d, _P.INT8, _S.INT8_GRAPH))),
    _row(_B.OPENVINO, _D.CPU, _P.FP32, _S.FP32_GRAPH),
    # NNCF's IR, not the QDQ graph: on the shipped model OpenVINO's reading of the symmetric QDQ graph flips
    # 0.93% of the voxels (worst parity window) against 0.07% for the NNCF IR (export/int8.py has the numbers)
    _row(_B.OPENVINO, _D.CPU, _P.INT8, _S.INT8_IR),
    _row(_B.OPENVINO, _D.CPU, _P.BF16, _S.FP32_GRAPH),  # a bf16 hint on the fp32 graph
    _row(_B.OPENVINO, _D.CPU, _P.FP16, _OPENVINO_NO_FP16, _OPENVINO_NO_FP16),
    _row(_B.TENSORRT, _D.CUDA, _P.FP16, _S.ENGINE),
    _row(_B.TENSORRT, _D.CUDA, _P.FP32, _TENSORRT_ONLY_FP16),  # an fp32 plan runs, but no artifact holds one
    _row(_B.TENSORRT, _D.CUDA, _P.BF16, _TENSORRT_NO_BF16, _TENSORRT_NO_BF16),
    _row(_B.TENSORRT, _D.CUDA, _P.INT8, _TENSORRT_NO_INT8, _TENSORRT_NO_INT8),
    _row(_B.TORCH, _D.CPU, _P.FP32, _S.CHECKPOINT),
    _row(_B.TORCH, _D.CPU, _P.BF16, _S.CHECKPOINT),  # bf16 autocast
    _row(_B.TORCH, _D.CPU, _P.FP16, _TORCH_FP16_CPU, _TORCH_FP16_CPU),
    *(_row(_B.TORCH, _D.CUDA, p, _S.CHECKPOINT) for p in Precision if p is not _P.INT8),
    *(_row(_B.TORCH, d, _P.INT8, _TORCH_NO_INT8, _TORCH_NO_INT8) for d in DEVICES[_B.TORCH]),
)
_BY_KEY = {(c.backend, c.device, c.precision): c for c in TABLE}
assert len(_BY_KEY) == len(TABLE) == sum(len(v) for v in DEVICES.values()) * len(Precision)  # every cell, once


# --- parsing what a user or a caller wrote -----------------------------------------------------------
def _closest(text: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(text.lower(), choices, n=1, cutoff=0.4)
    return f"; did you mean {match[0]!r}?" if match else ""


def _parse(enum: type[_Named], value, what: str) -> _Named:
    if isinstance(value, enum):
        return value
    text = str(getattr(value, "value", value)).strip().lower()
    try:
        return enum(text)
    except ValueError:
        choices = [m.value for m in enum]
        raise InputError(f"unknown {what} {value!r}; choices: {', '.join(choices)}{_closest(text, choices)}",
                         fix=f"use one of {', '.join(choices)}") from None


def parse_backend(value) -> BackendName:
    """A backend by name (case-insensitive); "auto" is not one (see `parse_choice`)."""
    return _parse(BackendName, value, "backend")  # type: ignore[return-value]


def parse_choice(value) -> BackendChoice:
    """What `open_trunk` / `open_engine` take: "auto" or a backend name."""
    return _parse(BackendChoice, value, "backend")  # type: ignore[return-value]


def parse_precision(value) -> Precision | None:
    return None if value is None else _parse(Precision, value, "precision")  # type: ignore[return-value]


def parse_device(backend: BackendName, value) -> tuple[Device, int | None]:
    """(device, GPU index or None) for `backend`: None means its default device; "cuda:1" names a GPU."""
    if value is None:
        return DEVICES[backend][0], None
    text = str(getattr(value, "value", value)).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in {d.value for d in DEVICES[backend]} or (index and not index.isdigit()):
        devices = DEVICES[backend]
        raise InputError(f"backend {backend.value!r} runs on {', '.join(d.value for d in devices)}, not {text!r}",
                         fix=f"pass device={devices[0].value!r}" + (" or pick another backend" if len(devices) == 1 else ""))
    return Device(kind), (int(index) if index else None)


def check_graph_precisions(precisions) -> tuple[str, ...]:
    """The graphs `edgeseg export` / `edgeseg fuse` are asked to write, once each in the order given."""
    chosen = tuple(dict.fromkeys(str(p) for p in precisions))
    names = [p.value for p in GRAPH_PRECISIONS]
    if not chosen or any(p not in names for p in chosen):
        raise InputError(f"--precision {','.join(chosen) or '(none)'}: choose from {', '.join(names)}",
                         fix="e.g. --precision fp32,fp16 (add int8 for the quantized graphs)")
    return chosen


# --- the one check ----------------------------------------------------------------------------------
def combination(backend: BackendName, device: Device, precision: Precision) -> Combination:
    """The supported combination, or the table's refusal (InputError with the reason and the fix)."""
    row = _BY_KEY[(backend, device, precision)]
    if row.refused is not None:
        raise row.refused.error()
    return row


def check_combination(backend, device=None, precision=None) -> tuple[BackendName, Device, int | None, Precision | None]:
    """Parse and check what a caller asked for: (backend, device, GPU index, precision or None).

    precision None is the backend's default (the graph's or engine's own for ort and tensorrt), which
    every device of the backend runs; an explicit precision is looked up in the table.
    """
    name = parse_backend(backend)
    prec = parse_precision(precision)
    dev, index = parse_device(name, device)
    if prec is not None:
        combination(name, dev, prec)
    return name, dev, index, prec

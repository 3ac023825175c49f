"""The one contract every inference backend meets.

Build separately from run: constructing a backend only records what to load. `activate()` loads
the graph or engine (and touches the GPU, if any); `predict(batch)` refuses to run a backend that is
not active (as Polygraphy's runners do: loading is the caller's decision, made once, not a side
effect of the first call), checks the input once, here, against the input's spec (batch range
included), then calls the backend's `_predict`. Precision and device that actually run are reported
by `describe()` so every caller can print and record them.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import numpy as np

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.support import Device


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name, shape with None for the dynamic batch, and
    the batch sizes the backend was built for (min, max; None: any), e.g. a TensorRT profile."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    batch_range: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.batch_range is not None:
            out["batch_range"] = list(self.batch_range)
        return out


@dataclass
class BackendInfo:
    """What ran: recorded in every report and manifest."""

    backend: str  # e.g. "ort", "openvino", "tensorrt", "torch"
    precision: str  # the precision that runs, not the one asked for
    device: str  # e.g. "CPU (AMD EPYC, 2 threads)", "NVIDIA H100 80GB HBM3"
    detail: dict = field(default_factory=dict)  # providers, hints, versions, compile options
    load_seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Backend(ABC):
    """A loaded graph that maps a batch of windows (N, C, D, H, W) to its outputs."""

    name: str = "?"
    device: Device = Device.CPU  # where it runs: set by each backend from what it was opened with

    def __init__(self) -> None:
        self._active = False
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self.info: BackendInfo | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> "Backend":
        if not self._active:
            t0 = time.perf_counter()
            self._activate()
            self._active = True
            if self.info is not None:
                self.info.load_seconds = time.perf_counter() - t0
        return self

    def deactivate(self) -> None:
        if self._active:
            self._deactivate()
            self._active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # --- inference -------------------------------------------------------------------------------
    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run one batch; returns every graph output as float32 numpy arrays, in graph order."""
        if not self._active:
            raise RuntimeError(f"backend {self.name} is not active: activate() it (or use it in a with block) "
                               "before predict()")
        check_batch(batch, self.inputs[0])
        return tuple(np.asarray(o, dtype=np.float32) for o in self._predict(np.ascontiguousarray(batch)))

    def describe(self) -> BackendInfo:
        if self.info is None:
            raise RuntimeError(f"backend {self.name} reports what ran only after activate()")
        return self.info

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        pass

    @abstractmethod
    def _predict(self, batch: np.ndarray) -> tuple[np.ndarray, ...]: ...


def check_batch(batch: np.ndarray, spec: TensorSpec) -> None:
    """Name, dtype and shape of the input, checked once for every backend."""
    if not isinstance(batch, np.ndarray):
        raise InputError(f"input {spec.name!r} must be a numpy array, got {type(batch).__name__}")
    if batch.dtype != np.dtype(spec.dtype):
        raise InputError(f"input {spec.name!r} has dtype {batch.dtype}, the graph takes {spec.dtype}",
                         fix=f"cast the batch with .astype(np.{spec.dtype})")
    if batch.ndim != len(spec.shape) or any(s is not None and s != b for s, b in zip(spec.shape, batch.shape)):
        want = tuple("N" if s is None else s for s in spec.shape)
        raise InputError(f"input {spec.name!r} has shape {batch.shape}, the graph takes {want}",
                         fix="the spatial window is fixed at export time; only the batch size may vary")
    if spec.batch_range is not None and not spec.batch_range[0] <= batch.shape[0] <= spec.batch_range[1]:
        lo, hi = spec.batch_range
        raise InputError(f"batch of {batch.shape[0]} is outside {lo}..{hi}, the batch sizes the backend was built for",
                         fix="split the batch, or build the engine (or open the backend) with a larger maximum batch")

"""A real `Engine` (the runtime's class, its sliding window and checks) over a stand-in backend whose
answer is known: organ k's probability is 1 where the windowed CT is above THRESHOLDS[k], else 0.

No ONNX, no torch: used by the fault tests, and importable from a subprocess (run from the repo root).
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
from edgeseg.runtime.backends.base import Backend, BackendInfo, TensorSpec
from edgeseg.runtime.engine import Engine
from edgeseg.runtime.preprocess import PreprocessSpec

SPEC = PreprocessSpec(window=(64, 64, 64), spacing=(5.0, 5.0, 5.0))
THRESHOLDS = (0.5, 0.8)


class StandInBackend(Backend):
    name = "stand-in"

    def __init__(self, organs, window, *, delay: float = 0.0, fail: BaseException | None = None,
                 graph_window=None):
        super().__init__()
        self.n = len(organs)
        self.delay, self.fail, self.calls = delay, fail, 0
        gw = tuple(graph_window or window)
        self.inputs = (TensorSpec("image", "float32", (None, 1, *gw)),)
        self.outputs = tuple(TensorSpec(f"prob_{o}", "float32", (None, 1, *gw)) for o in organs)

    def _activate(self) -> None:
        self.info = BackendInfo("stand-in", "fp32", "cpu")

    def _predict(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self.delay:
            time.sleep(self.delay)
        outs = tuple(np.empty(batch.shape, np.float32) for _ in range(self.n))  # as a runtime returns its outputs
        for k, o in enumerate(outs):
            np.greater(batch, THRESHOLDS[k], out=o)
        return outs


def make_engine(organs=("liver",), spec: PreprocessSpec = SPEC, **backend_kw) -> Engine:
    manifest = {
        "organs": list(organs), "io": {"input": "image", "outputs": [f"prob_{o}" for o in organs]},
        "preprocess": spec.to_dict(), "window": list(spec.window), "cut": "decoder1",
        "export_spec": {"max_batch": 4}, "model_spec": {"in_channels": 1}, "graphs": {},
    }
    return Engine(Path("standin-engine"), manifest, StandInBackend(organs, spec.window, **backend_kw), precision="fp32")


def write_ct(path: Path, shape=(12, 10, 8), spacing=(5.0, 5.0, 5.0), *, dtype=np.int16, seed: int = 0,
             n_volumes: int | None = None) -> Path:
    """A small CT: air around a soft-tissue block holding a bright 'organ' (HU 200); 4D when n_volumes is set."""
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1000, np.float64)
    sl = tuple(slice(n // 4, max(n // 4 + 1, 3 * n // 4)) for n in shape)
    data[sl] = 40 + rng.normal(0, 5, size=data[sl].shape)
    inner = tuple(slice(s.start, s.start + max(1, (s.stop - s.start) // 2)) for s in sl)
    data[inner] = 200
    if n_volumes is not None:
        data = np.stack([data + 10 * t for t in range(n_volumes)], axis=-1)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-30.0, -25.0, -20.0)
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path

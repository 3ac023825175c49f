"""Helpers shared by the tests: the tiny model spec, an ONNX Runtime session, a torch-free subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from edgeseg.export import parity
from edgeseg.runtime.preprocess import PreprocessSpec

from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec

# SwinUNETR feature_size 12, depths (2, 1, 1, 1), 64^3 windows: a real architecture, seconds per forward.
TINY = ModelSpec(**TINY_TEST_SPEC, out_channels=3, class_names=("a", "b", "c"), preprocess=PreprocessSpec(window=(64, 64, 64)))


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    """Relative L2 error of `got` against the reference `ref` (the project's parity metric)."""
    return parity.rel_l2(ref, got)


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "monai", "torchvision", "einops"}:
                raise ModuleNotFoundError(f"{name} is blocked: the runtime must not need it")
            return None

    sys.meta_path.insert(0, NoTorch())
    """
)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing torch (or MONAI) fails as if not installed."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


ARTIFACT_WRITERS = ("export", "cache", "fuse")


def run_writer_on_bogus_inputs(writer: str, tmp_path, out) -> None:
    """Call an artifact writer with inputs that do not exist: what it checks first (its output folder and
    lock) is then the only thing that can refuse it."""
    if writer == "export":
        from edgeseg.export.trunk import export_trunk

        export_trunk(tmp_path / "missing.safetensors", out)
    elif writer == "cache":
        from edgeseg.features import build_cache

        build_cache(tmp_path / "no-trunk", tmp_path / "no-data", "liver", out)
    else:
        from edgeseg.export.fuse import fuse

        fuse(tmp_path / "no-trunk", [tmp_path / "no-adapter"], out)

"""Parity: every exported graph must compute what PyTorch fp32 computes, or the export fails.

Inputs: a random window (the numerics), a window of the real CT shipped with edgeseg (what patients
look like to the trunk), and phantom windows. Metrics per input: max abs error and relative L2 of
the features, and the fraction of voxels whose mask flips through the checkpoint's own head (or a
fixed random 1x1x1 head when it has none), because a feature error only matters through a mask.
One tolerance table serves every backend and precision; a miss is an error, never a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.errors import EdgesegError


@dataclass(frozen=True)
class Tolerance:
    rel_l2: float
    mask_flip: float  # fraction of voxels


# (precision, input kind) -> tolerance. Random input is easy to match and shows pure numerics;
# real and phantom CT windows exercise the ranges a scan produces.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("fp32", "random"): Tolerance(rel_l2=1e-4, mask_flip=5e-4),
    ("fp32", "ct"): Tolerance(rel_l2=1e-3, mask_flip=5e-4),
    ("fp16", "random"): Tolerance(rel_l2=1e-2, mask_flip=5e-3),
    ("fp16", "ct"): Tolerance(rel_l2=1e-2, mask_flip=5e-3),
    # bf16 keeps 8 mantissa bits (fp16: 11); measured ~1e-2 rel L2 with OpenVINO on this trunk.
    ("bf16", "random"): Tolerance(rel_l2=3e-2, mask_flip=5e-3),
    ("bf16", "ct"): Tolerance(rel_l2=3e-2, mask_flip=5e-3),
    # fp32 graphs on NVIDIA GPUs (Ampere and later): cuDNN and TensorRT run convolutions and matmuls in
    # TF32 by default (fp16's 10 mantissa bits, fp32's range), so fp32 is held to half the fp16 bound. For
    # the GPU tests of fp32 graphs; not measured yet (no GPU has been lent where this was written).
    ("tf32", "random"): Tolerance(rel_l2=5e-3, mask_flip=5e-3),
    # int8 (post-training quantization, export/int8.py): the bound of 0.5% mask flips. Measured on the
    # shipped model (trained head) over its parity windows and 6 more: QDQ graph on ONNX Runtime rel L2 <= 0.093,
    # flips <= 0.12%; NNCF IR on OpenVINO rel L2 <= 0.086, flips <= 0.07%. rel L2 0.2 leaves room for other
    # checkpoints; the flips are what decide.
    ("int8", "random"): Tolerance(rel_l2=0.2, mask_flip=5e-3),
    ("int8", "ct"): Tolerance(rel_l2=0.2, mask_flip=5e-3),
    # int8 of a model with no trained head (the seeded random-weight benchmark trunks, untrained adapters):
    # a random 1x1x1 head on random features puts most logits near 0, so its masks flip under any error of
    # int8's size (measured 5-10% on a feature-size-12 random trunk whose rel L2 was 0.13-0.19): flips say
    # nothing about int8 there and are recorded, not judged; the features are still held to a rel L2 bound.
    ("int8-untrained", "random"): Tolerance(rel_l2=0.4, mask_flip=1.0),
    ("int8-untrained", "ct"): Tolerance(rel_l2=0.4, mask_flip=1.0),
}


def tolerance_for(precision: str, input_name: str) -> Tolerance:
    kind = "random" if input_name.startswith("random") else "ct"
    return TOLERANCES[(precision, kind)]


class ParityError(EdgesegError):
    """An export or backend does not match PyTorch fp32 within tolerance."""

    exit_code = 1


@dataclass
class ParityCase:
    input: str
    max_abs: float
    rel_l2: float
    mask_flip: float
    tolerance: Tolerance
    passed: bool


@dataclass
class ParityReport:
    artifact: str  # file name of the graph or engine that was checked
    backend: str
    precision: str
    cases: list[ParityCase] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend, "precision": self.precision,
                "passed": self.passed, "cases": [asdict(c) for c in self.cases]}

    def lines(self) -> list[str]:
        out = []
        for c in self.cases:
            mark = "ok " if c.passed else "FAIL"
            out.append(f"{mark} {self.artifact} [{self.backend} {self.precision}] {c.input:>12}: "
                       f"rel L2 {c.rel_l2:.2e} (<= {c.tolerance.rel_l2:.0e}), max abs {c.max_abs:.2e}, "
                       f"mask flips {100 * c.mask_flip:.4f}% (<= {100 * c.tolerance.mask_flip:.2f}%)")
        return out

    def raise_if_failed(self, fix: str) -> None:
        if not self.passed:
            failed = [line for line in self.lines() if line.startswith("FAIL")]
            raise ParityError("parity check failed:\n  " + "\n  ".join(failed), path=self.artifact, fix=fix)


def rel_l2(ref: np.ndarray, got: np.ndarray) -> float:
    ref64, got64 = ref.astype(np.float64, copy=False), got.astype(np.float64, copy=False)
    return float(np.linalg.norm((got64 - ref64).ravel()) / max(np.linalg.norm(ref64.ravel()), 1e-30))


def compare(
    reference: dict[str, Sequence[np.ndarray]],
    got: dict[str, Sequence[np.ndarray]],
    masks: Callable[[Sequence[np.ndarray]], np.ndarray],
    *,
    artifact: str,
    backend: str,
    precision: str,
    tolerance: str | None = None,
) -> ParityReport:
    """Compare outputs input by input; `masks(outputs)` turns trunk outputs into a boolean mask array.

    `tolerance`: the TOLERANCES row to hold it to, when not the precision's own ("int8-untrained")."""
    report = ParityReport(artifact=artifact, backend=backend, precision=precision)
    for name, ref_outs in reference.items():
        outs = got[name]
        if len(outs) != len(ref_outs) or any(a.shape != b.shape for a, b in zip(ref_outs, outs)):
            raise ParityError(f"output shapes {[o.shape for o in outs]} differ from PyTorch's {[o.shape for o in ref_outs]}",
                              path=artifact, fix="re-export the graph from the same checkpoint and cut")
        err = max(rel_l2(r, o) for r, o in zip(ref_outs, outs))
        max_abs = max(float(np.max(np.abs(r.astype(np.float64) - o))) for r, o in zip(ref_outs, outs))
        flips = float(np.mean(masks(ref_outs) != masks(outs)))
        tol = tolerance_for(tolerance or precision, name)
        ok = bool(np.isfinite(err) and err <= tol.rel_l2 and flips <= tol.mask_flip)
        report.cases.append(ParityCase(name, max_abs, err, flips, tol, ok))
    return report

"""An exported trunk folder, opened for inference: manifest checked, graph picked, backend running.

`open_trunk(folder)` reads the trunk's `manifest.json` (written last by `edgeseg export`; its
self-hash and every file's sha256 are checked), picks the graph or engine for the precision asked
for, opens a backend (one by name, or the "auto" choice of `choose_backend`, which says what ran and
why) and returns an `OpenedTrunk`. `OpenedTrunk.features(volume, box)` runs the one sliding window of
`edgeseg.runtime.sliding_window` over a preprocessed volume (or a box of it) and returns the
trunk's outputs: ``(features,)`` for the ``decoder1`` cut, ``(enc0, dec0)`` for ``pre-decoder1``,
``dec0`` at half resolution (windows and regions are aligned to even voxels so the half-resolution
grid nests exactly in the full one).

Torch-free: only the "torch" backend imports torch (it rebuilds the trunk module from the checkpoint
the manifest names, checked against its recorded sha256).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from edgeseg.runtime.artifacts.opened import OpenedArtifact
from edgeseg.runtime.artifacts.trunk import TrunkManifest
from edgeseg.runtime.errors import BackendUnavailable, InputError

__all__ = ["OpenedTrunk", "open_trunk"]


def _torch_module(folder: Path, manifest: TrunkManifest):
    """The trunk as a torch module, rebuilt from the checkpoint the manifest names (checked by sha256)."""
    try:
        from edgeseg.model.checkpoint import load_exported_checkpoint
        from edgeseg.model.swinunetr import split
    except ImportError as e:
        raise BackendUnavailable(f"the torch backend needs torch and MONAI ({e})",
                                 fix="pip install 'edgeseg[train]', or use --backend ort/openvino") from None
    model = load_exported_checkpoint(manifest, folder, needed_for="the torch backend rebuilds the trunk from its checkpoint",
                                      otherwise="use --backend ort/openvino (they run the exported graph)")
    trunk, _ = split(model, manifest.cut)
    return trunk.eval()


class OpenedTrunk(OpenedArtifact):
    """An opened trunk folder: its manifest, preprocessing, cut and an active backend; `features` runs it.

    (Not `edgeseg.model.swinunetr.Trunk`, the torch module the graphs were exported from.) Build with
    `open_trunk`; the constructor (`OpenedArtifact`'s) takes any active-able `Backend`.
    """

    MANIFEST = TrunkManifest
    manifest: TrunkManifest

    @property
    def align(self) -> int:
        return self.manifest.align

    @property
    def feature_size(self) -> int | None:
        return self.manifest.feature_size

    def check_outputs(self) -> None:
        if self.output_names and len(self.backend.outputs) not in (0, len(self.output_names)):
            got = [o.name for o in self.backend.outputs]
            raise InputError(f"the graph has outputs {got}, the manifest lists {list(self.output_names)}",
                             path=self.folder, fix=self.manifest.fix())

    def features(self, volume_chw: np.ndarray, box: Sequence[slice] | None = None, *, overlap: float = 0.25,
                 batch_size: int = 1, progress: Callable[[int, int], None] | None = None,
                 context: int | Sequence[int] | None = None, dtype: Any = np.float16,
                 stats: dict | None = None) -> tuple[np.ndarray, ...]:
        """The trunk's outputs over a preprocessed volume (C, D, H, W), or over `box` of it.

        Whole volume: `sliding_window` (MONAI's plan and Gaussian blend). With `box` (three slices on
        the volume grid): `sliding_window_region`, which runs the box grown by `context` voxels per
        side (default window // 4) and crops back. Outputs are `dtype` (float16 by default, as caches
        store them; float32 on request), accumulated in float32. For ``pre-decoder1`` windows start on
        even voxels (align=2): ``dec0`` covers ``box_at_scale(box, 2)``, box / 2 for an even box.
        """
        from edgeseg.runtime.sliding_window import sliding_window, sliding_window_region

        if not isinstance(volume_chw, np.ndarray) or volume_chw.ndim != 4:
            raise InputError(f"volume of shape {getattr(volume_chw, 'shape', None)} must be (C, D, H, W)",
                             fix="pass the preprocessed image with a channel axis, e.g. prepared.image[None]")
        if volume_chw.shape[0] != self.in_channels:
            raise InputError(f"volume has {volume_chw.shape[0]} channel(s), the trunk takes {self.in_channels}",
                             fix="pass the preprocessed image with one channel axis, e.g. prepared.image[None]")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= self.max_batch:
            raise InputError(f"batch_size {batch_size!r} must be between 1 and the exported maximum {self.max_batch}",
                             fix=f"pass --batch 1..{self.max_batch}, or re-export with a larger --batch")
        volume = np.asarray(volume_chw, dtype=np.float32)
        kw = dict(overlap=overlap, batch_size=batch_size, progress=progress, out_dtype=dtype, align=self.align,
                  stats=stats)
        if box is None:
            return sliding_window(volume, self.window, self.backend.predict, **kw)
        return sliding_window_region(volume, box, self.window, self.backend.predict, context=context, **kw)


    def __repr__(self) -> str:
        return f"<OpenedTrunk {self.folder} cut={self.cut} window={self.window} ran={self.describe()!r}>"


def open_trunk(folder: str | Path, *, backend: str = "auto", precision: str | None = None,
               threads: int | None = None, device: str | None = None,
               cache_dir: str | Path | None = None) -> OpenedTrunk:
    """Open the exported trunk in `folder` on `backend`; the returned `OpenedTrunk` is active (close it, or `with`).

    backend: "auto" (`choose_backend` over every artifact the folder holds, fastest usable first; bf16 is
    never picked automatically), or one of "ort", "openvino", "torch", "tensorrt" (no fallback).
    precision: None: the fp32 graph for a named backend (the engine's own precision for "tensorrt");
    for "auto" any graph the folder holds (the mixed fp16 graph / engine on GPU candidates only, as
    `default_candidates` offers them). "fp32" / "fp16": that graph only (refused, naming what the
    folder has, when it is missing); "bf16": OpenVINO (or torch) in bf16 on the fp32 graph.
    """
    return OpenedTrunk.open(folder, backend=backend, precision=precision, threads=threads, device=device,
                            cache_dir=cache_dir, torch_module=_torch_module)

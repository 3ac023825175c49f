"""A fused engine folder (`edgeseg fuse`), opened for inference: trunk + adapters in one graph.

`open_engine(folder)` reads the engine's `manifest.json` (kind "engine"; self-hash and every file's
sha256 checked), picks the fused graph (fp32 by default) or the TensorRT plan, opens a backend (by
name, or the "auto" choice of `choose_backend`, which says what ran and why) and returns an `Engine`.
`Engine.probabilities(volume)` runs the one sliding window over a preprocessed volume and returns
``(n_organs, D, H, W)`` float32 probabilities, organs in `Engine.organs` order.

Torch-free: there is no torch backend for a fused engine (it would be the trunk and adapters rebuilt,
not the fused graph).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from edgeseg.runtime.artifacts.engine import EngineManifest
from edgeseg.runtime.artifacts.opened import OpenedArtifact
from edgeseg.runtime.errors import InputError

__all__ = ["Engine", "open_engine"]


class Engine(OpenedArtifact):
    """An opened fused engine: manifest, preprocessing, organs and an active backend.

    Build with `open_engine`; the constructor (`OpenedArtifact`'s) takes any active-able `Backend`
    (tests pass stand-ins).
    """

    MANIFEST = EngineManifest
    manifest: EngineManifest

    @property
    def organs(self) -> tuple[str, ...]:
        return self.manifest.organs

    def check_outputs(self) -> None:
        outputs = getattr(self.backend, "outputs", None) or []
        if outputs and [o.name for o in outputs] != list(self.output_names):
            raise InputError(f"the graph has outputs {[o.name for o in outputs]}, the manifest lists "
                             f"{list(self.output_names)}", path=self.folder, fix=self.manifest.fix())

    def check_window(self) -> None:
        """Refuse an engine whose graph takes another window than its manifest says (before any scan is read)."""
        inputs = getattr(self.backend, "inputs", None) or ()
        if not inputs:
            return
        shape = tuple(inputs[0].shape)
        if len(shape) != 5 or any(s is not None and s != w for s, w in zip(shape[2:], self.window)):
            got = tuple("N" if s is None else s for s in shape)
            raise InputError(
                f"its graph takes input {inputs[0].name!r} of shape {got}, but its manifest's window is {self.window} "
                "(the graph was replaced or exported for another spec)", path=self.folder,
                fix=f"fuse the engine again from its trunk and adapters ({EngineManifest.REBUILD})")

    def probabilities(self, volume_chw: np.ndarray, *, overlap: float = 0.25, batch_size: int = 1,
                      progress: Callable[[int, int], None] | None = None, stats: dict | None = None,
                      reuse_blank: bool = True) -> np.ndarray:
        """Per-organ probabilities (n_organs, D, H, W) float32 over a preprocessed volume (C, D, H, W).

        reuse_blank: windows of pure air (every voxel at the HU window's floor, as the padding) all get the
        same input, so the graph runs once for all of them (`sliding_window`'s `reuse_blank`: exact, since
        SwinUNETR has no absolute position); stats["blank"] says how many windows that served.
        """
        from edgeseg.runtime.sliding_window import sliding_window

        if not isinstance(volume_chw, np.ndarray) or volume_chw.ndim != 4:
            raise InputError(f"volume of shape {getattr(volume_chw, 'shape', None)} must be (C, D, H, W)",
                             fix="pass the preprocessed image with a channel axis, e.g. prepared.image[None]")
        if volume_chw.shape[0] != self.in_channels:
            raise InputError(f"volume has {volume_chw.shape[0]} channel(s), the engine takes {self.in_channels}",
                             fix="pass the preprocessed image with one channel axis, e.g. prepared.image[None]")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= self.max_batch:
            raise InputError(f"batch_size {batch_size!r} must be between 1 and the exported maximum {self.max_batch}",
                             fix=f"pass --sw-batch 1..{self.max_batch} (or export and fuse again with a larger --batch)")
        volume = np.asarray(volume_chw, dtype=np.float32)
        outs = sliding_window(volume, self.window, self.backend.predict, overlap=overlap, batch_size=batch_size,
                              progress=progress, out_dtype=np.float32, stats=stats,
                              reuse_blank=reuse_blank)
        if len(outs) != len(self.organs):
            raise InputError(f"the graph returned {len(outs)} outputs for {len(self.organs)} organs",
                             path=self.folder, fix=self.manifest.fix())
        return np.concatenate([np.asarray(o, dtype=np.float32) for o in outs], axis=0)


    def __repr__(self) -> str:
        return f"<Engine {self.folder} organs={list(self.organs)} window={self.window} ran={self.describe()!r}>"


def open_engine(folder: str | Path, *, backend: str = "auto", precision: str | None = None,
                threads: int | None = None, device: str | None = None,
                cache_dir: str | Path | None = None) -> Engine:
    """Open the fused engine in `folder` on `backend`; the returned `Engine` is active (close it, or `with`).

    backend: "auto" (`choose_backend` over every artifact the folder holds, fastest usable first), or one
    of "ort", "openvino", "tensorrt" (no fallback). precision: None: the fp32 graph for a named backend
    (the plan's fp16 for "tensorrt"), any graph for "auto" (fp16 on GPU candidates only); "fp32" /
    "fp16": that graph only; "bf16": OpenVINO in bf16 on the fp32 graph.
    """
    return Engine.open(folder, backend=backend, precision=precision, threads=threads, device=device,
                       cache_dir=cache_dir)

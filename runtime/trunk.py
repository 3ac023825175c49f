"""An exported trunk folder, opened for inference: manifest checked, graph picked, backend running.

`open_trunk(folder)` reads the trunk's `manifest.json` (written last by `edgeseg export`; its
self-hash and every file's sha256 are checked), picks the graph or engine for the precision asked
for, opens a backend (one by name, or the "auto" choice of `choose_backend`, which says what ran and
why) and returns a `Trunk`. `Trunk.features(volume, box)` runs the one sliding window of
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
from edgeseg.runtime.artifact import OpenedArtifact, check_choices, open_on_backend
from edgeseg.runtime.errors import BackendUnavailable, InputError
from edgeseg.runtime.manifest import content_hash, read_manifest, sha256_file
from edgeseg.runtime.preprocess import PreprocessSpec

__all__ = ["REBUILD", "Trunk", "open_trunk", "read_trunk_manifest"]

TRUNK_KIND = "trunk"
REBUILD = "edgeseg export CHECKPOINT --out DIR"
CUT_ALIGN = {"decoder1": 1, "pre-decoder1": 2}  # the coarsest output's downsampling factor


def read_trunk_manifest(folder: str | Path, *, verify_files: bool = True) -> dict:
    """The trunk's manifest, checked (kind, self-hash, files) and sanity-checked for what the runtime reads."""
    folder = Path(folder)
    manifest = read_manifest(folder, TRUNK_KIND, verify_files=verify_files, rebuild=REBUILD)
    path = folder / "manifest.json"
    missing = [k for k in ("cut", "graphs", "preprocess", "io", "model_spec") if k not in manifest]
    if missing:
        raise InputError(f"lacks {', '.join(missing)}: not a trunk manifest this edgeseg can read", path=path,
                         fix=f"re-export the trunk: {REBUILD}")
    if manifest["cut"] not in CUT_ALIGN:
        raise InputError(f"names an unknown cut point {manifest['cut']!r} (this edgeseg knows {', '.join(CUT_ALIGN)})",
                         path=path, fix=f"re-export the trunk with this edgeseg: {REBUILD}")
    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    recorded = manifest.get("preprocess_sha256")
    if recorded is not None and recorded != spec.sha256():
        raise InputError("its preprocessing spec does not match the hash recorded beside it", path=path,
                         fix=f"re-export the trunk: {REBUILD}")
    return manifest


def _torch_module(folder: Path, manifest: dict):
    """The trunk as a torch module, rebuilt from the checkpoint the manifest names (checked by sha256)."""
    ckpt = manifest.get("checkpoint") or {}
    path = Path(ckpt.get("path", ""))
    if not ckpt.get("path") or not path.is_file():
        raise InputError(f"the torch backend rebuilds the trunk from its checkpoint, which is not at {str(path)!r}",
                         path=folder, fix="put the checkpoint the trunk was exported from back at that path, "
                                          "or use --backend ort/openvino (they run the exported graph)")
    if sha256_file(path) != ckpt.get("sha256"):
        raise InputError("the checkpoint differs from the one this trunk was exported from (sha256)", path=path,
                         fix=f"restore the original checkpoint, or re-export the trunk from this one ({REBUILD})")
    try:
        from edgeseg.model.checkpoint import load_checkpoint
        from edgeseg.model.spec import ModelSpec
        from edgeseg.model.swinunetr import split
    except ImportError as e:
        raise BackendUnavailable(f"the torch backend needs torch and MONAI ({e})",
                                 fix="pip install 'edgeseg[train]', or use --backend ort/openvino") from None
    model, _, _ = load_checkpoint(path, ModelSpec.from_dict(manifest["model_spec"]), allow_partial=True)
    trunk, _ = split(model, manifest["cut"])
    return trunk.eval()


class Trunk(OpenedArtifact):
    """An opened trunk: its manifest, preprocessing, cut and an active backend; `features` runs it.

    Build with `open_trunk`. The constructor takes any active-able `Backend` (tests pass stand-ins).
    """

    def __init__(self, folder: str | Path | None, manifest: dict, backend, *, precision: str, reason: str = ""):
        self.folder = None if folder is None else Path(folder)
        self.manifest = manifest
        self.manifest_hash = content_hash(manifest)
        self.cut: str = manifest["cut"]
        self.preprocess = PreprocessSpec.from_dict(manifest["preprocess"])
        self.window: tuple[int, int, int] = tuple(int(w) for w in self.preprocess.window)  # type: ignore[assignment]
        self.output_names: tuple[str, ...] = tuple((manifest.get("io") or {}).get("outputs") or ())
        self.align = CUT_ALIGN[self.cut]
        self.graph_precision = precision  # the graph/engine picked: "fp32" or "fp16"
        self.max_batch = int((manifest.get("export_spec") or {}).get("max_batch") or 1)
        self.in_channels = int((manifest.get("model_spec") or {}).get("in_channels") or 1)
        self.feature_size = (manifest.get("model_spec") or {}).get("feature_size")
        self.backend = backend.activate()
        self.reason = reason
        if self.output_names and len(self.backend.outputs) not in (0, len(self.output_names)):
            got = [o.name for o in self.backend.outputs]
            raise InputError(f"the graph has outputs {got}, the manifest lists {list(self.output_names)}",
                             path=self.folder, fix=f"re-export the trunk: {REBUILD}")


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
        return f"<Trunk {self.folder} cut={self.cut} window={self.window} ran={self.describe()!r}>"


def open_trunk(folder: str | Path, *, backend: str = "auto", precision: str | None = None,
               threads: int | None = None, device: str | None = None,
               cache_dir: str | Path | None = None) -> Trunk:
    """Open the exported trunk in `folder` on `backend`; the returned `Trunk` is active (close it, or `with`).

    backend: "auto" (`choose_backend` over every artifact the folder holds, fastest usable first; bf16 is
    never picked automatically), or one of "ort", "openvino", "torch", "tensorrt" (no fallback).
    precision: None: the fp32 graph for a named backend (the engine's own precision for "tensorrt");
    for "auto" any graph the folder holds (the mixed fp16 graph / engine on GPU candidates only, as
    `default_candidates` offers them). "fp32" / "fp16": that graph only (refused, naming what the
    folder has, when it is missing); "bf16": OpenVINO (or torch) in bf16 on the fp32 graph.
    """
    folder = Path(folder)
    key, precision = check_choices(backend, precision)
    manifest = read_trunk_manifest(folder)

    made, graph, reason = open_on_backend(folder, manifest, key, precision, threads=threads, device=device,
                                          cache_dir=cache_dir, rebuild=REBUILD,
                                          torch_module=lambda: _torch_module(folder, manifest))
    try:
        return Trunk(folder, manifest, made, precision=graph, reason=reason)
    except BaseException:
        made.deactivate()
        raise

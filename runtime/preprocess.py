"""Preprocessing shared by caching, training and inference: NIfTI -> RAS -> spec spacing -> HU window.

One implementation on purpose: features cached at training time and features computed at
inference time must come from the same code path. Every step is recorded in a `GridTransform`
so a mask computed on the model grid goes back onto the scan's own grid exactly.

Grid convention (as MONAI's Orientation + Spacing): reorientation to RAS is an exact permutation
and flip of voxel axes; resampling keeps the first voxel's centre and the direction cosines, and
steps the exact target spacing, so an axis of n voxels at spacing s becomes
floor((n - 1) * s / t) + 1 voxels at spacing t.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.nifti import Scan, load_scan


MAX_WINDOW = 512  # voxels per side: one 512^3 window at feature size 48 is already ~26 GB of float32 features


@dataclass(frozen=True)
class PreprocessSpec:
    """How a CT becomes model input; every public SwinUNETR CT checkpoint of the paper's family uses these."""

    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)  # mm, RAS axes
    hu_min: float = -175.0
    hu_max: float = 250.0  # HU clipped to [hu_min, hu_max], scaled to [0, 1]
    window: tuple[int, int, int] = (96, 96, 96)  # sliding-window size, voxels
    orientation: str = "RAS"

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "window", tuple(int(w) for w in self.window))
        problems = []
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            problems.append(f"spacing {self.spacing} must be three positive numbers (mm)")
        if not self.hu_max > self.hu_min:
            problems.append(f"HU window [{self.hu_min}, {self.hu_max}] is empty")
        if len(self.window) != 3 or any(w % 32 or w < 64 or w > MAX_WINDOW for w in self.window):
            problems.append(
                f"window {self.window} must have three sides, each a multiple of 32 from 64 to {MAX_WINDOW} "
                "(SwinUNETR downsamples 32x; MONAI's deepest InstanceNorm fails below 64; a larger window's "
                "activations would not fit any machine's memory)"
            )
        if self.orientation != "RAS":
            problems.append(f"orientation {self.orientation!r}: only 'RAS' is supported")
        if problems:
            raise InputError("invalid preprocessing spec: " + "; ".join(problems), fix="e.g. window 96,96,96 or 64,64,64")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spacing"], d["window"] = list(self.spacing), list(self.window)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class GridTransform:
    """The way from a scan's own grid to the model grid, and back. JSON-serialisable."""

    input_shape: tuple[int, int, int]
    input_affine: tuple[tuple[float, ...], ...]  # 4x4
    ornt: tuple[tuple[float, float], ...]  # nibabel orientation transform, input axes -> RAS axes
    ras_shape: tuple[int, int, int]
    zoom: tuple[float, float, float]  # model voxel step in RAS-grid voxels (target / source spacing)
    model_shape: tuple[int, int, int]
    model_affine: tuple[tuple[float, ...], ...]  # 4x4

    @property
    def model_spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(np.asarray(self.model_affine)[:3, :3], axis=0))  # type: ignore

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "GridTransform":
        def tup(x):
            return tuple(tup(v) for v in x) if isinstance(x, (list, tuple)) else x

        return cls(**{k: tup(v) for k, v in d.items()})


def plan_grid(shape: tuple[int, int, int], affine: np.ndarray, spec: PreprocessSpec) -> GridTransform:
    """Compute the model grid for a scan of this shape and affine."""
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(affine)  # closest RAS axes, exact for oblique scans too
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    ras_shape = tuple(int(shape[int(ax)]) for ax in np.argsort(ornt[:, 0]))
    ras_spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    zoom = np.asarray(spec.spacing) / ras_spacing
    model_shape = tuple(int(np.floor((n - 1) / z + 1e-6)) + 1 for n, z in zip(ras_shape, zoom))
    model_affine = ras_affine @ np.diag([*zoom, 1.0])
    return GridTransform(
        input_shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        input_affine=tuple(tuple(float(v) for v in row) for row in affine),
        ornt=tuple((float(a), float(b)) for a, b in ornt),
        ras_shape=ras_shape,  # type: ignore[arg-type]
        zoom=tuple(float(z) for z in zoom),  # type: ignore[arg-type]
        model_shape=model_shape,  # type: ignore[arg-type]
        model_affine=tuple(tuple(float(v) for v in row) for row in model_affine),
    )


def to_model_grid(data: np.ndarray, t: GridTransform, *, order: int) -> np.ndarray:
    """Input grid -> model grid: exact reorientation, then resampling (order 1 image, 0 label)."""
    if tuple(data.shape) != t.input_shape:
        raise ValueError(f"data shape {data.shape} != planned input shape {t.input_shape}")
    ras = nib.orientations.apply_orientation(data, np.asarray(t.ornt))
    if np.allclose(t.zoom, 1.0) and ras.shape == t.model_shape:
        return np.ascontiguousarray(ras)
    out_dtype = np.float32 if order > 0 else ras.dtype
    return ndimage.affine_transform(
        ras.astype(np.float32, copy=False) if order > 0 else ras,
        matrix=np.asarray(t.zoom), offset=0.0, output_shape=t.model_shape, order=order, mode="nearest",
        output=out_dtype,
    )


def to_input_grid(data: np.ndarray, t: GridTransform, *, order: int = 1) -> np.ndarray:
    """Model grid -> the scan's own grid (same shape, voxel for voxel); the inverse of `to_model_grid`."""
    if tuple(data.shape) != t.model_shape:
        raise ValueError(f"data shape {data.shape} != model grid shape {t.model_shape}")
    inv_zoom = 1.0 / np.asarray(t.zoom)
    out_dtype = np.float32 if order > 0 else data.dtype
    ras = ndimage.affine_transform(
        data.astype(np.float32, copy=False) if order > 0 else data,
        matrix=inv_zoom, offset=0.0, output_shape=t.ras_shape, order=order, mode="nearest", output=out_dtype,
    )
    back = nib.orientations.apply_orientation(ras, _invert_ornt(np.asarray(t.ornt)))
    assert back.shape == t.input_shape, (back.shape, t.input_shape)
    return np.ascontiguousarray(back)


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    # ornt[i] = (j, flip): input axis i becomes RAS axis j; the inverse sends RAS axis j back to i.
    inv = np.empty_like(ornt)
    for i, (j, flip) in enumerate(ornt):
        inv[int(j)] = (i, flip)
    return inv


def mask_to_input_grid(prob_or_mask: np.ndarray, t: GridTransform, *, threshold: float = 0.5) -> np.ndarray:
    """A probability map or 0/1 mask on the model grid -> uint8 mask on the scan's grid.

    Interpolates linearly then thresholds: smoother than nearest-neighbour when the scan is finer
    than the model grid (e.g. 0.8 mm in-plane vs 1.5 mm).
    """
    return (to_input_grid(prob_or_mask.astype(np.float32, copy=False), t, order=1) >= threshold).astype(np.uint8)


def window_hu(hu: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Clip HU to the spec's window and scale it to [0, 1], float32."""
    out = np.clip(hu, spec.hu_min, spec.hu_max, dtype=np.float32) if hu.dtype == np.float32 else np.clip(
        hu.astype(np.float32), spec.hu_min, spec.hu_max)
    out -= np.float32(spec.hu_min)
    out *= np.float32(1.0 / (spec.hu_max - spec.hu_min))
    return out


@dataclass
class PreparedScan:
    """A scan on the model grid, ready for the sliding window, and the way back to its own grid."""

    image: np.ndarray  # float32 in [0, 1], model grid (RAS, spec spacing)
    transform: GridTransform
    source: Scan = field(repr=False)
    label: np.ndarray | None = None  # on the model grid (nearest neighbour), when a label was given


def preprocess_scan(scan: Scan, spec: PreprocessSpec) -> PreparedScan:
    t = plan_grid(scan.shape, scan.affine, spec)
    return PreparedScan(image=window_hu(to_model_grid(scan.data, t, order=1), spec), transform=t, source=scan)


def preprocess(image: str | Path | Scan, spec: PreprocessSpec, label: str | Path | Scan | None = None) -> PreparedScan:
    """Read (if a path), reorient, resample and window a CT; the label follows on the same grid."""
    scan = image if isinstance(image, Scan) else load_scan(image)
    prepared = preprocess_scan(scan, spec)
    if label is not None:
        lab = label if isinstance(label, Scan) else load_scan(label, label=True)
        check_same_grid(scan, lab)
        prepared.label = to_model_grid(lab.data, prepared.transform, order=0)
    return prepared


def check_same_grid(image: Scan, label: Scan, *, atol_mm: float = 1e-3) -> None:
    """A label must lie on its image's grid: same shape and the same affine (to a micron)."""
    if image.shape != label.shape:
        raise InputError(
            f"label grid {label.shape} differs from image grid {image.shape} ({image.path})", path=label.path,
            fix="resample the label onto the image grid (nearest neighbour), or pair it with the right image",
        )
    if not np.allclose(image.affine, label.affine, atol=atol_mm):
        diff = float(np.max(np.abs(image.affine - label.affine)))
        raise InputError(
            f"label affine differs from the image's ({image.path}) by up to {diff:.4g} mm", path=label.path,
            fix="resample the label onto the image grid, or pair it with the right image",
        )


def crop_window(volume: np.ndarray, center: tuple[int, int, int], size: tuple[int, int, int],
                pad_value: float = 0.0) -> np.ndarray:
    """The `size` window of `volume` centred on voxel `center`, padded with `pad_value` where it leaves the volume.

    Zero padding on the [0, 1] scale (= spec.hu_min), as the sliding window pads.
    """
    out = np.full(size, pad_value, dtype=volume.dtype)
    src, dst = [], []
    for c, s, n in zip(center, size, volume.shape):
        start = int(c) - s // 2
        lo, hi = max(start, 0), min(start + s, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = volume[tuple(src)]
    return out

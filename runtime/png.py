"""A tiny PNG writer and an orthogonal-slice preview, without matplotlib or Pillow.

`preview` shows a CT the way a radiologist reads it, whatever the file's voxel order: the volume is
reoriented to RAS first (nibabel.orientations), then

- axial (looking from the feet): patient right on the image's left, anterior at the top;
- coronal (looking at the patient's front): patient right on the image's left, superior at the top;
- sagittal (looking at the patient's left side): anterior on the image's left, superior at the top;

each resampled to square display pixels (physical aspect ratio), masks drawn as 1-pixel coloured
contours, the three views side by side.

NIfTI world space is RAS+: +x points to the patient's Right, +y Anterior, +z Superior.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from edgeseg.runtime.atomic import atomic_path

# Distinct colours (Tableau 20 / Glasbey-like), cycled when there are more masks.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, *, level: int = 6) -> bytes:
    """PNG bytes for a uint8 image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"PNG image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        colour_type, channels = 0, 1
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        colour_type, channels = (2, 3) if img.shape[2] == 3 else (6, 4)
    else:
        raise ValueError(f"PNG image must be (H, W), (H, W, 3) or (H, W, 4); got shape {img.shape}")
    h, w = img.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"PNG image is empty (shape {img.shape})")
    rows = np.ascontiguousarray(img).reshape(h, w * channels)
    raw = np.zeros((h, w * channels + 1), dtype=np.uint8)  # filter byte 0 ("None") per row
    raw[:, 1:] = rows
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), level)
    return _PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def write_png(path: str | Path, image: np.ndarray, *, force: bool = False) -> Path:
    """Write a uint8 image (H, W[, 3|4]) as PNG, atomically; refuses to overwrite unless `force`."""
    data = encode_png(image)
    path = Path(path)
    with atomic_path(path, force=force) as tmp:
        tmp.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------


def _to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    return ras, ras_affine


def _grey(volume: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float32)
    if window is None:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise ValueError(f"window {window} is empty: it needs low < high")
    return (np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _resample2d(img: np.ndarray, px_mm: tuple[float, float], out_mm: float, *, order: int) -> np.ndarray:
    """Resample a 2D slice with pixel size px_mm (rows, cols) to square pixels of out_mm."""
    shape = tuple(max(1, int(round(n * p / out_mm))) for n, p in zip(img.shape, px_mm))
    if shape == img.shape:
        return img
    # Map output pixel centres onto input pixel centres (corner-aligned extents).
    zoom_back = [n_in / n_out for n_in, n_out in zip(img.shape, shape)]
    offset = [0.5 * z - 0.5 for z in zoom_back]
    return ndimage.affine_transform(img, zoom_back, offset=offset, output_shape=shape, order=order, mode="nearest")


def _contour(mask2d: np.ndarray) -> np.ndarray:
    if not mask2d.any():
        return mask2d
    inner = ndimage.binary_erosion(mask2d, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask2d & ~inner


def preview(
    volume: np.ndarray,
    affine: np.ndarray,
    masks: Mapping[str, np.ndarray] | None = None,
    center: Sequence[float] | None = None,
    window: tuple[float, float] | None = (-175.0, 250.0),
    *,
    pixel_mm: float | None = None,
    colors: Mapping[str, tuple[int, int, int]] | None = None,
    gap: int = 4,
) -> np.ndarray:
    """Axial, coronal and sagittal slices side by side, as an RGB uint8 image (H, W, 3).

    volume: HU (windowed with `window`), or values already in [0, 1] (pass `window=None`; a float
        volume whose values all lie in [0, 1] is also taken as already windowed).
    affine: the volume's 4x4 voxel-to-world (RAS+ mm) matrix, any voxel order.
    masks: name -> array of the volume's shape (bool or 0/1); each drawn as a contour in its own colour.
    center: world (RAS+ mm) point the three planes pass through; default the centre of the union of the
        masks' bounding box, else of the volume.
    pixel_mm: display pixel size; default the finest voxel spacing, but at least 1/400 of the largest extent.
    """
    volume = np.asarray(volume)
    affine = np.asarray(affine, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"preview needs a 3D volume, got shape {volume.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    masks = dict(masks or {})
    for name, m in masks.items():
        if np.shape(m) != volume.shape:
            raise ValueError(f"mask {name!r} has shape {np.shape(m)}, the volume {volume.shape}")
    if window is not None and np.issubdtype(volume.dtype, np.floating) and volume.size:
        vmin, vmax = float(np.min(volume)), float(np.max(volume))
        if vmin >= 0.0 and vmax <= 1.0:
            window = None
    grey, ras_affine = _to_ras(_grey(volume, window), affine)
    ras_masks = {k: _to_ras(np.asarray(m) > 0, affine)[0] for k, m in masks.items()}
    spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    shape = np.asarray(grey.shape)

    if center is None:
        union = None
        for m in ras_masks.values():
            union = m if union is None else (union | m)
        if union is not None and union.any():
            idx = np.nonzero(union)
            cv = np.array([(int(i.min()) + int(i.max())) / 2.0 for i in idx])
        else:
            cv = (shape - 1) / 2.0
    else:
        cv = np.linalg.solve(ras_affine, np.array([*map(float, center), 1.0]))[:3]
    ci, cj, ck = (int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(cv, shape))

    if pixel_mm is None:
        pixel_mm = max(float(spacing.min()), float((shape * spacing).max()) / 400.0)

    # (slice, row pixel mm, column pixel mm) per view; see the module docstring for the conventions.
    def views(a: np.ndarray) -> list[np.ndarray]:
        return [
            a[::-1, ::-1, ck].T,  # axial: rows anterior->posterior, cols right->left
            a[::-1, cj, ::-1].T,  # coronal: rows superior->inferior, cols right->left
            a[ci, ::-1, ::-1].T,  # sagittal: rows superior->inferior, cols anterior->posterior
        ]

    px = [(spacing[1], spacing[0]), (spacing[2], spacing[0]), (spacing[2], spacing[1])]
    panels = []
    grey_views = views(grey)
    mask_views = {k: views(m) for k, m in ras_masks.items()}
    palette = dict(colors or {})
    for v in range(3):
        g = _resample2d(grey_views[v].astype(np.float32), px[v], pixel_mm, order=1)
        rgb = np.repeat(np.clip(g + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        for n, (name, mv) in enumerate(mask_views.items()):
            m2 = _resample2d(mv[v].astype(np.uint8), px[v], pixel_mm, order=0) > 0
            edge = _contour(m2)
            rgb[edge] = palette.get(name, PALETTE[n % len(PALETTE)])
        panels.append(rgb)
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    x = 0
    for p in panels:
        top = (height - p.shape[0]) // 2
        out[top:top + p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def write_preview(path: str | Path, volume: np.ndarray, affine: np.ndarray,
                  masks: Mapping[str, np.ndarray] | None = None, *, force: bool = False, **kwargs) -> Path:
    """`preview(...)` written as a PNG."""
    return write_png(path, preview(volume, affine, masks, **kwargs), force=force)

"""From probabilities on the model grid to masks on the scan's own grid: threshold, optionally the
largest connected component, resampling back, organ volumes, and the multi-label map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.errors import InputError

# scipy's structuring-element rank for each voxel connectivity of a 3-D mask
_RANK = {6: 1, 18: 2, 26: 3}


def largest_component(mask: np.ndarray, *, connectivity: int) -> np.ndarray:
    """The largest connected component of the non-zero voxels of a 3-D `mask` (bool; all False when empty).

    connectivity: which neighbours join a component: 6 (shared faces), 18 (faces and edges) or 26 (faces,
    edges and corners). Each caller states its rule, because the two in edgeseg follow different references:

    * `edgeseg predict --lcc` uses 6, the convention of nnU-Net's and TotalSegmentator's "keep the largest
      blob" clean-up (`scipy.ndimage.label`'s default). A voxel that touches the organ only at a corner is a
      separate island and goes, the stricter clean-up; it is also what every mask written so far was made with.
    * The size prior (`edgeseg.train.size_prior.target_size_ml`) uses 26, as the FSEFT release's
      `extract_topk_largest_candidates` does: its support sizes are the release's numbers.

    The two differ only by voxels attached at edges or corners, which move an organ's volume by a few voxels.
    Ties between equally large components go to the one scipy labels first (the first in C order).
    """
    if connectivity not in _RANK:
        raise InputError(f"connectivity {connectivity!r} must be 6, 18 or 26", fix="pass connectivity=6 or 26")
    from scipy import ndimage

    m = mask if isinstance(mask, np.ndarray) and mask.dtype == bool else np.asarray(mask) != 0
    if m.ndim != 3:
        raise InputError(f"mask of shape {m.shape} must be 3-D", fix="pass one organ's mask (D, H, W)")
    labels, n = ndimage.label(m, structure=ndimage.generate_binary_structure(3, _RANK[connectivity]))
    if n <= 1:
        return m
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # the background is no component
    return labels == int(np.argmax(sizes))


@dataclass(frozen=True)
class Segmentation:
    """One case's results on the scan's own grid."""

    masks: dict[str, np.ndarray]  # organ -> uint8 mask, the scan's shape
    volume_ml: dict[str, float]  # organ -> its mask's volume, mL (2 decimals)
    labels: np.ndarray | None  # uint8 multi-label map (organ k is k + 1), when the engine has several organs


def segment(probs: np.ndarray, organs: Sequence[str], transform, voxel_ml: float, *, threshold: float,
            lcc: bool) -> Segmentation:
    """Masks from `probs` (n_organs, model grid), organs in that order, back on the grid of `transform`'s scan.

    Per organ: probability >= threshold, then (lcc) its largest 6-connected component, then linear
    resampling back to the scan and >= 0.5 (`mask_to_input_grid`). The multi-label map gives each voxel the
    most probable organ above the threshold (nearest-neighbour resampling), with no component clean-up.
    Arrays are made and released in the order `estimate_memory` counts them.
    """
    from edgeseg.runtime.preprocess import mask_to_input_grid, to_input_grid

    masks, volumes = {}, {}
    for organ, prob in zip(organs, probs):
        on_model = prob >= threshold
        if lcc:
            on_model = largest_component(on_model, connectivity=6)
        masks[organ] = mask_to_input_grid(on_model.astype(np.float32), transform)
        volumes[organ] = round(float(masks[organ].sum()) * voxel_ml, 2)
    labels = None
    if len(organs) > 1:  # one label per voxel: the most probable organ above the threshold
        best = np.argmax(probs, axis=0)
        fg = np.max(probs, axis=0) >= threshold
        labels_model = np.where(fg, best + 1, 0).astype(np.float32)
        labels = to_input_grid(labels_model, transform, order=0).astype(np.uint8)
    return Segmentation(masks, volumes, labels)

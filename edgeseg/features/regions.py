"""Which regions of a labelled support are stored: the organ's box with a margin, and negative windows in the body.

Training samples crops from these regions only (design.md, "Memory and size"):

* the **positive** region: the organ's bounding box on the model grid, plus `margin_mm`, grown to at
  least the trunk's window, on even voxels (so a half-resolution output nests exactly), clipped to the
  volume;
* `n` **negative** windows of the trunk's window size, drawn (seeded) inside the body (``image >
  BODY_THRESHOLD`` on the [0, 1] HU-window scale, i.e. above -154 HU for the default window) and not
  overlapping the organ's bounding box (the code release samples crops 1:1 positive / negative). When no
  window clear of the organ exists, the ones holding the fewest organ voxels are taken and say so.

`edgeseg cache` and the few-shot protocol both choose their regions with `support_regions`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BODY_THRESHOLD", "Box", "Region", "negative_boxes", "organ_bbox", "positive_box", "region_slices",
           "support_regions"]

BODY_THRESHOLD = 0.05  # [0, 1] HU-window scale: -154 HU for the default window [-175, 250]
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # [start, stop) per axis


@dataclass(frozen=True)
class Region:
    """One stored region of a support: `name` is its folder in the case ("positive", "negative-<i>")."""

    name: str
    role: str  # "positive" | "negative"
    box: Box
    info: dict = field(default_factory=dict)  # a negative window's tier, body fraction, organ voxels, overlap


def support_regions(volume: np.ndarray, label: np.ndarray, bbox: Box, spacing: Sequence[float], window: Sequence[int],
                    *, margin_mm: float, negatives: int, min_body_fraction: float,
                    rng: np.random.Generator) -> list[Region]:
    """The positive region, then `negatives` negative windows drawn with `rng`, of a support whose organ
    (`label`, 0/1 on the model grid of `volume`) has the bounding box `bbox`."""
    pos = positive_box(bbox, volume.shape, spacing, margin_mm, window)
    negs = negative_boxes(volume > BODY_THRESHOLD, label, bbox, window, negatives, rng,
                          min_body_fraction=min_body_fraction)
    return [Region("positive", "positive", pos)] + [Region(f"negative-{i}", "negative", b, extra)
                                                    for i, (b, extra) in enumerate(negs)]


def region_slices(box: Box, scale: int = 1) -> tuple[slice, slice, slice]:
    """The box as slices, on a grid `scale` times coarser (exact: boxes start and end on even voxels)."""
    return tuple(slice(lo // scale, hi // scale) for lo, hi in box)  # type: ignore[return-value]


# --- boxes ---------------------------------------------------------------------------------------
def organ_bbox(label: np.ndarray) -> Box | None:
    """The tight bounding box [start, stop) per axis of the non-zero voxels; None when there are none."""
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        hit = np.flatnonzero(np.any(label, axis=other))
        if hit.size == 0:
            return None
        out.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def _even_span(lo: int, hi: int, n: int, want: int) -> tuple[int, int]:
    """[lo, hi) grown (centred) to `want` voxels within [0, n), then snapped to even ends within the even part of n."""
    n_even = n - n % 2 if n >= 2 else n
    if hi - lo < want:
        lo = max(0, lo - (want - (hi - lo)) // 2)
        hi = min(n_even, lo + want)
        lo = max(0, hi - want)
    lo = lo - lo % 2
    hi = min(n_even, hi + hi % 2)
    return lo, max(hi, min(lo + 2, n))


def positive_box(bbox: Box, shape: Sequence[int], spacing: Sequence[float], margin_mm: float,
                 window: Sequence[int]) -> Box:
    """The organ's box plus `margin_mm` (rounded up to voxels), grown to the window, on even voxels, in the volume."""
    out = []
    for (lo, hi), n, sp, w in zip(bbox, shape, spacing, window):
        m = math.ceil(float(margin_mm) / float(sp) - 1e-9)
        out.append(_even_span(max(0, lo - m), min(n, hi + m), int(n), int(w)))
    return tuple(out)  # type: ignore[return-value]
def _box_sums(integral: np.ndarray, starts: list[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """Sums over the boxes [s, s + size) for every combination of starts, from a zero-padded 3D integral image."""
    a, b, c = np.meshgrid(*starts, indexing="ij")
    a, b, c = a.ravel(), b.ravel(), c.ravel()
    A, B, C = a + sizes[0], b + sizes[1], c + sizes[2]
    s = integral
    return (s[A, B, C] - s[a, B, C] - s[A, b, C] - s[A, B, c] + s[a, b, C] + s[a, B, c] + s[A, b, c]
            - s[a, b, c]).astype(np.int64)


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.int64 if mask.size >= 2**31 else np.int32)
    np.cumsum(mask, axis=0, dtype=out.dtype, out=out[1:, 1:, 1:])
    np.cumsum(out[1:, 1:, 1:], axis=1, out=out[1:, 1:, 1:])
    np.cumsum(out[1:, 1:, 1:], axis=2, out=out[1:, 1:, 1:])
    return out


def negative_boxes(body: np.ndarray, label: np.ndarray, organ_box: Box, window: Sequence[int], n: int,
                   rng: np.random.Generator, *, min_body_fraction: float = 0.5) -> list[tuple[Box, dict]]:
    """`n` window-sized boxes (even starts) in the body, clear of `organ_box`, drawn with `rng`.

    Candidates, best tier first: (1) clear of the organ box with at least `min_body_fraction` body
    voxels; (2) clear of the organ box with any body voxel; (3) when no window clear of the organ box
    exists, the windows (with body) that hold the fewest organ voxels, those with enough body first
    (the label then says how much organ they hold). Within tiers 1 and 2 the draw is
    uniform, preferring windows that do not overlap those already drawn. Returns (box, info) pairs;
    info says the tier, body fraction, organ voxels and whether the box overlaps the organ box.
    """
    shape = body.shape
    sizes = [min(int(w), s - s % 2) if s >= 2 else s for w, s in zip(window, shape)]
    starts = [np.arange(0, s - z + 1, 2) for s, z in zip(shape, sizes)]
    body_sum = _box_sums(_integral(body), starts, sizes)
    organ_sum = _box_sums(_integral(label), starts, sizes)
    a, b, c = (x.ravel() for x in np.meshgrid(*starts, indexing="ij"))
    clear = np.zeros(a.shape, bool)
    for st, z, (lo, hi) in zip((a, b, c), sizes, organ_box):
        clear |= (st + z <= lo) | (st >= hi)
    frac = body_sum / float(np.prod(sizes))
    tiers = [(1, clear & (frac >= min_body_fraction)), (2, clear & (body_sum > 0))]
    chosen: list[int] = []
    info: list[dict] = []
    for tier, ok in tiers:
        if len(chosen) >= n:
            break
        pool = np.flatnonzero(ok)
        pool = pool[~np.isin(pool, chosen)]
        for i in _draw(rng.permutation(pool), n - len(chosen), a, b, c, sizes, chosen):
            chosen.append(i)
            info.append({"tier": tier})
    if len(chosen) < n:  # nothing clear of the organ box is left: fewest organ voxels, honestly labelled
        pool = np.flatnonzero(body_sum > 0)
        pool = pool[~np.isin(pool, chosen)]
        order = pool[np.lexsort((rng.random(pool.size), frac[pool] < min_body_fraction, organ_sum[pool]))]
        for i in order[: n - len(chosen)]:
            chosen.append(int(i))
            info.append({"tier": 3})
    out = []
    for i, extra in zip(chosen, info):
        box = tuple((int(s[i]), int(s[i]) + z) for s, z in zip((a, b, c), sizes))
        extra.update(body_fraction=round(float(frac[i]), 4), organ_voxels=int(organ_sum[i]),
                     overlaps_organ_box=not bool(clear[i]))
        out.append((box, extra))
    return out  # type: ignore[return-value]


def _draw(order: np.ndarray, n: int, a, b, c, sizes, taken: list[int]) -> list[int]:
    """Up to n of `order`, in order: first those overlapping no window taken (or picked) so far, then any."""
    starts = (a[order], b[order], c[order])

    def hits(j: int) -> np.ndarray:  # which of `order` overlap window j
        out = np.ones(order.size, bool)
        for s, st, z in zip((a, b, c), starts, sizes):
            out &= np.abs(st - s[j]) < z
        return out

    free = np.ones(order.size, bool)
    for j in taken:
        free &= ~hits(j)
    picked: list[int] = []
    while len(picked) < n:
        idx = np.flatnonzero(free)
        if idx.size == 0:
            break
        i = int(order[idx[0]])
        picked.append(i)
        free &= ~hits(i)
        free[idx[0]] = False
    for i in order:
        if len(picked) >= n:
            break
        if int(i) not in picked:
            picked.append(int(i))
    return picked

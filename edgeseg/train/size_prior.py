"""The transductive organ-size prior of FSEFT: make the query's predicted organ size agree with the supports'.

Three parts:

1. `target_size_ml` — the organ size ``S`` expected on the query, from the K annotated supports: each
   support's organ volume in millilitres, counting its largest connected component only (the runtime's
   `largest_component` with 26-connectivity, as the code release's ``extract_topk_largest_candidates``:
   stray label islands do not count); with ``K >= 5`` the supports outside ``(median - std, median + std)``
   (population std, strict bounds) are dropped — the release's outlier rule
   (``fseft/transductive/utils.py::estimate_target``) — and ``S`` is the mean of the rest. The release
   counted voxels after resampling every scan to 1.5 mm; counting millilitres (voxels x voxel volume)
   gives the same answer on any grid, so supports at different spacings need no resampling for this.
2. `QuerySizeEstimator` — the predicted size ``S_hat = sum over the query scan of
   sigmoid(adapter(features)) x voxel volume`` (mL), exact in value and cheap in gradient (see the class).
3. `ti_loss` — the poster's symmetric band penalty ``L_TI`` (zero while ``S_hat`` is within
   ``[(1 - gamma) S, (1 + gamma) S]``, the L1 distance to the band outside it), divided by ``S`` so the
   weight ``lambda`` does not depend on the organ's size. The 2023 release's asymmetric relative-error
   variant is kept, for comparison, beside its test (tests/train/test_size_prior.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.predict.postprocess import largest_component

__all__ = [
    "QuerySizeEstimator", "SizeEstimate", "target_size_ml", "ti_loss", "voxel_volume_ml",
]

OUTLIER_MIN_K = 5  # the release applies its median +/- std rule from 5 supports on


def voxel_volume_ml(spacing_mm: Sequence[float]) -> float:
    """Volume of one voxel in mL (1 mL = 1000 mm^3) from its spacing in mm; 1.5 mm isotropic: 0.003375."""
    return float(np.prod([float(s) for s in spacing_mm])) / 1000.0


@dataclass(frozen=True)
class SizeEstimate:
    """The support-set organ size: ``S_ml`` and how it was reached (indices refer to the support order)."""

    S_ml: float
    per_support_ml: tuple[float, ...]
    kept: tuple[int, ...]
    dropped: tuple[int, ...]
    method: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_support_ml"], d["kept"], d["dropped"] = list(self.per_support_ml), list(self.kept), list(self.dropped)
        return d


def target_size_ml(support_masks: Sequence[np.ndarray], voxel_volumes_ml: Sequence[float]) -> SizeEstimate:
    """Expected organ volume (mL) on the query from the support masks (one voxel volume in mL per mask).

    Largest connected component only; with K >= 5 supports, those outside ``median +/- std`` are dropped
    (strict bounds, population std; when that would drop all of them, i.e. all sizes are equal, all are
    kept); ``S_ml`` is the mean of the kept sizes.
    """
    masks, vols = list(support_masks), [float(v) for v in voxel_volumes_ml]
    if not masks:
        raise InputError("no support masks given", fix="pass the K annotated support masks")
    if len(masks) != len(vols):
        raise InputError(f"{len(masks)} support masks but {len(vols)} voxel volumes",
                         fix="give one voxel volume (mL) per support mask")
    sizes = []
    for i, (m, v) in enumerate(zip(masks, vols)):
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"support {i}: voxel volume {v} mL is not a positive number",
                             fix="pass prod(spacing_mm) / 1000 (see voxel_volume_ml)")
        n = int(largest_component(m, connectivity=26).sum())  # the release's rule (see the module doc)
        if n == 0:
            raise InputError(f"support {i}: the mask has no organ voxels",
                             fix="check the label value and that the support is annotated for this organ")
        sizes.append(n * v)
    arr = np.asarray(sizes, dtype=np.float64)
    k = len(arr)
    if k >= OUTLIER_MIN_K:
        med, sd = float(np.median(arr)), float(np.std(arr))
        keep = (arr > med - sd) & (arr < med + sd)
        if not keep.any():
            keep[:] = True
        method = f"mean of the supports within median +/- std (K={k} >= {OUTLIER_MIN_K}), largest component"
    else:
        keep = np.ones(k, dtype=bool)
        method = f"mean of all supports (K={k} < {OUTLIER_MIN_K}), largest component"
    kept = tuple(int(i) for i in np.flatnonzero(keep))
    dropped = tuple(int(i) for i in np.flatnonzero(~keep))
    return SizeEstimate(float(arr[keep].mean()), tuple(float(s) for s in arr), kept, dropped, method)


def ti_loss(S_hat: Tensor, S: float | Tensor, gamma: float = 0.3) -> Tensor:
    """The poster's ``L_TI``, divided by ``S``: ``(relu((1-g)S - S_hat) + relu(S_hat - (1+g)S)) / S``.

    Zero inside ``[(1-g)S, (1+g)S]``; outside, the distance to the nearer band edge over ``S``, so the
    gradient in ``S_hat`` is ``-1/S`` below the band and ``+1/S`` above it, and scaling both sizes (mL vs
    voxels) leaves the loss unchanged. ``S`` is a constant (no gradient flows into it).
    """
    if not 0.0 <= gamma < 1.0:
        raise InputError(f"gamma={gamma} must be in [0, 1)", fix="use a band half-width such as 0.3")
    S_hat = torch.as_tensor(S_hat)
    S = torch.as_tensor(S, dtype=S_hat.dtype, device=S_hat.device).detach()
    if not bool((S > 0).all()):
        raise InputError(f"target size S={S.tolist()} must be positive", fix="estimate it with target_size_ml")
    below = torch.relu((1.0 - gamma) * S - S_hat)
    above = torch.relu(S_hat - (1.0 + gamma) * S)
    return (below + above) / S


def _as_array(x):
    if isinstance(x, Tensor):
        return x.detach().cpu()
    a = x if isinstance(x, np.ndarray) else np.asarray(x)  # np.memmap is an ndarray: stays on disk
    return a


def _to_tensor(block, device) -> Tensor:
    if isinstance(block, Tensor):
        return block.to(device=device, dtype=torch.float32).unsqueeze(0)
    return torch.from_numpy(np.asarray(block, dtype=np.float32)).to(device).unsqueeze(0)


class QuerySizeEstimator:
    """``S_hat`` (mL) of an adapter on one unlabelled query scan, from the query's cached trunk features.

    ``features``: one array ``(C, D, H, W)`` (decoder1 cut) or the cut's arrays in trunk order, e.g.
    ``(enc0, dec0)`` for pre-decoder1, where each coarser array's grid divides the finest one's by a whole
    factor (dec0 is half of enc0). numpy arrays, memory maps (read chunk by chunk, never whole) or tensors;
    any float dtype (fp16 caches are read as fp32).

    Calling the estimator, ``est(adapter)``, returns a scalar tensor:

    - value: the exact ``sum(sigmoid(adapter(features))) * voxel_volume_ml * pool**3`` over the whole
      query, computed chunk by chunk (``chunk`` voxels a side in the finest grid) without gradient;
    - gradient: through a random subset of ``grad_chunks`` chunks only, scaled by ``n_chunks / |subset|``.
      Each chunk is in the subset with probability ``|subset| / n_chunks``, so the gradient is an unbiased
      estimate of the exact one (equal to it when the subset is every chunk). Straight-through:
      ``S = S_exact.detach() + (S_sub * scale - (S_sub * scale).detach())``: value exact, gradient from the
      subset. Memory is one chunk's activations per subset chunk, whatever the scan's size.

    Each chunk is evaluated with a halo of context (the adapter's ``halo``: 0 for the linear probe, 2 for
    the spatial adapter's two 3x3x3 convs; or pass ``halo``) and only its interior is counted, so for
    ``lp`` and ``spatial`` the sum equals one forward over the whole volume (zero padding at the scan's
    border, as in that forward). Adapters with instance norms (``decoder-block``, ``ft-last``) normalise
    each chunk (plus halo) on its own statistics, as they normalise each window at inference: their sum is
    that of per-chunk evaluations, not of one whole-volume forward; a ``chunk`` equal to the training
    window mirrors windowed inference best.

    ``pool``: the features were average-pooled ``pool`` x on each axis before caching (the release used 2
    to save memory); each feature voxel then stands for ``pool**3`` scan voxels, and ``voxel_volume_ml``
    is the volume of one scan voxel (0.003375 mL at 1.5 mm). This is an approximation. For the linear probe
    it is mild: the logit is affine in the features, so the pooled logit is exactly the mean of the 8
    logits it replaces, and only the sigmoid's curvature errs — ``8 sigmoid(mean) != sum of 8 sigmoids``
    where the 8 voxels disagree (organ boundaries); inside and outside the organ it is negligible. For
    non-linear adapters (ReLU, 3x3x3 convs, instance norms) the adapter also sees features on a grid twice
    as coarse as the one it is trained on (its kernels span twice the distance), so the error is not
    confined to boundaries and has no bound; prefer ``pool=1`` when the query's features fit on disk.
    """

    def __init__(self, features, *, voxel_volume_ml: float, pool: int = 1, chunk: int | Sequence[int] = 32,
                 grad_chunks: int = 8, halo: int | None = None, seed: int | None = 0,
                 device: str | torch.device = "cpu"):
        arrays = tuple(features) if isinstance(features, (tuple, list)) else (features,)
        if not arrays:
            raise InputError("no query features given", fix="pass the query's cached trunk features")
        self.arrays = tuple(_as_array(a) for a in arrays)
        for i, a in enumerate(self.arrays):
            if len(a.shape) != 4:
                raise InputError(f"query feature array {i} has shape {tuple(a.shape)}; expected (C, D, H, W)",
                                 fix="pass one scan's features without the batch dimension")
        finest = max(range(len(self.arrays)), key=lambda i: int(np.prod(self.arrays[i].shape[1:])))
        self.grid: tuple[int, int, int] = tuple(int(s) for s in self.arrays[finest].shape[1:])
        self.factors: tuple[int, ...] = tuple(self._factor(a) for a in self.arrays)
        self.step = int(np.lcm.reduce(self.factors))  # chunk bounds and halos are multiples of every factor
        if not (math.isfinite(float(voxel_volume_ml)) and float(voxel_volume_ml) > 0):
            raise InputError(f"voxel_volume_ml={voxel_volume_ml} must be positive", fix="see voxel_volume_ml()")
        if int(pool) != pool or pool < 1:
            raise InputError(f"pool={pool} must be a positive integer", fix="use 1 (unpooled) or 2")
        self.voxel_volume_ml = float(voxel_volume_ml)
        self.pool = int(pool)
        self.weight_ml = self.voxel_volume_ml * self.pool**3
        size = (chunk,) * 3 if isinstance(chunk, int) else tuple(int(c) for c in chunk)
        if len(size) != 3 or min(size) < 1:
            raise InputError(f"chunk={chunk} must be a positive size or three of them", fix="use e.g. 32")
        self.chunk_size = tuple(-(-c // self.step) * self.step for c in size)
        self.chunks: list[tuple[tuple[int, int], ...]] = [
            ((z, min(z + self.chunk_size[0], self.grid[0])), (y, min(y + self.chunk_size[1], self.grid[1])),
             (x, min(x + self.chunk_size[2], self.grid[2])))
            for z in range(0, self.grid[0], self.chunk_size[0])
            for y in range(0, self.grid[1], self.chunk_size[1])
            for x in range(0, self.grid[2], self.chunk_size[2])
        ]
        if int(grad_chunks) < 1:
            raise InputError(f"grad_chunks={grad_chunks} must be at least 1", fix="use exact_ml() for a value only")
        self.grad_chunks = int(grad_chunks)
        self.halo = halo
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.last_subset: tuple[int, ...] = ()

    def _factor(self, a) -> int:
        shape = tuple(int(s) for s in a.shape[1:])
        f = self.grid[0] // shape[0] if shape[0] else 0
        if f < 1 or any(s * f != g for g, s in zip(self.grid, shape)):
            raise InputError(f"query feature grids {[tuple(x.shape[1:]) for x in self.arrays]} do not nest: each "
                             f"must divide the finest {self.grid} by one whole factor",
                             fix="pass the cut's arrays as the trunk returns them, e.g. (enc0, dec0)")
        return f

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def _halo(self, adapter: nn.Module) -> int:
        h = self.halo if self.halo is not None else getattr(adapter, "halo", None)
        if h is None:
            raise InputError(f"{type(adapter).__name__} does not declare its halo (context voxels per side)",
                             fix="pass halo= to QuerySizeEstimator (0 for 1x1x1 heads, 1 per 3x3x3 conv)")
        h = int(h)
        return -(-h // self.step) * self.step

    def _chunk_sum(self, adapter: nn.Module, index: int, halo: int) -> Tensor:
        """Sum of sigmoid(adapter) over chunk `index`'s interior, the chunk evaluated with `halo` of context."""
        bounds = self.chunks[index]
        region = [(max(0, a - halo), min(g, b + halo)) for (a, b), g in zip(bounds, self.grid)]
        inputs = []
        for arr, f in zip(self.arrays, self.factors):
            sl = (slice(None),) + tuple(slice(lo // f, hi // f) for lo, hi in region)
            inputs.append(_to_tensor(arr[sl], self.device))
        out = adapter(*inputs)
        want = tuple(hi - lo for lo, hi in region)
        if out.dim() != 5 or out.shape[1] != 1 or tuple(out.shape[2:]) != want:
            raise InputError(f"the adapter returned shape {tuple(out.shape)} for a region of {want}; expected "
                             f"(1, 1, *region): one organ logit per voxel of the finest feature grid",
                             fix="use an adapter built by edgeseg.adapters.build_adapter for this cut")
        inner = tuple(slice(a - lo, b - lo) for (a, b), (lo, _) in zip(bounds, region))
        return torch.sigmoid(out[(0, 0) + inner].float()).sum()

    def exact_ml(self, adapter: nn.Module) -> float:
        """The exact predicted size in mL, without gradient."""
        halo = self._halo(adapter)
        with torch.no_grad():
            total = sum(float(self._chunk_sum(adapter, i, halo).double()) for i in range(self.n_chunks))
        return total * self.weight_ml

    def __call__(self, adapter: nn.Module, *, subset: Sequence[int] | str | None = None) -> Tensor:
        """``S_hat`` in mL: exact value, gradient through `subset` (``"all"``, chunk indices, or random)."""
        halo = self._halo(adapter)
        n = self.n_chunks
        if subset is None:
            chosen = self.rng.choice(n, size=min(self.grad_chunks, n), replace=False)
        elif isinstance(subset, str):
            if subset != "all":
                raise InputError(f"subset={subset!r}: use 'all', chunk indices or None (random)")
            chosen = range(n)
        else:
            chosen = subset
        chosen = sorted({int(i) for i in chosen})
        if not chosen or chosen[0] < 0 or chosen[-1] >= n:
            raise InputError(f"subset {chosen} must be non-empty chunk indices in 0..{n - 1}")
        self.last_subset = tuple(chosen)
        in_subset = set(chosen)
        total = 0.0
        partial: Tensor | None = None
        for i in range(n):
            if i in in_subset:
                s = self._chunk_sum(adapter, i, halo)
                partial = s if partial is None else partial + s
                total += float(s.detach().double())
            else:
                with torch.no_grad():
                    total += float(self._chunk_sum(adapter, i, halo).double())
        exact = torch.tensor(total * self.weight_ml, dtype=torch.float32, device=self.device)
        scaled = partial * (self.weight_ml * n / len(chosen))
        return exact + (scaled - scaled.detach())

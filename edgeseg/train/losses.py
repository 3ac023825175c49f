"""Segmentation losses for one binary organ, and the Dice score used to evaluate it.

`soft_dice_loss` works on sigmoid probabilities and aggregates over the whole batch (every voxel of every
sample in one sum), so a batch that mixes organ windows with negative windows (no organ) still gives a
well-defined loss: per-sample Dice is undefined on an empty target, the batch Dice is not. The ``smooth``
term (default 1, added to numerator and denominator, in voxel units) keeps the loss finite when the batch
has no foreground at all; then it equals ``1 - smooth / (sum(p) + smooth)``, which still pushes every
probability towards 0. With organ voxels in the thousands, ``smooth=1`` barely moves the loss otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgeseg.runtime.errors import InputError

__all__ = ["LOSSES", "bce_loss", "dice_score", "segmentation_loss", "soft_dice_loss"]

LOSSES: tuple[str, ...] = ("dice", "bce", "dice+bce")


def _check(logits: Tensor, target: Tensor) -> Tensor:
    if logits.shape != target.shape:
        raise InputError(f"logits shape {tuple(logits.shape)} differs from target shape {tuple(target.shape)}",
                         fix="give one logit channel per target channel, same spatial size")
    return target.to(logits.dtype)


def soft_dice_loss(logits: Tensor, target: Tensor, *, smooth: float = 1.0) -> Tensor:
    """``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)``, ``p = sigmoid(logits)``, summed over the batch."""
    t = _check(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * t).sum()
    return 1.0 - (2.0 * inter + smooth) / (p.sum() + t.sum() + smooth)


def bce_loss(logits: Tensor, target: Tensor, *, pos_weight: float | None = None) -> Tensor:
    """Binary cross-entropy with logits, averaged over all voxels; `pos_weight` up-weights organ voxels."""
    t = _check(logits, target)
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, t, pos_weight=pw)


def segmentation_loss(logits: Tensor, target: Tensor, kind: str = "dice", *, smooth: float = 1.0,
                      pos_weight: float | None = None) -> Tensor:
    """``dice``, ``bce`` or ``dice+bce`` (their sum)."""
    if kind == "dice":
        return soft_dice_loss(logits, target, smooth=smooth)
    if kind == "bce":
        return bce_loss(logits, target, pos_weight=pos_weight)
    if kind == "dice+bce":
        return soft_dice_loss(logits, target, smooth=smooth) + bce_loss(logits, target, pos_weight=pos_weight)
    raise InputError(f"unknown loss {kind!r}; choices: {', '.join(LOSSES)}", fix=f"use one of {', '.join(LOSSES)}")


def dice_score(pred_mask: np.ndarray, target: np.ndarray) -> float:
    """Dice ``2|A & B| / (|A| + |B|)`` of two binary masks (non-zero = organ); 1.0 when both are empty."""
    a = np.asarray(pred_mask) != 0
    b = np.asarray(target) != 0
    if a.shape != b.shape:
        raise InputError(f"prediction shape {a.shape} differs from target shape {b.shape}",
                         fix="compare masks on the same grid (resample the prediction to the label's grid)")
    denom = int(a.sum()) + int(b.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / denom

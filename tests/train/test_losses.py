"""Segmentation losses and the Dice score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edgeseg.runtime.errors import InputError

from edgeseg.train.losses import (
    LOSSES,
    bce_loss,
    dice_score,
    segmentation_loss,
    soft_dice_loss,
)


def _target(seed=0, shape=(2, 1, 8, 8, 8)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) > 0.7).float()


def test_soft_dice_perfect_and_opposite():
    t = _target()
    assert soft_dice_loss((t * 2 - 1) * 50, t).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss((1 - 2 * t) * 50, t).item() == pytest.approx(1.0, abs=1e-3)


def test_soft_dice_formula_and_batch_aggregation():
    torch.manual_seed(0)
    logits, t = torch.randn(2, 1, 8, 8, 8), _target()
    p = torch.sigmoid(logits)
    want = 1 - (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    assert torch.allclose(soft_dice_loss(logits, t), want)
    # One sum over the batch: the same as the two samples side by side in one volume.
    side = soft_dice_loss(torch.cat([logits[0], logits[1]], -1)[None], torch.cat([t[0], t[1]], -1)[None])
    assert torch.allclose(soft_dice_loss(logits, t), side)


def test_soft_dice_empty_target_is_finite_and_pushes_down():
    logits = torch.zeros(1, 1, 4, 4, 4, requires_grad=True)
    loss = soft_dice_loss(logits, torch.zeros(1, 1, 4, 4, 4))
    assert torch.isfinite(loss) and 0 < loss.item() < 1
    loss.backward()
    assert (logits.grad > 0).all()  # gradient descent lowers every logit


def test_bce_and_combination():
    torch.manual_seed(1)
    logits, t = torch.randn(2, 1, 8, 8, 8), _target(1)
    assert torch.allclose(bce_loss(logits, t), F.binary_cross_entropy_with_logits(logits, t))
    assert torch.allclose(bce_loss(logits, t, pos_weight=3.0),
                          F.binary_cross_entropy_with_logits(logits, t, pos_weight=torch.tensor(3.0)))
    assert LOSSES == ("dice", "bce", "dice+bce")
    assert torch.allclose(segmentation_loss(logits, t, "dice+bce"), soft_dice_loss(logits, t) + bce_loss(logits, t))
    with pytest.raises(InputError, match="choices"):
        segmentation_loss(logits, t, "focal")
    with pytest.raises(InputError, match="shape"):
        soft_dice_loss(logits, t[:, :, :4])


def test_dice_score():
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), bool)
    assert dice_score(a, b) == 1.0  # both empty
    a[0, 0, :2] = 1
    assert dice_score(a, b) == 0.0
    b[0, 0, 1:4] = True
    assert dice_score(a, b) == pytest.approx(2 * 1 / (2 + 3))
    assert dice_score(a * 7, a) == 1.0  # any non-zero label is organ
    with pytest.raises(InputError):
        dice_score(a, b[:2])

"""Adapter training: segmentation losses and the transductive organ-size prior."""

from edgeseg.train.losses import (
    LOSSES,
    bce_loss,
    dice_score,
    segmentation_loss,
    soft_dice_loss,
)
from edgeseg.train.size_prior import (
    QuerySizeEstimator,
    SizeEstimate,
    target_size_ml,
    ti_loss,
    voxel_volume_ml,
)

__all__ = [
    "LOSSES", "QuerySizeEstimator", "SizeEstimate", "bce_loss", "dice_score",
    "segmentation_loss", "soft_dice_loss", "target_size_ml", "ti_loss", "voxel_volume_ml",
]

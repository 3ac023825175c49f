"""Build MONAI's SwinUNETR from a ModelSpec and split it into a frozen trunk and a trainable head.

Two cut points (`edgeseg.model.spec.CUTS`), because the adapters of the FSEFT paper attach at two places:

- ``decoder1``: the trunk runs the whole network up to and including ``decoder1`` and returns its
  full-resolution output (``feature_size`` channels); the head is the 1x1x1 ``out`` conv. These are the
  features the linear probe (49 parameters) and the spatial adapter (124K) are trained on, and the
  cheapest features to cache (one tensor per window).
- ``pre-decoder1``: the trunk stops before ``decoder1`` and returns its two inputs ``(enc0, dec0)``
  (``encoder1(x)`` at full resolution, ``decoder2``'s output at half resolution); the head is
  ``decoder1`` + ``out``. This is where the decoder-block adapter / FT-Last (209,664 parameters at
  feature_size 48) trains ``decoder1`` itself.

Trunk and head share the model's submodules (no copies), so ``head(trunk(x))`` is the model's own
computation, bit for bit, and loading weights into the model updates both.
"""

from __future__ import annotations

import torch
from monai.networks.nets import SwinUNETR
from torch import Tensor, nn

from edgeseg.model.spec import CUTS, ModelSpec
from edgeseg.runtime.errors import InputError

__all__ = ["Head", "Trunk", "build_swinunetr", "count_params", "feature_shapes", "split"]


def build_swinunetr(spec: ModelSpec) -> SwinUNETR:
    """The SwinUNETR `spec` describes, randomly initialised, without dropout."""
    return SwinUNETR(
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        feature_size=spec.feature_size,
        depths=tuple(spec.depths),
        num_heads=tuple(spec.num_heads),
        window_size=spec.swin_window,
        downsample=spec.downsample,
        use_v2=spec.use_v2,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        dropout_path_rate=0.0,
    )


def _check_cut(cut: str) -> None:
    if cut not in CUTS:
        raise InputError(f"unknown cut point {cut!r}; choices: {', '.join(CUTS)}", fix=f"use one of {', '.join(CUTS)}")


class Trunk(nn.Module):
    """SwinUNETR up to `cut`: returns decoder1's output (``decoder1``) or ``(enc0, dec0)`` (``pre-decoder1``)."""

    def __init__(self, model: SwinUNETR, cut: str):
        super().__init__()
        _check_cut(cut)
        self.cut = cut
        self.normalize: bool = model.normalize
        self.patch_size: int = model.patch_size
        # Registered as children of this module, but the very same objects as the model's.
        self.swinViT = model.swinViT
        self.encoder1, self.encoder2, self.encoder3 = model.encoder1, model.encoder2, model.encoder3
        self.encoder4, self.encoder10 = model.encoder4, model.encoder10
        self.decoder5, self.decoder4, self.decoder3, self.decoder2 = (
            model.decoder5, model.decoder4, model.decoder3, model.decoder2,
        )
        if cut == "decoder1":
            self.decoder1 = model.decoder1

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        # Same operations in the same order as MONAI's SwinUNETR.forward, so results are bit-identical.
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            _check_input_size(tuple(x.shape[2:]), self.patch_size)
        hidden_states_out = self.swinViT(x, self.normalize)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden_states_out[0])
        enc2 = self.encoder3(hidden_states_out[1])
        enc3 = self.encoder4(hidden_states_out[2])
        dec4 = self.encoder10(hidden_states_out[4])
        dec3 = self.decoder5(dec4, hidden_states_out[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        if self.cut == "pre-decoder1":
            return enc0, dec0
        return self.decoder1(dec0, enc0)


class Head(nn.Module):
    """What follows the trunk: ``out`` (cut ``decoder1``) or ``decoder1`` + ``out`` (cut ``pre-decoder1``)."""

    def __init__(self, model: SwinUNETR, cut: str):
        super().__init__()
        _check_cut(cut)
        self.cut = cut
        if cut == "pre-decoder1":
            self.decoder1 = model.decoder1
        self.out = model.out

    def forward(self, *features: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """``head(trunk(x))`` works for both cuts; ``pre-decoder1`` also takes ``head(enc0, dec0)``."""
        if len(features) == 1 and isinstance(features[0], (tuple, list)):
            features = tuple(features[0])
        if self.cut == "pre-decoder1":
            enc0, dec0 = features
            return self.out(self.decoder1(dec0, enc0))
        (feats,) = features
        return self.out(feats)


def split(model: SwinUNETR, cut: str) -> tuple[Trunk, Head]:
    """Trunk and head of `model` at `cut`, sharing its submodules."""
    return Trunk(model, cut), Head(model, cut)


def count_params(module: nn.Module) -> int:
    """Number of parameter values (each shared parameter counted once)."""
    return sum(p.numel() for p in module.parameters())


def feature_shapes(spec: ModelSpec, cut: str, window: tuple[int, int, int] | None = None) -> tuple[tuple[int, ...], ...]:
    """Per-sample shapes (C, D, H, W) of what the trunk returns for one window of `spec`."""
    _check_cut(cut)
    d, h, w = window or spec.window
    full = (spec.feature_size, d, h, w)
    if cut == "decoder1":
        return (full,)
    return full, (spec.feature_size, d // 2, h // 2, w // 2)


def _check_input_size(spatial: tuple[int, ...], patch_size: int) -> None:
    # SwinUNETR halves the resolution five times; MONAI raises the same check in its forward.
    step = patch_size**5
    if any(s % step for s in spatial):
        raise InputError(
            f"input spatial shape {spatial} is not a multiple of {step} on every side (SwinUNETR downsamples {step}x)",
            fix=f"use a window whose sides are multiples of {step}, e.g. 96,96,96",
        )

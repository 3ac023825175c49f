"""The few-shot adapters of the FSEFT paper, as small modules over cached trunk features.

Every adapter maps the features of one trunk cut (`CUT_OF`) to one organ logit map ``(N, 1, D, H, W)`` and
ends in a `LinearProbe` (a 1x1x1 conv to one channel). Parameter counts at ``feature_size=48``:

====================  ==============  ==================================================================
kind                  cut             trainable parameters
====================  ==============  ==================================================================
``lp``                decoder1        49 (the 1x1x1 conv 48 -> 1)
``spatial``           decoder1        124,416 (two bias-free 3x3x3 convs 48 -> 48) + 49 head
``decoder-block``     pre-decoder1    209,664 (a fresh, randomly initialised ``decoder1``) + 49 head
``ft-last``           pre-decoder1    209,664 (``decoder1`` copied from the checkpoint) + 49 head
====================  ==============  ==================================================================

``lp`` and ``spatial`` follow the code release (jusiro/fewshot-finetuning: ``fseft/modeling/heads.py``,
``fseft/modeling/blackbox/Adapter.py``): the spatial adapter is ``x + conv2(relu(conv1(x)))`` with ``conv2``
zero-initialised, so at initialisation it is the identity and the adapter starts from what its head alone
predicts. ``decoder-block`` is the paper's "Adapter (209.6K)": a MONAI ``UnetrUpBlock`` shaped exactly like
SwinUNETR's ``decoder1``, randomly initialised; ``ft-last`` is the same block started from the pretrained
``decoder1`` (the paper's FT-Last baseline).

Zero-shot head: when the pretrained model's 29-class head knows the organ (``class_index``), the head's
row for that class is copied into the adapter's `LinearProbe` (the code release's
``retrieve_zeroshot_weights``). With the spatial adapter's identity start, ``spatial`` and ``lp`` then
reproduce the pretrained model's own prediction for the organ before any training; ``ft-last`` does too.
Without it (a novel organ), the head keeps PyTorch's default random init, drawn from the caller's torch
seed.

Each module declares ``cut`` (which trunk features it takes) and ``halo`` (how many voxels of context on
each side one output voxel depends on, in the output grid): the query size estimator uses it to evaluate
the adapter chunk by chunk without edge errors.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
from monai.networks.blocks import UnetrUpBlock
from torch import Tensor, nn

from edgeseg.runtime.errors import InputError

__all__ = [
    "ADAPTERS",
    "CUT_OF",
    "LR",
    "DecoderBlockAdapter",
    "LinearProbe",
    "SpatialAdapter",
    "build_adapter",
    "count_trainable",
    "resolve_kind",
]

ADAPTERS: tuple[str, ...] = ("lp", "spatial", "decoder-block", "ft-last")
CUT_OF: dict[str, str] = {"lp": "decoder1", "spatial": "decoder1", "decoder-block": "pre-decoder1", "ft-last": "pre-decoder1"}
# Default learning rates of the code release (fseft/configs.py): the linear probe 1e-2, everything else 1e-4.
LR: dict[str, float] = {"lp": 1e-2, "spatial": 1e-4, "decoder-block": 1e-4, "ft-last": 1e-4}

HEAD_WEIGHT = "out.conv.conv.weight"
HEAD_BIAS = "out.conv.conv.bias"
DECODER1_PREFIX = "decoder1."


def _unpack(features: tuple) -> tuple:
    # Accept adapter(a, b) and adapter((a, b)) alike, as the trunk returns a tuple for pre-decoder1.
    if len(features) == 1 and isinstance(features[0], (tuple, list)):
        return tuple(features[0])
    return features


class LinearProbe(nn.Module):
    """A 1x1x1 conv ``channels -> 1``: one organ logit per voxel (``channels + 1`` parameters)."""

    kind = "lp"
    cut = "decoder1"
    halo = 0

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv3d(channels, 1, kernel_size=1)

    @torch.no_grad()
    def init_from_head(self, out_conv_weight: Tensor, out_conv_bias: Tensor | None, class_index: int) -> LinearProbe:
        """Copy row `class_index` of a pretrained 1x1x1 head (weight ``(K, C, 1, 1, 1)``, bias ``(K,)``)."""
        w = torch.as_tensor(out_conv_weight)
        if w.dim() == 2:  # a Linear-style (K, C) head
            w = w[:, :, None, None, None]
        if w.dim() != 5 or tuple(w.shape[1:]) != (self.channels, 1, 1, 1):
            raise InputError(
                f"pretrained head weight has shape {tuple(w.shape)}; expected (K, {self.channels}, 1, 1, 1)",
                fix="use a checkpoint whose feature_size matches the adapter's",
            )
        k = w.shape[0]
        if not 0 <= class_index < k:
            raise InputError(
                f"class index {class_index} is outside the pretrained head's {k} classes",
                fix=f"use a class index in 0..{k - 1}, or none for a novel organ",
            )
        self.conv.weight.copy_(w[class_index : class_index + 1].to(self.conv.weight.dtype))
        if out_conv_bias is None:
            self.conv.bias.zero_()
        else:
            self.conv.bias.copy_(torch.as_tensor(out_conv_bias)[class_index : class_index + 1].to(self.conv.bias.dtype))
        return self

    def forward(self, *features: Tensor) -> Tensor:
        (x,) = _unpack(features)
        return self.conv(x)


class SpatialAdapter(nn.Module):
    """``head(x + conv2(relu(conv1(x))))``: two bias-free 3x3x3 convs C -> C, ``conv2`` zero-initialised.

    At initialisation the residual branch is zero, so the output is the head applied to the trunk features.
    """

    kind = "spatial"
    cut = "decoder1"
    halo = 2  # two 3x3x3 convs

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False)
        nn.init.zeros_(self.conv2.weight)
        self.head = LinearProbe(channels)

    def adapt(self, x: Tensor) -> Tensor:
        """The adapted features (before the head)."""
        return x + self.conv2(torch.relu(self.conv1(x)))

    def forward(self, *features: Tensor) -> Tensor:
        (x,) = _unpack(features)
        return self.head(self.adapt(x))


class DecoderBlockAdapter(nn.Module):
    """A SwinUNETR ``decoder1``-shaped block on ``(enc0, dec0)``, then a `LinearProbe` head.

    ``kind="decoder-block"``: the block is randomly initialised (the paper's adapter);
    ``kind="ft-last"``: the caller loads the checkpoint's ``decoder1`` into it (`init_from_decoder1`).
    The block has instance norms, so its output at a voxel also depends on the statistics of the whole
    input it is given (a 96^3 window at inference), not only on its 2-voxel neighbourhood.
    """

    cut = "pre-decoder1"
    halo = 2  # two 3x3x3 convs at full resolution after the 2x2x2 transposed conv (instance norms aside)
    instance_norm = True

    def __init__(self, feature_size: int, *, kind: str = "decoder-block"):
        super().__init__()
        if kind not in ("decoder-block", "ft-last"):
            raise InputError(f"DecoderBlockAdapter kind {kind!r} is not 'decoder-block' or 'ft-last'")
        self.kind = kind
        self.channels = feature_size
        self.block = UnetrUpBlock(
            spatial_dims=3, in_channels=feature_size, out_channels=feature_size, kernel_size=3,
            upsample_kernel_size=2, norm_name="instance", res_block=True,
        )
        self.head = LinearProbe(feature_size)

    def init_from_decoder1(self, decoder1_state: Mapping[str, Tensor]) -> DecoderBlockAdapter:
        """Load a SwinUNETR ``decoder1`` state dict (keys without the ``decoder1.`` prefix); a copy, never shared."""
        own = self.block.state_dict()
        missing = sorted(set(own) - set(decoder1_state))
        unexpected = sorted(set(decoder1_state) - set(own))
        if missing or unexpected:
            raise InputError(
                f"the checkpoint's decoder1 does not match the decoder block (missing {missing[:4]}, "
                f"unexpected {unexpected[:4]})",
                fix="use a SwinUNETR checkpoint (MONAI layout, loaded by edgeseg.model.checkpoint)",
            )
        for key, value in decoder1_state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise InputError(
                    f"decoder1.{key} has shape {tuple(value.shape)}, the block expects {tuple(own[key].shape)}",
                    fix="build the adapter with the checkpoint's feature_size",
                )
        self.block.load_state_dict({k: v.detach().clone() for k, v in decoder1_state.items()})
        return self

    def forward(self, *features: Tensor) -> Tensor:
        """``features`` in the order the pre-decoder1 trunk returns them: ``(enc0, dec0)``."""
        enc0, dec0 = _unpack(features)
        return self.head(self.block(dec0, enc0))


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameter values (``requires_grad``), each shared parameter counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def resolve_kind(kind: str) -> str:
    """`kind` as one of `ADAPTERS` (case and ``_``/``-`` forgiven), or InputError naming the closest one."""
    norm = str(kind).strip().lower().replace("_", "-")
    if norm in ADAPTERS:
        return norm
    close = difflib.get_close_matches(norm, ADAPTERS, n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(
        f"unknown adapter {kind!r}{hint} choices: {', '.join(ADAPTERS)}",
        fix=f"use one of {', '.join(ADAPTERS)}" + (f" (closest: {close[0]})" if close else ""),
    )


def _state_dict_of(pretrained) -> Mapping[str, Tensor]:
    if isinstance(pretrained, nn.Module):
        return pretrained.state_dict()
    if isinstance(pretrained, Mapping):
        return pretrained
    raise InputError(
        f"pretrained must be a SwinUNETR model or its state dict, not {type(pretrained).__name__}",
        fix="load the checkpoint with edgeseg.model.checkpoint.load_checkpoint and pass the model",
    )


def build_adapter(kind: str, *, feature_size: int, pretrained=None, class_index: int | None = None) -> nn.Module:
    """A fresh adapter of `kind` over features of `feature_size` channels.

    `pretrained` (a loaded SwinUNETR or its MONAI-named state dict) supplies ``decoder1`` for ``ft-last``
    (required there) and, with `class_index`, the zero-shot head row for every kind. Everything else is
    randomly initialised from the caller's torch seed. ``forward(*features)`` takes the cut's outputs in
    the order the trunk returns them: ``(features,)`` for decoder1, ``(enc0, dec0)`` for pre-decoder1.
    """
    kind = resolve_kind(kind)
    if not isinstance(feature_size, int) or feature_size <= 0:
        raise InputError(f"feature_size must be a positive integer, not {feature_size!r}")
    sd = _state_dict_of(pretrained) if pretrained is not None else None
    if kind == "ft-last" and sd is None:
        raise InputError("adapter 'ft-last' starts from the checkpoint's decoder1 but no pretrained model was given",
                         fix="pass pretrained=<loaded SwinUNETR>, or use 'decoder-block' for a random block")
    if class_index is not None and sd is None:
        raise InputError(f"class_index={class_index} needs the pretrained head, but no pretrained model was given",
                         fix="pass pretrained=<loaded SwinUNETR>, or leave class_index unset for a novel organ")

    if kind == "lp":
        module: nn.Module = LinearProbe(feature_size)
        probe = module
    elif kind == "spatial":
        module = SpatialAdapter(feature_size)
        probe = module.head
    else:
        module = DecoderBlockAdapter(feature_size, kind=kind)
        probe = module.head
        if kind == "ft-last":
            dec1 = {k[len(DECODER1_PREFIX):]: v for k, v in sd.items() if k.startswith(DECODER1_PREFIX)}
            if not dec1:
                raise InputError("the pretrained weights have no decoder1.* entries",
                                 fix="use a full SwinUNETR checkpoint (the SSL encoder alone has no decoder)")
            module.init_from_decoder1(dec1)

    if class_index is not None:
        if HEAD_WEIGHT not in sd:
            raise InputError(f"the pretrained weights have no segmentation head ({HEAD_WEIGHT})",
                             fix="use a checkpoint with its head, or leave class_index unset")
        probe.init_from_head(sd[HEAD_WEIGHT], sd.get(HEAD_BIAS), int(class_index))
    return module

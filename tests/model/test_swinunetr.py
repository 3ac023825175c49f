"""SwinUNETR construction and the trunk/head split: bit-exact against MONAI's own forward."""

from __future__ import annotations

import pytest
import torch
from edgeseg.runtime.errors import InputError

from edgeseg.model.spec import CUTS, TINY_TEST_SPEC, ModelSpec
from edgeseg.model.swinunetr import (
    Head,
    Trunk,
    build_swinunetr,
    count_params,
    feature_shapes,
    split,
)
from tests.helpers import TINY

torch.set_num_threads(2)



@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_swinunetr(TINY).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(1, 1, 64, 64, 64)


@pytest.fixture(scope="module")
def y_ref(tiny_model, x) -> torch.Tensor:
    with torch.inference_mode():
        return tiny_model(x)


def test_build_follows_the_spec(tiny_model):
    sd = tiny_model.state_dict()
    assert sd["swinViT.patch_embed.proj.weight"].shape == (12, 1, 2, 2, 2)
    assert sd["out.conv.conv.weight"].shape == (3, 12, 1, 1, 1)
    assert len(tiny_model.swinViT.layers1[0].blocks) == 2 and len(tiny_model.swinViT.layers4[0].blocks) == 1
    assert sd["swinViT.layers3.0.blocks.0.attn.relative_position_bias_table"].shape == (13**3, 12)
    # The Swin attention window comes from the spec, not MONAI's default of 7.
    five = build_swinunetr(ModelSpec(**{**TINY_TEST_SPEC, "num_heads": (3, 6, 12, 24)}, swin_window=5,
                                     out_channels=3, class_names=("a", "b", "c")))
    assert five.state_dict()["swinViT.layers1.0.blocks.0.attn.relative_position_bias_table"].shape == (9**3, 3)


@pytest.mark.parametrize("cut", CUTS)
def test_head_of_trunk_is_bit_identical_to_the_model(tiny_model, x, y_ref, cut):
    trunk, head = split(tiny_model, cut)
    with torch.inference_mode():
        feats = trunk(x)
        y = head(feats)
    assert y.shape == (1, 3, 64, 64, 64)
    assert torch.equal(y, y_ref)
    if cut == "decoder1":
        assert isinstance(feats, torch.Tensor) and feats.shape == (1, 12, 64, 64, 64)
        got = (tuple(feats.shape[1:]),)
    else:
        enc0, dec0 = feats
        assert enc0.shape == (1, 12, 64, 64, 64) and dec0.shape == (1, 12, 32, 32, 32)
        got = (tuple(enc0.shape[1:]), tuple(dec0.shape[1:]))
        with torch.inference_mode():
            assert torch.equal(head(enc0, dec0), y_ref)  # two-argument form (for export)
    assert feature_shapes(TINY, cut) == got


@pytest.mark.parametrize("cut", CUTS)
def test_split_shares_the_models_modules(tiny_model, cut):
    trunk, head = split(tiny_model, cut)
    assert trunk.swinViT is tiny_model.swinViT and head.out is tiny_model.out
    assert (trunk.decoder1 if cut == "decoder1" else head.decoder1) is tiny_model.decoder1
    assert not hasattr(trunk, "out") and not (cut == "pre-decoder1" and hasattr(trunk, "decoder1"))
    # No copies: every parameter is the model's own tensor, and trunk + head cover the model exactly.
    model_ptrs = {p.data_ptr() for p in tiny_model.parameters()}
    trunk_ptrs = {p.data_ptr() for p in trunk.parameters()}
    head_ptrs = {p.data_ptr() for p in head.parameters()}
    assert trunk_ptrs | head_ptrs == model_ptrs and not trunk_ptrs & head_ptrs
    assert count_params(trunk) + count_params(head) == count_params(tiny_model)


def test_unknown_cut_names_the_value_and_the_choices(tiny_model):
    for make in (Trunk, Head, split):
        with pytest.raises(InputError) as e:
            make(tiny_model, "decoder2")
        assert "'decoder2'" in e.value.message and all(c in e.value.message for c in CUTS)
    with pytest.raises(InputError):
        feature_shapes(TINY, "out")


def test_input_not_a_multiple_of_32_is_refused(tiny_model):
    trunk, _ = split(tiny_model, "decoder1")
    with pytest.raises(InputError, match="multiple of 32"):
        trunk(torch.zeros(1, 1, 64, 64, 48))


def test_parameter_counts_at_feature_size_48():
    spec = ModelSpec()  # the paper's foundation model: feature_size 48, 29 classes
    model = build_swinunetr(spec)
    assert count_params(model.decoder1) == 209_664  # the paper's "Adapter / FT-Last (209.6K)"
    assert count_params(model.out) == 48 * 29 + 29 == 1_421
    assert 62_000_000 < count_params(model) < 62_300_000  # "62M parameters"
    trunk, head = split(model, "pre-decoder1")
    assert count_params(head) == 209_664 + 1_421
    assert count_params(split(model, "decoder1")[1]) == 1_421
    assert count_params(trunk) == count_params(model) - 209_664 - 1_421
    assert feature_shapes(spec, "decoder1") == ((48, 96, 96, 96),)
    assert feature_shapes(spec, "pre-decoder1") == ((48, 96, 96, 96), (48, 48, 48, 48))

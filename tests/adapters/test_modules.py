"""The adapters: parameter counts of the paper, identity / zero-shot starts, FT-Last's copied weights."""

from __future__ import annotations

import pytest
import torch
from edgeseg.runtime.errors import InputError

from edgeseg.adapters import (
    ADAPTERS,
    CUT_OF,
    LR,
    DecoderBlockAdapter,
    LinearProbe,
    SpatialAdapter,
    build_adapter,
    count_trainable,
)
from edgeseg.model.spec import CUTS, ModelSpec
from edgeseg.model.swinunetr import build_swinunetr, split
from tests.helpers import TINY

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_swinunetr(TINY).eval()


def test_registry_is_consistent():
    assert ADAPTERS == ("lp", "spatial", "decoder-block", "ft-last")
    assert set(CUT_OF) == set(ADAPTERS) == set(LR) and set(CUT_OF.values()) <= set(CUTS)
    assert LR["lp"] == 1e-2 and all(LR[k] == 1e-4 for k in ADAPTERS if k != "lp")


def test_parameter_counts_at_feature_size_48():
    lp = build_adapter("lp", feature_size=48)
    assert isinstance(lp, LinearProbe) and count_trainable(lp) == 49
    spatial = build_adapter("spatial", feature_size=48)
    assert isinstance(spatial, SpatialAdapter)
    assert count_trainable(spatial) - count_trainable(spatial.head) == 124_416 and count_trainable(spatial.head) == 49
    block = build_adapter("decoder-block", feature_size=48)
    assert isinstance(block, DecoderBlockAdapter)
    assert count_trainable(block.block) == 209_664 and count_trainable(block) == 209_664 + 49
    # Frozen parameters do not count.
    for p in block.block.parameters():
        p.requires_grad_(False)
    assert count_trainable(block) == 49


def test_cut_and_halo_declared():
    for kind in ("lp", "spatial", "decoder-block"):
        m = build_adapter(kind, feature_size=12)
        assert m.cut == CUT_OF[kind] and m.kind == kind
    assert LinearProbe.halo == 0 and SpatialAdapter.halo == 2


def test_unknown_kind_names_choices_and_closest():
    with pytest.raises(InputError) as e:
        build_adapter("spacial", feature_size=48)
    assert "'spatial'" in e.value.message and "decoder-block" in e.value.message
    assert isinstance(build_adapter("Decoder_Block", feature_size=12), DecoderBlockAdapter)
    with pytest.raises(InputError, match="ft-last"):
        build_adapter("ft-last", feature_size=12)  # needs the checkpoint
    with pytest.raises(InputError, match="pretrained"):
        build_adapter("lp", feature_size=12, class_index=0)


def test_spatial_adapter_is_identity_at_init():
    torch.manual_seed(3)
    m = SpatialAdapter(6)
    x = torch.randn(2, 6, 7, 6, 5)
    assert torch.equal(m.adapt(x), x)
    assert torch.equal(m(x), m.head(x))
    assert m(x).shape == (2, 1, 7, 6, 5)


def test_lp_zero_shot_init_reproduces_the_pretrained_logit(tiny_model):
    torch.manual_seed(4)
    feats = torch.randn(1, 12, 8, 8, 8)
    _, head = split(tiny_model, "decoder1")
    with torch.no_grad():
        ref = head(feats)
        for ci in range(3):
            lp = build_adapter("lp", feature_size=12, pretrained=tiny_model, class_index=ci)
            assert torch.equal(lp(feats), ref[:, ci : ci + 1])
            # Same through the state dict, and for the spatial adapter (identity at init).
            sp = build_adapter("spatial", feature_size=12, pretrained=tiny_model.state_dict(), class_index=ci)
            assert torch.equal(sp(feats), ref[:, ci : ci + 1])
    with pytest.raises(InputError, match="outside"):
        build_adapter("lp", feature_size=12, pretrained=tiny_model, class_index=3)
    with pytest.raises(InputError, match="feature_size"):
        build_adapter("lp", feature_size=24, pretrained=tiny_model, class_index=0)


def test_random_init_follows_the_callers_seed():
    torch.manual_seed(7)
    a = build_adapter("lp", feature_size=12)
    torch.manual_seed(7)
    b = build_adapter("lp", feature_size=12)
    assert torch.equal(a.conv.weight, b.conv.weight) and torch.equal(a.conv.bias, b.conv.bias)


def test_decoder_block_output_shape():
    torch.manual_seed(5)
    m = build_adapter("decoder-block", feature_size=12)
    enc0, dec0 = torch.randn(2, 12, 16, 16, 16), torch.randn(2, 12, 8, 8, 8)
    with torch.no_grad():
        y = m(enc0, dec0)
        assert y.shape == (2, 1, 16, 16, 16)
        assert torch.equal(m((enc0, dec0)), y)  # the trunk's tuple works too


def test_ft_last_copies_decoder1_and_reproduces_the_pretrained_head(tiny_model):
    torch.manual_seed(6)
    m = build_adapter("ft-last", feature_size=12, pretrained=tiny_model, class_index=2)
    ref = tiny_model.decoder1.state_dict()
    got = m.block.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    # A copy: training the adapter never touches the model.
    assert all(p.data_ptr() != q.data_ptr() for p in m.parameters() for q in tiny_model.parameters())
    assert count_trainable(m) == count_trainable(build_adapter("decoder-block", feature_size=12))
    _, head = split(tiny_model, "pre-decoder1")
    enc0, dec0 = torch.randn(1, 12, 16, 16, 16), torch.randn(1, 12, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(m(enc0, dec0), head(enc0, dec0)[:, 2:3], atol=1e-6)
    # decoder-block with the same checkpoint: random block (differs), head row copied.
    d = build_adapter("decoder-block", feature_size=12, pretrained=tiny_model, class_index=2)
    assert not torch.equal(d.block.state_dict()["transp_conv.conv.weight"], ref["transp_conv.conv.weight"])
    assert torch.equal(d.head.conv.weight, tiny_model.out.conv.conv.weight[2:3])


def test_ft_last_counts_at_feature_size_48_match_decoder1():
    model48 = build_swinunetr(ModelSpec(depths=(1, 1, 1, 1)))  # built, never run
    m = build_adapter("ft-last", feature_size=48, pretrained=model48, class_index=0)
    assert count_trainable(m.block) == sum(p.numel() for p in model48.decoder1.parameters()) == 209_664
    assert count_trainable(m) == 209_664 + 49

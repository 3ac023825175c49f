"""Pretraining's pieces (crops, loss, Dice, fp16 weights, the model card) and the shipped model itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeseg.assets import DEFAULT_MODEL, DEFAULT_MODEL_CARD
from edgeseg.train.pretrain import (
    BASE_ORGANS,
    NOVEL_ORGANS,
    REPORT_NAME,
    PreparedCase,
    PretrainConfig,
    dice_per_organ,
    model_card,
    multilabel_loss,
    sample_crop,
)


def _case(shape=(40, 50, 30)) -> PreparedCase:
    label = np.zeros(shape, np.uint8)
    label[5:10, 5:10, 5:10] = BASE_ORGANS.index("spleen") + 1
    label[20:30, 20:40, 10:20] = BASE_ORGANS.index("liver") + 1
    label[0:3, 0:3, 0:3] = 255  # a novel organ: never a target channel
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    return PreparedCase("c", "source", image, label, (3.0, 3.0, 3.0), {})


def test_crops_have_the_window_shape_and_organ_centred_crops_hold_an_organ():
    case, rng = _case(), np.random.default_rng(0)
    for _ in range(10):
        image, target = sample_crop(case, 32, rng, fg_fraction=1.0)
        assert image.shape == (32, 32, 32) and target.shape == (len(BASE_ORGANS), 32, 32, 32)
        assert target[:, 16, 16, 16].sum() == 1  # the crop centre is a voxel of some base organ
    # the novel organ's voxels are background for every channel
    assert set(np.unique(target)) <= {0.0, 1.0}


def test_multilabel_loss_weighs_each_organ_alike_and_is_low_for_a_right_answer():
    target = torch.zeros(1, 3, 8, 8, 8)
    target[0, 0, :6] = 1  # a large organ
    target[0, 1, 0, 0, 0] = 1  # a one-voxel organ
    right = (target * 2 - 1) * 20
    wrong_small = right.clone()
    wrong_small[0, 1] = -20  # misses the small organ only
    assert multilabel_loss(right, target) < 0.35  # empty channel 2 adds nothing: smoothed Dice 1
    # missing the one-voxel organ costs a third of a channel-mean Dice (smoothed: 0.5 / 3), where a Dice
    # pooled over channels would hardly notice it
    from edgeseg.train.losses import soft_dice_loss

    assert multilabel_loss(wrong_small, target) > 0.15
    assert soft_dice_loss(wrong_small, target) < 0.01


def test_dice_per_organ_skips_absent_organs():
    label = np.zeros((4, 4, 4), np.uint8)
    label[:2] = 1
    prob = np.zeros((len(BASE_ORGANS), 4, 4, 4), np.float32)
    prob[0, :1] = 0.9
    d = dice_per_organ(prob, label)
    assert d["liver"] == pytest.approx(2 * 16 / (16 + 32)) and d["spleen"] is None


def test_weights_saved_as_fp16_without_derived_buffers_load_back(tmp_path):
    from edgeseg.model.checkpoint import load_checkpoint, save_checkpoint
    from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr

    spec = ModelSpec(**TINY_TEST_SPEC, out_channels=2, class_names=("liver", "spleen"))
    torch.manual_seed(0)
    model = build_swinunetr(spec)
    path = save_checkpoint(model, spec, tmp_path / "m.safetensors", dtype=torch.float16, drop_derived=True)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float16 for k in keys if "weight" in k)
    assert not any(k.endswith("relative_position_index") for k in keys)
    loaded, loaded_spec, report = load_checkpoint(path)
    assert loaded_spec == spec and not report.missing
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v.half().to(v.dtype) if v.is_floating_point() else v)


def test_model_card_is_rendered_from_the_report():
    cfg = PretrainConfig()
    report = {
        "model_spec": cfg.model_spec().to_dict(), "config": cfg.to_dict(), "params": 123,
        "weights": {"dtype": "float16", "bytes": 2**20, "sha256": "ab" * 32},
        "data": {"novel_organs_never_labelled": list(NOVEL_ORGANS)},
        "loss_curve": [1.0, 0.5], "timings": {"data_seconds": 1, "train_seconds": 2, "validation_seconds": 3,
                                               "total_seconds": 60},
        "host": {"cpu": "X"}, "threads": 2, "torch": "t", "peak_rss_gib": 1.0,
        "validation_dice": {"source": {"per_organ": {o: 0.5 for o in BASE_ORGANS}, "mean": 0.5},
                            "target": {"per_organ": {o: (None if o == "urinary_bladder" else 0.25) for o in BASE_ORGANS},
                                       "mean": 0.25}},
    }
    card = model_card(report)
    assert "| liver | 0.500 | 0.250 |" in card and "| urinary_bladder | 0.500 | - |" in card
    assert "not for clinical use" in card and "gallbladder" in card and "total 1.0 min" in card


def test_the_shipped_model_is_small_loads_and_matches_its_card():
    from edgeseg.model.checkpoint import load_checkpoint, sha256_file

    assert DEFAULT_MODEL.stat().st_size <= 32 * 2**20
    model, spec, report = load_checkpoint(DEFAULT_MODEL, need_head=True)
    assert spec.class_names == BASE_ORGANS and not report.missing
    meta = json.loads((DEFAULT_MODEL.parent / REPORT_NAME).read_text())
    assert meta["weights"]["sha256"] == sha256_file(DEFAULT_MODEL)
    # the hour on 2 cores: the recorded run shared its cores, so the card gives the time alone too
    assert meta["projected_total_seconds_alone"] <= 3600 and "alone" in meta["timing_note"]
    card = DEFAULT_MODEL_CARD.read_text()
    assert meta["weights"]["sha256"][:16] in card

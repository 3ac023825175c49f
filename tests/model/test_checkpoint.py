"""Checkpoint loading: every public key layout, refusal of pickled code, damaged files, safetensors round trip."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from edgeseg.runtime.errors import InputError

from edgeseg.model.checkpoint import (
    CONTAINER_KEYS,
    infer_spec,
    load_checkpoint,
    load_state_dict_file,
    read_checkpoint,
    save_checkpoint,
    sha256_file,
)
from edgeseg.model.spec import TINY_TEST_SPEC, UNIVERSAL_CLASSES, ModelSpec
from edgeseg.model.swinunetr import build_swinunetr, split
from tests.helpers import TINY

torch.set_num_threads(2)

TINY29 = ModelSpec(**TINY_TEST_SPEC, out_channels=29)  # FSEFT's 29-class head on a tiny trunk

# What the CLIP-Driven Universal Model / SuPreM files carry beside the SwinUNETR backbone.
UNIVERSAL_EXTRAS = {
    "organ_embedding": (29, 512),
    "text_to_vision.weight": (256, 512), "text_to_vision.bias": (256,),
    "controller.weight": (153, 512, 1, 1, 1), "controller.bias": (153,),
    "precls_conv.0.weight": (12,), "precls_conv.0.bias": (12,),
    "precls_conv.2.weight": (8, 12, 1, 1, 1), "precls_conv.2.bias": (8,),
    "GAP.0.weight": (192,), "GAP.0.bias": (192,), "GAP.3.weight": (256, 192, 1, 1, 1), "GAP.3.bias": (256,),
}
# The self-supervised pretraining heads in the SSL file (rotation, contrastive, reconstruction).
SSL_EXTRAS = {
    "rotation_head.weight": (4, 192), "rotation_head.bias": (4,),
    "contrastive_head.weight": (512, 192), "contrastive_head.bias": (512,),
    "conv.0.weight": (96, 192, 3, 3, 3), "conv.0.bias": (96,),
}


def _seeded_model(spec: ModelSpec, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_swinunetr(spec).eval()


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    return _seeded_model(TINY, 0)


@pytest.fixture(scope="module")
def source29() -> torch.nn.Module:
    return _seeded_model(TINY29, 7)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(1, 1, 64, 64, 64)


@pytest.fixture(scope="module")
def y_ref(source, x) -> torch.Tensor:
    with torch.inference_mode():
        return source(x)


def _extras(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: torch.randn(shape) for k, shape in shapes.items()}


def _same_state(a: torch.nn.Module, b: torch.nn.Module, skip: str | None = None) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if not (skip and k.startswith(skip))]
    return set(keys) <= set(sb) and all(torch.equal(sa[k], sb[k]) for k in keys)


def _output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


# --- every public layout -------------------------------------------------------------------------


def _btcv(sd):  # MONAI BTCV fine-tuned: `state_dict` beside training metadata (numpy scalars included)
    return {"epoch": 5000, "best_acc": np.float64(0.8123), "state_dict": OrderedDict(sd)}


def _plain(sd):  # a plain MONAI state dict, as model.state_dict() saves it
    return OrderedDict(sd)


def _swin_vit(sd):  # a release spelling the encoder `swin_vit`, DataParallel-wrapped, under `model`
    return {"model": {"module." + k.replace("swinViT.", "swin_vit.", 1): v for k, v in sd.items()}}


@pytest.mark.parametrize(
    ("make", "layout", "container"),
    [(_btcv, "monai-btcv", "state_dict"), (_plain, "monai", None), (_swin_vit, "swin_vit", "model")],
)
def test_full_model_layouts_load_exactly(tmp_path, source, x, y_ref, make, layout, container):
    path = tmp_path / "ckpt.pt"
    torch.save(make(source.state_dict()), path)
    model, spec, report = load_checkpoint(path)
    assert (report.layout, report.container, report.spec_source) == (layout, container, "inferred")
    assert report.missing == [] and report.unexpected == [] and report.ignored == [] and report.head_loaded
    assert (spec.feature_size, spec.depths, spec.num_heads, spec.out_channels) == (12, (2, 1, 1, 1), (3, 6, 12, 24), 3)
    assert not model.training
    assert _same_state(source, model)
    assert torch.equal(_output(model, x), y_ref)


def test_fseft_release_layout(tmp_path, source29, x):
    # FSEFT: `module.` prefix, 29-class head `classifier.weight` [29, F, 1, 1, 1] / `classifier.bias`.
    sd = {"module." + k.replace("out.conv.conv.", "classifier."): v for k, v in source29.state_dict().items()}
    assert sd["module.classifier.weight"].shape == (29, 12, 1, 1, 1)
    torch.save(sd, tmp_path / "fseft.pth")
    model, spec, report = load_checkpoint(tmp_path / "fseft.pth", need_head=True)
    assert report.layout == "fseft" and report.head_loaded and report.missing == report.unexpected == []
    assert report.renamed == len(sd)
    assert spec.out_channels == 29 and spec.class_names == UNIVERSAL_CLASSES
    assert _same_state(source29, model)
    assert torch.equal(_output(model, x), _output(source29, x))


def test_universal_model_and_suprem_layout(tmp_path, source, x):
    # `net`, `module.backbone.` prefix, no `out` head (its head is text-driven), extra tensors beside it.
    backbone = {"module.backbone." + k: v for k, v in source.state_dict().items() if not k.startswith("out.")}
    torch.save({"net": {**backbone, **_extras(UNIVERSAL_EXTRAS, "module.")}, "epoch": 1}, tmp_path / "suprem.pth")

    model, spec, report = load_checkpoint(tmp_path / "suprem.pth", TINY)
    assert (report.layout, report.container, report.spec_source) == ("universal-model", "net", "given")
    assert sorted(report.ignored) == sorted(UNIVERSAL_EXTRAS) and report.unexpected == []
    assert report.missing == ["out.conv.conv.weight", "out.conv.conv.bias"] and not report.head_loaded
    assert _same_state(source, model, skip="out.")
    trunk, ref_trunk = split(model, "decoder1")[0], split(source, "decoder1")[0]
    assert torch.equal(_output(trunk, x), _output(ref_trunk, x))
    assert report.by_module()["organ_embedding"]["ignored"] == 1 and report.by_module()["out"]["missing"] == 2

    # Without a spec the class count is unknown: a 1-class placeholder head, said in the report.
    _, inferred, report = load_checkpoint(tmp_path / "suprem.pth")
    assert inferred.out_channels == 1 and inferred.feature_size == 12 and any("placeholder" in n for n in report.notes)
    with pytest.raises(InputError, match="no segmentation head"):
        load_checkpoint(tmp_path / "suprem.pth", TINY, need_head=True)


def _ssl_file(source: torch.nn.Module) -> dict:
    # MONAI SSL model_swinvit.pt: `state_dict`, `module.` + bare encoder keys, timm `mlp.fc1/fc2`, pretraining heads.
    enc = {}
    for k, v in source.state_dict().items():
        if k.startswith("swinViT.") and not k.endswith("relative_position_index"):  # derived buffers left out
            enc["module." + k.removeprefix("swinViT.").replace("mlp.linear", "mlp.fc")] = v
    assert "module.layers1.0.blocks.0.mlp.fc1.weight" in enc and "module.patch_embed.proj.weight" in enc
    return {"epoch": 100, "state_dict": {**enc, **_extras(SSL_EXTRAS, "module.")}}


def test_ssl_encoder_is_refused_unless_partial(tmp_path, source):
    path = tmp_path / "model_swinvit.pt"
    torch.save(_ssl_file(source), path)
    with pytest.raises(InputError) as e:
        load_checkpoint(path, TINY)
    msg = e.value.message
    for module in ("encoder1", "encoder10", "decoder5", "decoder1"):
        assert module in msg
    assert "swinViT" not in msg.split("e.g.")[0]  # the encoder itself is complete
    assert "allow_partial" in msg and str(path) in msg

    model, _, report = load_checkpoint(path, TINY, allow_partial=True)
    assert report.layout == "monai-ssl-encoder" and report.container == "state_dict"
    assert sorted(report.unexpected) == sorted(SSL_EXTRAS) and report.ignored == []
    assert {k.split(".")[0] for k in report.missing} == {
        "encoder1", "encoder2", "encoder3", "encoder4", "encoder10",
        "decoder1", "decoder2", "decoder3", "decoder4", "decoder5", "out",
    }
    assert not any(k.endswith("relative_position_index") for k in report.missing)
    # Encoder weights equal the source's (relative_position_index recomputed by MONAI, hence equal too).
    src = source.state_dict()
    got = model.state_dict()
    swin = [k for k in src if k.startswith("swinViT.")]
    assert all(torch.equal(got[k], src[k]) for k in swin)
    assert not torch.equal(got["decoder1.conv_block.conv1.conv.weight"], src["decoder1.conv_block.conv1.conv.weight"])
    counts = report.by_module()
    learned = [k for k in swin if not k.endswith("relative_position_index")]
    assert counts["swinViT.layers1"] == dict(loaded=sum(k.startswith("swinViT.layers1.") for k in learned),
                                            missing=0, unexpected=0, ignored=0)
    assert counts["encoder1"]["missing"] == 3 and counts["rotation_head"]["unexpected"] == 2
    summary = report.summary()
    assert "monai-ssl-encoder" in summary and "missing" in summary and "rotation_head" in summary
    assert any("partial load" in n for n in report.notes)


# --- containers, spec inference, shapes ----------------------------------------------------------


@pytest.mark.parametrize("key", CONTAINER_KEYS)
def test_state_dict_is_unwrapped_from_its_container(tmp_path, source, key):
    sd = source.state_dict()
    torch.save({key: sd, "optimizer": {"state": {}, "lr": 0.1}, "epoch": 3}, tmp_path / "c.ckpt")
    raw = read_checkpoint(tmp_path / "c.ckpt")
    assert raw.container == key and raw.tensors.keys() == sd.keys()
    assert load_state_dict_file(tmp_path / "c.ckpt").keys() == sd.keys()


def test_file_without_a_state_dict_is_refused(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(InputError, match="no state dict") as e:
        load_checkpoint(tmp_path / "opt.pt")
    assert "epoch" in e.value.message and "opt.pt" in e.value.message


def test_infer_spec_recovers_the_architecture():
    spec = ModelSpec(feature_size=24, depths=(1, 2, 1, 3), num_heads=(2, 4, 8, 16), in_channels=2,
                     out_channels=5, swin_window=5, class_names=tuple("vwxyz"))
    inferred = infer_spec(build_swinunetr(spec).state_dict())
    for name in ("feature_size", "depths", "num_heads", "in_channels", "out_channels", "swin_window"):
        assert getattr(inferred, name) == getattr(spec, name), name
    assert inferred.class_names == tuple(f"class_{i}" for i in range(5))
    with pytest.raises(InputError, match="patch embedding"):
        infer_spec({"decoder1.transp_conv.conv.weight": torch.zeros(12, 12, 2, 2, 2)})


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "fs12.pt")
    wider = ModelSpec(**{**TINY_TEST_SPEC, "feature_size": 24}, out_channels=3, class_names=("a", "b", "c"))
    with pytest.raises(InputError) as e:
        load_checkpoint(tmp_path / "fs12.pt", wider)
    msg = e.value.message
    assert "swinViT.patch_embed.proj.weight: checkpoint (12, 1, 2, 2, 2) vs model (24, 1, 2, 2, 2)" in msg
    more_classes = ModelSpec(**TINY_TEST_SPEC, out_channels=4, class_names=tuple("abcd"))
    with pytest.raises(InputError, match=r"out\.conv\.conv\.weight: checkpoint \(3, 12, 1, 1, 1\) vs model \(4, 12, 1, 1, 1\)"):
        load_checkpoint(tmp_path / "fs12.pt", more_classes)


def test_two_keys_mapping_to_one_name_are_refused(tmp_path, source):
    sd = dict(source.state_dict())
    sd["module.out.conv.conv.bias"] = sd["out.conv.conv.bias"].clone()
    torch.save(sd, tmp_path / "dup.pt")
    with pytest.raises(InputError, match="both map to 'out.conv.conv.bias'"):
        load_checkpoint(tmp_path / "dup.pt")


# --- safetensors -----------------------------------------------------------------------------------


def test_safetensors_round_trip_keeps_weights_and_spec(tmp_path, source, x, y_ref):
    path = save_checkpoint(source, TINY, tmp_path / "out" / "model.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]  # no temp file left
    model, spec, report = load_checkpoint(path)
    # The window (64^3) and class names can only come from the metadata: inference would say 96^3, class_0..
    assert spec == TINY and (report.layout, report.spec_source) == ("edgeseg", "metadata")
    assert report.missing == report.unexpected == []
    assert torch.equal(_output(model, x), y_ref)
    with pytest.raises(InputError, match="already exists"):
        save_checkpoint(source, TINY, path)
    with pytest.raises(InputError, match="safetensors"):
        save_checkpoint(source, TINY, tmp_path / "model.pt")


def test_truncated_safetensors_is_refused(tmp_path, source):
    path = save_checkpoint(source, TINY, tmp_path / "model.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        load_checkpoint(cut)
    assert "cut.safetensors" in e.value.message


# --- files that must not load --------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, source):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": source.state_dict(), "hook": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(InputError) as e:
        load_checkpoint(tmp_path / "evil.pt")
    msg = e.value.message
    assert "evil.pt" in msg and "pickled" in msg and "not execute" in msg and "safetensors" in msg
    assert not marker.exists()
    # Guard against a test that cannot fail: a plain unpickler really runs the payload.
    pickle.loads(pickle.dumps(_Payload(tmp_path / "plain_pickle_ran")))
    assert (tmp_path / "plain_pickle_ran").exists()


def test_whole_pickled_module_is_refused(tmp_path, source):
    torch.save(source, tmp_path / "whole_model.pt")  # pickles MONAI classes, not just tensors
    with pytest.raises(InputError, match="not execute"):
        load_checkpoint(tmp_path / "whole_model.pt")


@pytest.mark.parametrize("fraction", [0.5, 0.01])
def test_truncated_torch_file_names_the_file(tmp_path, source, fraction):
    full = tmp_path / "full.pt"
    torch.save(source.state_dict(), full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        load_checkpoint(cut)
    assert str(cut) in e.value.message


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in e.value.message
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF")
    with pytest.raises(InputError, match="unknown checkpoint format"):
        load_checkpoint(tmp_path / "weights.h5")


def test_sha256_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"edgeseg" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"edgeseg" * 1000).hexdigest()
    with pytest.raises(InputError, match="not found"):
        sha256_file(tmp_path / "missing.bin")


@pytest.mark.parametrize("damage,why", [("nan", "hold NaN or Inf"), ("int", "not floating point")])
def test_a_checkpoint_with_nan_or_non_float_weights_is_refused_at_load(tmp_path, source, damage, why):
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    key = next(k for k in sd if k.endswith("weight") and sd[k].is_floating_point())
    sd[key] = sd[key].fill_(float("nan")) if damage == "nan" else sd[key].to(torch.int32)
    path = tmp_path / "damaged.pt"
    torch.save(sd, path)
    with pytest.raises(InputError, match=why) as e:
        load_checkpoint(path)
    assert str(path) in e.value.message and key in e.value.problem

"""`edgeseg adapt` end to end on cached features of a tiny trunk over phantoms: it learns the organ,
writes a checked adapter folder, and the size prior pulls an over-segmenting adapter toward S."""

from __future__ import annotations


import numpy as np
import pytest

from edgeseg.cache import build_cache
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.preprocess import preprocess
from edgeseg.runtime.trunk import open_trunk
from edgeseg.train.adapt import AdaptConfig, adapt
from edgeseg.train.losses import dice_score
from tests.conftest import PRE5


@pytest.fixture(scope="module")
def liver_cache(trunk5, phantoms5, tmp_path_factory):
    support, query = phantoms5
    out = tmp_path_factory.mktemp("adapt-cache") / "liver"
    build_cache(trunk5, support, "liver", out, k=2, seed=0, query=[query], backend="ort", threads=2, context=0,
                log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def held_out(trunk5, phantoms5):
    """The support phantom the cache did not draw, its trunk features and its liver on the model grid."""
    support, _ = phantoms5
    cases = sorted(p for p in support.iterdir() if p.is_dir())
    case = cases[0]  # k=2 of 3 with seed 0 draws s0001 and s0002 (asserted in test_cache)
    prepared = preprocess(case / "ct.nii.gz", PRE5, label=case / "segmentations" / "liver.nii.gz")
    with open_trunk(trunk5, backend="ort", threads=2) as trunk:
        (features,) = trunk.features(prepared.image[None], dtype=np.float32)
    return features, prepared.label > 0


def predict_mask(adapter_dir, features) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(adapter_dir / "adapter.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"features": features[None]})
    return logits[0, 0] > 0


# Measured on this trunk (random weights, seed 0, 5 mm phantoms): spatial 0.76, LP 0.41 held-out Dice.
# A random trunk's features carry little of what a linear probe needs; the 0.8 bar for LP is a
# property of a pretrained trunk (the shipped phantom model), not of this code. These bounds check that
# training learns the organ, far above the untrained adapter, deterministically (seeded, one thread).
@pytest.mark.parametrize("kind,epochs,bound", [("spatial", 60, 0.65), ("lp", 60, 0.3)])
def test_adapter_learns_the_liver_from_two_supports(kind, epochs, bound, liver_cache, held_out, tmp_path):
    features, liver = held_out
    out = tmp_path / kind
    untrained = adapt(liver_cache, tmp_path / "untrained", AdaptConfig(adapter=kind, max_epochs=1, lr=1e-12, seed=0))
    manifest = adapt(liver_cache, out, AdaptConfig(adapter=kind, max_epochs=epochs, crop=32, seed=0, threads=1,
                                                   lr=1e-2 if kind == "lp" else 3e-3))
    dice = dice_score(predict_mask(out, features), liver)
    baseline = dice_score(predict_mask(tmp_path / "untrained", features), liver)
    assert dice >= bound and dice > baseline + 0.2, (dice, baseline)
    m = read_manifest(out, "adapter")
    assert m == manifest and untrained["epochs"] == 1
    assert m["adapter"] == kind and m["organ"] == "liver" and m["graph_parity"]["passed"]
    assert m["trainable_params"] == {"lp": 13, "spatial": 12 * 12 * 27 * 2 + 13}[kind]
    assert len(m["loss_curve"]) == m["epochs"] and m["loss_curve"][-1] < m["loss_curve"][0]
    assert m["peak_rss_gib"] > 0 and m["wall_seconds"] > 0 and m["cache"]["manifest_sha256"]
    assert m["init"]["head"].startswith("pretrained head row 0")  # the trunk's checkpoint knows "liver"


def test_size_prior_pulls_an_over_segmenting_adapter_toward_the_support_size(liver_cache, tmp_path):
    # A randomly initialised probe with a large learning rate over-segments the query at first; each
    # size-prior step must move S_hat toward the band around S (recorded before and after the step).
    cfg = AdaptConfig(adapter="lp", max_epochs=6, lr=5e-2, crop=32, seed=0, threads=1, ti=True, ti_warmup=0,
                      ti_lambda=1.0)
    m = adapt(liver_cache, tmp_path / "ti", cfg)
    prior = m["size_prior"]
    S, history = prior["S_ml"], prior["history"]
    assert len(history) == 6 and S > 0 and prior["kept"]
    above = [h for h in history if h["S_hat_ml"] > 1.3 * S]
    assert above and history[0]["S_hat_ml"] > 2 * S  # it did start over-segmenting
    for h in above:
        assert S < h["S_hat_after_ml"] < h["S_hat_ml"], h
    assert history[-1]["S_hat_after_ml"] < history[0]["S_hat_ml"] / 2


def test_existing_adapter_is_kept_without_force(liver_cache, tmp_path):
    adapt(liver_cache, tmp_path / "a", AdaptConfig(adapter="lp", max_epochs=1, seed=0))
    with pytest.raises(InputError, match="--force"):
        adapt(liver_cache, tmp_path / "a", AdaptConfig(adapter="lp", max_epochs=1, seed=0))
    with pytest.raises(InputError, match="pre-decoder1 cut"):
        adapt(liver_cache, tmp_path / "b", AdaptConfig(adapter="decoder-block", max_epochs=1, seed=0))


def test_decoder_block_and_ft_last_train_on_the_pre_decoder1_cut(trunk5_pre, phantoms5, tmp_path):
    import onnxruntime as ort

    support, query = phantoms5
    cache = tmp_path / "cache"
    build_cache(trunk5_pre, support, "liver", cache, k=2, seed=0, query=[query], backend="ort", threads=2, context=0,
                log=lambda m: None)
    for kind in ("decoder-block", "ft-last"):
        m = adapt(cache, tmp_path / kind, AdaptConfig(adapter=kind, max_epochs=2, crop=32, seed=0, threads=1, ti=True,
                                                      ti_warmup=0))
        assert m["cut"] == "pre-decoder1" and m["io"]["inputs"] == ["enc0", "dec0"] and m["graph_parity"]["passed"]
        assert m["trainable_params"] == 12 * 12 * 8 + 24 * 12 * 27 + 12 * 12 * 27 + 24 * 12 + 13
        assert len(m["size_prior"]["history"]) == 2
        sess = ort.InferenceSession(str(tmp_path / kind / "adapter.onnx"), providers=["CPUExecutionProvider"])
        enc0 = np.zeros((1, 12, 32, 32, 32), np.float32)
        dec0 = np.zeros((1, 12, 16, 16, 16), np.float32)
        assert sess.run(["logits"], {"enc0": enc0, "dec0": dec0})[0].shape == (1, 1, 32, 32, 32)
    assert m["init"]["block"] == "checkpoint decoder1"

"""Few-shot adaptation on the shipped phantom foundation model: from K = 2 supports, the linear probe and the
spatial adapter, with `edgeseg adapt`'s defaults (a few hundred steps), segment a held-out liver with
Dice >= 0.8 (a bar which a random-weight trunk cannot reach: see test_adapt.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.assets import DEFAULT_MODEL
from edgeseg.features import CacheConfig, build_cache
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.preprocess import preprocess
from edgeseg.runtime.trunk import open_trunk
from edgeseg.train.adapt import AdaptConfig, adapt
from edgeseg.train.losses import dice_score

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped_trunk(tmp_path_factory):
    from edgeseg.export.trunk import export_trunk

    out = tmp_path_factory.mktemp("shipped-trunk")
    export_trunk(DEFAULT_MODEL, out, cut="decoder1", precisions=("fp32",), max_batch=1, threads=2)
    return out


@pytest.fixture(scope="module")
def liver_setup(shipped_trunk, tmp_path_factory):
    """Three 3 mm SOURCE phantoms: K = 2 cached (seed 0 draws s0001, s0002), s0000 held out."""
    from edgeseg.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("pretrained-adapt")
    support = root / "support"
    write_dataset(support, 3, seed=0, spacing=3.0, z_range=(-150.0, 150.0))
    cache = root / "cache"
    manifest = build_cache(shipped_trunk, support, "liver", cache, CacheConfig(k=2, seed=0, backend="ort", threads=2),
                           log=lambda m: None)
    assert sorted(manifest["supports"]) == ["s0001", "s0002"]
    trunk_spec = read_manifest(shipped_trunk, "trunk", verify_files=False)["model_spec"]
    from edgeseg.runtime.preprocess import PreprocessSpec

    held = support / "s0000"
    prepared = preprocess(held / "ct.nii.gz", PreprocessSpec.from_dict(trunk_spec["preprocess"]),
                          label=held / "segmentations" / "liver.nii.gz")
    with open_trunk(shipped_trunk, backend="ort", threads=2) as trunk:
        (features,) = trunk.features(prepared.image[None], dtype=np.float32)
    return cache, features, prepared.label > 0


def _predict(adapter_dir, features) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(adapter_dir / "adapter.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"features": features[None]})
    return logits[0, 0] > 0


@pytest.mark.parametrize("kind", ["lp", "spatial"])
def test_adapter_on_the_pretrained_trunk_reaches_dice_0_8_on_a_held_out_liver(kind, liver_setup, tmp_path):
    cache, features, liver = liver_setup
    m = adapt(cache, tmp_path / kind, AdaptConfig(adapter=kind, seed=0, threads=2))  # the defaults
    steps = m["steps"]
    dice = dice_score(_predict(tmp_path / kind, features), liver)
    print(f"{kind}: held-out liver Dice {dice:.3f} after {steps} steps ({m['wall_seconds']} s)")
    assert dice >= 0.8, dice
    assert steps <= 400 and m["init"]["head"].startswith("pretrained head row 0 (liver)")

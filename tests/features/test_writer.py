"""`build_cache`: layout, manifest, resume after a kill, refusals, the pre-decoder1 cut, a full disk.

The cache is read back with `open_cache` where that is the simplest proof of what was written.
"""

from __future__ import annotations

import json
import shutil
import zlib

import numpy as np
import pytest
from edgeseg.runtime.backends import Backend, BackendInfo, TensorSpec
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import read_manifest, write_manifest
from edgeseg.runtime.preprocess import preprocess
from edgeseg.runtime.trunk import OpenedTrunk

import edgeseg.features.cases as cases_mod
import edgeseg.features.writer as writer_mod
from edgeseg.data.datasets import open_dataset
from edgeseg.features import CacheConfig, build_cache, open_cache
from edgeseg.features.regions import negative_boxes
from tests.conftest import PRE5 as PRE
from tests.conftest import SPEC5 as SPEC
from tests.features.conftest import arrays as _arrays
from tests.features.conftest import config


def test_cache_layout_dtypes_and_shapes(clean, data):
    out, manifest, messages, progress = clean
    assert (out / "manifest.json").is_file() and (out / "cache.json").is_file()
    assert progress == [(1, 3), (2, 3), (3, 3)]
    # The draw is numpy's default_rng(seed) over the sorted case ids, and it is recorded.
    ids = sorted(c.case_id for c in open_dataset(data[0], "liver").cases())
    want = [ids[i] for i in sorted(np.random.default_rng(0).choice(3, size=2, replace=False))]
    assert manifest["draw"]["chosen"] == manifest["supports"] == want and manifest["draw"]["candidates"] == ids

    cache = open_cache(out)
    assert cache.cut == "decoder1" and cache.organ == "liver" and cache.spec == PRE
    assert cache.trunk_manifest_hash == read_manifest(cache.trunk_dir, "trunk")["manifest_sha256"]
    assert [e.role for e in cache.supports] == ["positive", "negative", "negative"] * 2
    for e in cache.supports:
        (f,) = e.features
        assert isinstance(f, np.memmap) and isinstance(e.label, np.memmap)
        assert f.dtype == np.float16 and e.label.dtype == np.uint8
        assert f.shape == (SPEC.feature_size, *e.label.shape)
        assert set(np.unique(e.label)) <= {0, 1} and e.voxel_ml == pytest.approx(0.125)
        assert all(b - a == n for (a, b), n in zip(e.box, e.label.shape))
        assert all(a % 2 == 0 and b % 2 == 0 for a, b in e.box)
    for cid in manifest["supports"]:
        meta = manifest["cases"][cid]
        on_disk = json.loads((out / "cases" / cid / "meta.json").read_text())
        assert {k: v for k, v in on_disk.items() if k != "seconds"} == meta
        assert meta["role"] == "support" and meta["transform"]["model_shape"] == meta["model_shape"]
        organ = meta["organ_box"]
        pos, *negs = meta["regions"]
        # The positive region holds the whole organ (box + margin), at least a window where the volume allows.
        assert pos["label_voxels"] == meta["organ_voxels"] > 0 and meta["organ_voxels_outside_positive"] == 0
        assert meta["organ_ml"] == pytest.approx(meta["organ_voxels"] * 0.125)
        for (a, b), (lo, hi), n in zip(pos["box"], organ, meta["model_shape"]):
            assert a <= lo - 4 or a == 0
            assert b >= hi + 4 or b >= n - 1
            assert b - a >= min(64, n - n % 2)
        for neg in negs:
            assert neg["tier"] == 1 and not neg["overlaps_organ_box"] and neg["body_fraction"] >= 0.5
            assert any(b <= lo or a >= hi for (a, b), (lo, hi) in zip(neg["box"], organ))  # clear of the organ box
            assert neg["label_voxels"] == 0
    assert any("ort-cpu fp32" in m for m in messages) and any("bytes on disk" in m for m in messages)


def test_manifest_counts_the_bytes_on_disk(clean):
    out, manifest, _, _ = clean
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert manifest["bytes_on_disk"] == sum(p.stat().st_size for p in files)
    assert set(manifest["files"]) == {str(p.relative_to(out)) for p in files}
    for cid, n in manifest["case_bytes"].items():
        assert n == sum(p.stat().st_size for p in (out / "cases" / cid).rglob("*") if p.is_file())
    read_manifest(out, "feature-cache")  # every sha256 checks out
    assert manifest["ran"]["backend"] == "ort-cpu" and manifest["cut"] == "decoder1" and manifest["preprocess"] == PRE.to_dict()
    assert manifest["trunk"]["manifest_sha256"] == json.loads((out / "cache.json").read_text())["trunk"]["manifest_sha256"]


def test_a_killed_run_resumes_without_recomputing_and_matches_a_clean_run(clean, trunk_dir, data, tmp_path, monkeypatch):
    support, query = data
    out = tmp_path / "cache"
    commit = cases_mod.commit_case
    commits = []

    def killed_after_first(partial, final):
        if commits:
            raise KeyboardInterrupt("killed")  # mid-run: the second case is written but never committed
        commits.append(final.name)
        commit(partial, final)

    monkeypatch.setattr(cases_mod, "commit_case", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        build_cache(trunk_dir, support, "liver", out, config(query=(query,)), log=lambda m: None)
    first, second = clean[1]["supports"]
    assert commits == [first]
    # Ctrl-C removes the unfinished case; a SIGKILL cannot, and leaves it as planted here
    assert (out / "cases" / first / "meta.json").is_file() and not (out / "cases" / f".{second}.partial").exists()
    (out / "cases" / f".{second}.partial").mkdir()
    (out / "cases" / f".{second}.partial" / "enc0.npy").write_bytes(b"half written")
    assert not (out / "manifest.json").exists()
    with pytest.raises(InputError, match="has no manifest.json"):
        open_cache(out)  # an unfinished cache never looks complete

    monkeypatch.setattr(cases_mod, "commit_case", commit)
    computed = []
    for name in ("_support_case", "_query_case"):
        real = getattr(writer_mod, name)

        def counting(trunk, item, *a, _real=real):
            computed.append(item.id)
            return _real(trunk, item, *a)

        monkeypatch.setattr(writer_mod, name, counting)
    messages: list[str] = []
    manifest = build_cache(trunk_dir, support, "liver", out, config(query=(query,)), log=messages.append)
    assert computed == [second, "query-ct"]
    assert manifest["timings_seconds"]["resumed"] == [first]
    assert any("removing the unfinished case" in m for m in messages)
    assert not list((out / "cases").glob(".*"))

    clean_out, clean_manifest = clean[0], clean[1]
    assert manifest["cases"] == clean_manifest["cases"]  # everything but timings (meta.json's size varies with them)
    assert manifest["bytes_on_disk"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) - (
        out / "manifest.json").stat().st_size
    got, want = _arrays(out), _arrays(clean_out)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert got[name].dtype == want[name].dtype
    npy = {k: v for k, v in manifest["files"].items() if k.endswith(".npy")}
    assert npy == {k: v for k, v in clean_manifest["files"].items() if k.endswith(".npy")}


def _foreign(folder, digest="0" * 64, where="/elsewhere/other-trunk"):
    plan = json.loads((folder / "cache.json").read_text())
    plan["trunk"] = {"folder": where, "manifest_sha256": digest}
    (folder / "cache.json").write_text(json.dumps(plan))


def test_a_cache_begun_by_another_trunk_is_refused(clean, trunk_dir, data, tmp_path):
    support, query = data
    out = tmp_path / "cache"
    out.mkdir()
    shutil.copy(clean[0] / "cache.json", out / "cache.json")  # unfinished: a plan, no case, no manifest
    _foreign(out)
    with pytest.raises(InputError) as e:
        build_cache(trunk_dir, support, "liver", out, config(query=(query,)))
    assert "unfinished feature cache made by another trunk: /elsewhere/other-trunk" in e.value.problem
    assert "another --out" in e.value.fix and "--force" in e.value.fix

    done = tmp_path / "done"
    shutil.copytree(clean[0], done)
    _foreign(done)
    with pytest.raises(InputError, match="holds a feature cache made by another trunk"):
        build_cache(trunk_dir, support, "liver", done, config(query=(query,)))


def test_a_complete_cache_is_not_rebuilt_without_force_and_force_rebuilds(clean, trunk_dir, data, tmp_path):
    support, query = data
    out = tmp_path / "cache"
    shutil.copytree(clean[0], out)
    with pytest.raises(InputError, match="already holds a complete feature cache") as e:
        build_cache(trunk_dir, support, "liver", out, config(query=(query,)))
    assert "--force" in e.value.fix
    (out / "stray.txt").write_text("the user's own file")
    with pytest.raises(InputError, match=r"holds files that no edgeseg manifest there lists \(stray.txt\)"):
        build_cache(trunk_dir, support, "liver", out, config(force=True), log=lambda m: None)  # not even with force
    assert (out / "stray.txt").read_text() == "the user's own file" and (out / "manifest.json").exists()
    (out / "stray.txt").unlink()
    manifest = build_cache(trunk_dir, support, "liver", out, config(force=True), log=lambda m: None)  # no query now
    assert manifest["queries"] == [] and not (out / "cases" / "query-ct").exists()
    assert len(open_cache(out).supports) == 6


def test_force_never_turns_another_artifact_or_a_users_folder_into_a_cache(clean, trunk_dir, data, tmp_path):
    support, _ = data
    with pytest.raises(InputError, match=r"holds an exported trunk \(edgeseg trunk\), not a feature cache"):
        build_cache(trunk_dir, support, "liver", trunk_dir, config(force=True), log=lambda m: None)
    assert read_manifest(trunk_dir, "trunk")  # the trunk is whole
    users = tmp_path / "users"
    (users / "cases" / "mine").mkdir(parents=True)
    (users / "manifest.json").write_text('{"kind": "feature-cache", "note": "my own"}')
    (users / "cases" / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match="manifest.json that edgeseg did not write"):
        build_cache(trunk_dir, support, "liver", users, config(force=True), log=lambda m: None)
    assert (users / "cases" / "mine" / "notes.txt").read_text() == "precious"


def test_unfinished_cache_with_other_settings_and_bad_arguments_are_refused(clean, trunk_dir, data, tmp_path):
    support, query = data
    out = tmp_path / "cache"
    out.mkdir()
    shutil.copy(clean[0] / "cache.json", out / "cache.json")
    with pytest.raises(InputError, match=r"begun with other settings \(.*draw.*seed"):
        build_cache(trunk_dir, support, "liver", out, config(query=(query,), seed=1))
    with pytest.raises(InputError, match="--k 9 must be"):
        build_cache(trunk_dir, support, "liver", tmp_path / "k", config(k=9))
    with pytest.raises(InputError, match="NIfTI"):
        build_cache(trunk_dir, support, "liver", tmp_path / "q", config(query=(tmp_path / "scan.txt",)))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    with pytest.raises(InputError, match=r"holds files that no edgeseg manifest there lists \(other.txt\)"):
        build_cache(trunk_dir, support, "liver", tmp_path / "full", config())


# --- pre-decoder1, with a stand-in trunk (enc0 = input, dec0 = its 2x average pool) ----------------------
class PoolStandIn(Backend):
    name = "stand-in"

    def _activate(self):
        self.inputs = (TensorSpec("image", "float32", (None, 1, 64, 64, 64)),)
        self.outputs = (TensorSpec("enc0", "float32", (None, 1, 64, 64, 64)),
                        TensorSpec("dec0", "float32", (None, 1, 32, 32, 32)))
        self.info = BackendInfo("stand-in", "fp32", "CPU")

    def _predict(self, batch):
        n = batch.shape[0]
        return batch, batch.reshape(n, 1, 32, 2, 32, 2, 32, 2).mean(axis=(3, 5, 7))


def test_pre_decoder1_cache_stores_enc0_and_half_resolution_dec0(data, tmp_path):
    support, query = data
    body = {"cut": "pre-decoder1", "preprocess": PRE.to_dict(), "preprocess_sha256": PRE.sha256(), "graphs": {},
            "io": {"input": "image", "outputs": ["enc0", "dec0"]}, "export_spec": {"max_batch": 1},
            "model_spec": {"in_channels": 1, "feature_size": 1}}
    (tmp_path / "trunk").mkdir()
    trunk = OpenedTrunk(tmp_path / "trunk", write_manifest(tmp_path / "trunk", "trunk", body, []), PoolStandIn(),
                        precision="fp32")
    out = tmp_path / "cache"
    manifest = build_cache(trunk, support, "liver", out, CacheConfig(k=1, seed=3, query=(query,), negatives_per_case=1),
                           log=lambda m: None)
    cache = open_cache(out, trunk_manifest_hash=trunk.manifest_hash)
    assert cache.cut == "pre-decoder1" and len(cache.supports) == 2
    (cid,) = manifest["supports"]
    case = {c.case_id: c for c in open_dataset(support, "liver").cases()}[cid]
    image = preprocess(case.image, PRE).image
    for e in cache.supports:
        enc0, dec0 = e.features
        assert enc0.shape == (1, *e.label.shape) and dec0.shape == (1, *(n // 2 for n in e.label.shape))
        assert {p.name for p in (out / "cases" / cid / e.name).iterdir()} == {"enc0.npy", "dec0.npy", "label.npy"}
        crop = image[tuple(slice(a, b) for a, b in e.box)]
        np.testing.assert_allclose(np.asarray(enc0[0], np.float32), crop, atol=1e-3)
        d, h, w = crop.shape
        np.testing.assert_allclose(np.asarray(dec0[0], np.float32),
                                   crop.reshape(d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(1, 3, 5)), atol=1e-3)
    (q,) = cache.queries
    enc0, dec0 = q.features
    assert all(c % 4 == 0 for c in q.cropped_shape)  # pool 2 x dec0's factor 2: the grids nest exactly
    assert enc0.shape[1:] == tuple(c // 2 for c in q.cropped_shape)
    assert dec0.shape[1:] == tuple(c // 4 for c in q.cropped_shape)
    rng_seed = [3, zlib.crc32(cid.encode())]  # negatives are drawn per case from (seed, case id)
    assert manifest["cases"][cid]["regions"][1]["box"] == [list(b) for b in negative_boxes(
        preprocess(case.image, PRE).image > 0.05, preprocess(case.image, PRE, label=case.label).label > 0,
        tuple(tuple(b) for b in manifest["cases"][cid]["organ_box"]), (64, 64, 64), 1,
        np.random.default_rng(rng_seed))[0][0]]


def test_a_full_disk_mid_case_is_exit_2_and_leaves_no_partial_case(trunk_dir, data, tmp_path, monkeypatch):
    import errno

    from edgeseg.runtime.errors import ResourceError

    support, query = data
    real, calls = writer_mod.save_npy, []

    def full(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, array)

    monkeypatch.setattr(writer_mod, "save_npy", full)
    out = tmp_path / "cache"
    with pytest.raises(ResourceError) as e:
        build_cache(trunk_dir, support, "liver", out, config(), log=lambda m: None)
    assert e.value.exit_code == 2 and "no space left" in e.value.problem
    assert not list((out / "cases").glob(".*")) and not (out / "manifest.json").exists()


def test_a_cache_refused_for_a_bad_label_leaves_no_plan_and_no_cases(trunk_dir, data, tmp_path):
    import nibabel as nib

    support, _ = data
    copy = tmp_path / "support"
    shutil.copytree(support, copy)
    lab = copy / "s0001" / "segmentations" / "liver.nii.gz"  # the first support that k=2, seed 0 draws
    img = nib.load(str(lab))
    arr = np.asarray(img.dataobj).astype(np.uint8) * 2  # values {0, 2}: not a 0/1 mask
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(lab))
    out = tmp_path / "cache"
    with pytest.raises(InputError, match="liver.nii.gz"):
        build_cache(trunk_dir, copy, "liver", out, config(), log=lambda m: None)
    assert not (out / "cache.json").exists() and not (out / "cases").exists()


@pytest.mark.parametrize("changes,what", [
    ({"negatives_per_case": -1}, "--negatives -1"), ({"margin_mm": 1000.0}, "--margin 1000.0"),
    ({"query_pool": 9}, "--query-pool 9"), ({"min_body_fraction": 1.5}, "min_body_fraction 1.5"),
])
def test_settings_out_of_range_are_refused_before_anything_is_read(changes, what, tmp_path):
    with pytest.raises(InputError, match=f"{what} is out of range"):
        build_cache(tmp_path / "no-trunk", tmp_path / "no-data", "liver", tmp_path / "out", config(**changes))
    assert not (tmp_path / "out").exists()

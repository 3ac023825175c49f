"""`open_cache`: the regions and queries it maps are the trunk's features; what it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.preprocess import preprocess
from edgeseg.runtime.trunk import open_trunk

from edgeseg.data.datasets import open_dataset
from edgeseg.features import open_cache
from tests.conftest import PRE5 as PRE
from tests.conftest import SPEC5 as SPEC


def test_cached_features_are_the_trunks_features_over_the_same_box(clean, trunk_dir, data):
    out, manifest, _, _ = clean
    cache = open_cache(out)
    cases = {c.case_id: c for c in open_dataset(data[0], "liver").cases()}
    with open_trunk(trunk_dir, backend="ort", threads=2) as trunk:
        cid = manifest["supports"][0]
        prepared = preprocess(cases[cid].image, PRE, label=cases[cid].label)
        assert prepared.transform.to_dict() == manifest["cases"][cid]["transform"]
        for e in [e for e in cache.supports if e.case_id == cid][:2]:  # the positive and one negative
            box = tuple(slice(a, b) for a, b in e.box)
            (want,) = trunk.features(prepared.image[None], box, context=0)
            np.testing.assert_array_equal(np.asarray(e.features[0]), want)
            np.testing.assert_array_equal(np.asarray(e.label), prepared.label[box])

        (q,) = cache.queries
        assert q.pool == 2 and q.voxel_ml == pytest.approx(0.125) and q.case_id == "query-ct"
        scan = preprocess(data[1], PRE)
        assert q.transform == scan.transform
        d, h, w = q.cropped_shape
        assert all(n - 2 < c <= n and c % 2 == 0 for n, c in zip(scan.image.shape, q.cropped_shape))
        (full,) = trunk.features(scan.image[None], (slice(0, d), slice(0, h), slice(0, w)), context=0, dtype=np.float32)
    (pooled,) = q.features
    assert pooled.dtype == np.float16 and pooled.shape == (SPEC.feature_size, d // 2, h // 2, w // 2)
    ref = full.reshape(SPEC.feature_size, d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(2, 4, 6)).astype(np.float16)
    np.testing.assert_array_equal(np.asarray(pooled), ref)


def test_open_cache_refuses_another_trunks_hash(clean, trunk_dir):
    out = clean[0]
    mine = read_manifest(trunk_dir, "trunk")["manifest_sha256"]
    assert open_cache(out, trunk_manifest_hash=mine).trunk_manifest_hash == mine
    with pytest.raises(InputError) as e:
        open_cache(out, trunk_manifest_hash="f" * 64)
    assert f"made by trunk {trunk_dir}" in e.value.problem and "ffffffffffff" in e.value.problem
    assert "edgeseg cache" in e.value.fix


def test_entries_map_the_files_the_manifest_lists_and_a_missing_or_resized_file_is_refused(clean, tmp_path):
    out, manifest = clean[0], clean[1]
    cache = open_cache(out)
    for e in cache.supports:
        region = manifest["cases"][e.case_id]["regions"][[r["name"] for r in manifest["cases"][e.case_id]["regions"]].index(e.name)]
        assert e.files == (out / "cases" / e.case_id / region["files"]["features"],)
        assert Path(e.features[0].filename) == e.files[0].absolute() and e.info == region
    (q,) = cache.queries
    assert q.files == (out / "cases" / q.case_id / "features.npy",)
    broken = tmp_path / "cache"
    shutil.copytree(out, broken)
    victim = broken / q.files[0].relative_to(out)
    victim.write_bytes(victim.read_bytes()[:-2])
    with pytest.raises(InputError, match=r"has \d+ bytes, the manifest recorded") as e:
        open_cache(broken)
    assert "edgeseg cache" in e.value.fix
    victim.unlink()
    with pytest.raises(InputError, match="which is missing"):
        open_cache(broken)


def test_features_holding_nan_are_refused_naming_the_file(clean, tmp_path):
    broken = tmp_path / "cache"
    shutil.copytree(clean[0], broken)
    cache = open_cache(broken)
    path = cache.supports[1].files[0]
    bad = np.load(path)
    bad[0, 0, 0, 0] = np.nan
    np.save(path, bad)  # same size: open_cache (without verify_files) maps it
    with pytest.raises(InputError, match="NaN or Inf") as e:
        open_cache(broken).check_features()
    assert str(path) in str(e.value)
    assert json.loads((broken / "manifest.json").read_text())["kind"] == "feature-cache"


def _rss_file_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status (not Linux)")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="resident memory is read from /proc (Linux)")
def test_released_pages_leave_the_process_but_the_data_stay_readable(tmp_path):
    from edgeseg.features.reader import map_array, release_pages

    data = np.arange(48 * 2**20 // 2, dtype=np.float16).reshape(48, -1)  # 48 MiB on disk
    np.save(tmp_path / "f.npy", data)
    mapped = map_array(tmp_path / "f.npy")
    before = _rss_file_mib()
    checksum = float(np.asarray(mapped, dtype=np.float32).sum())  # a sweep: every page becomes resident
    assert _rss_file_mib() - before > 40
    release_pages([mapped[:, 10:20], np.zeros(3)])  # through a view; an in-memory array is left alone
    assert _rss_file_mib() - before < 8
    assert float(np.asarray(mapped, dtype=np.float32).sum()) == checksum  # read again from the page cache

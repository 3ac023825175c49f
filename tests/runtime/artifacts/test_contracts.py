"""The manifest classes read what the writers before them wrote, and write the same JSON back.

`legacy/` holds a trunk, an adapter and an engine manifest written by the dict-building writers of
edgeseg before the manifest classes existed: artifacts like them are on users' disks and must open.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from edgeseg.runtime.artifacts.adapter import AdapterManifest
from edgeseg.runtime.artifacts.base import ENVELOPE
from edgeseg.runtime.artifacts.cache import CacheManifest
from edgeseg.runtime.artifacts.engine import EngineManifest
from edgeseg.runtime.artifacts.trunk import TrunkManifest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import MANIFEST_NAME, content_hash, read_manifest, write_manifest

LEGACY = Path(__file__).parent / "legacy"
CLASSES = {"trunk": TrunkManifest, "engine": EngineManifest, "adapter": AdapterManifest, "cache": CacheManifest}


def legacy_folder(kind: str, tmp_path: Path) -> Path:
    folder = tmp_path / kind
    folder.mkdir()
    shutil.copy(LEGACY / f"{kind}.json", folder / MANIFEST_NAME)
    return folder


def body_of(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ENVELOPE}


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_a_manifest_the_old_writers_wrote_still_opens_and_writes_back_the_same_json(kind, tmp_path):
    cls = CLASSES[kind]
    folder = legacy_folder(kind, tmp_path)
    old = json.loads((folder / MANIFEST_NAME).read_text())
    m = cls.from_folder(folder, verify_files=False)  # kind and self-hash checked; the files are not kept here
    assert m.record == old and m.sha256 == old["manifest_sha256"] == content_hash(old)
    assert m.body() == body_of(old)  # typed fields + extras: the same keys and values as written
    assert m.write(tmp_path / "again", []).record["kind"] == cls.KIND == old["kind"]
    assert body_of(read_manifest(tmp_path / "again", cls.KIND)) == body_of(old)
    assert cls.from_folder(tmp_path / "again") == m  # typed fields and extras equal; only the envelope differs


def test_the_typed_fields_are_what_the_old_manifests_recorded(tmp_path):
    trunk = TrunkManifest.from_folder(legacy_folder("trunk", tmp_path), verify_files=False)
    raw = json.loads((LEGACY / "trunk.json").read_text())
    assert trunk.cut == "decoder1" and trunk.io.outputs == ("features",) and trunk.window == (64, 64, 64)
    assert trunk.checkpoint.sha256 == raw["checkpoint"]["sha256"] and trunk.max_batch == raw["export_spec"]["max_batch"]
    assert set(trunk.extra) == {"parity_inputs", "timings_seconds"} and trunk.graph_name("fp16") == "trunk.fp16.onnx"

    adapter = AdapterManifest.from_folder(legacy_folder("adapter", tmp_path), verify_files=False)
    assert (adapter.adapter, adapter.organ, adapter.cut, adapter.io.inputs) == ("lp", "liver", "decoder1", ("features",))
    assert adapter.trunk_manifest_sha256 == trunk.sha256  # trained on this trunk's features
    assert "loss_curve" in adapter.extra and "graph_parity" in adapter.extra

    cache = CacheManifest.from_folder(legacy_folder("cache", tmp_path), verify_files=False)
    raw = json.loads((LEGACY / "cache.json").read_text())
    assert (cache.organ, cache.cut, cache.output_names) == ("liver", "decoder1", ("features",))
    assert cache.supports == tuple(raw["supports"]) and len(cache.queries) == 1 and set(cache.cases) == set(raw["cases"])
    assert cache.trunk.manifest_sha256 == raw["trunk"]["manifest_sha256"] and cache.bytes_on_disk == raw["bytes_on_disk"]
    assert cache.preprocess.sha256() == raw["preprocess_sha256"] and "settings" in cache.extra

    engine = EngineManifest.from_folder(legacy_folder("engine", tmp_path), verify_files=False)
    assert engine.organs == ("liver",) and engine.io.outputs == ("prob_liver",) and engine.window == trunk.window
    assert engine.trunk.manifest_sha256 == trunk.sha256 and engine.adapters[0].manifest_sha256 == adapter.sha256
    assert engine.preprocess == trunk.preprocess and engine.max_batch == trunk.max_batch


def test_each_class_reads_only_its_own_kind_and_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(InputError, match="describes a 'engine', not a 'trunk'"):
        TrunkManifest.from_folder(legacy_folder("engine", tmp_path), verify_files=False)
    body = body_of(json.loads((LEGACY / "trunk.json").read_text()))
    for key, match in (("cut", "lacks cut: not a trunk manifest"), ("io", "lacks io")):
        folder = tmp_path / f"no-{key}"
        folder.mkdir()
        write_manifest(folder, "trunk", {k: v for k, v in body.items() if k != key}, [])
        with pytest.raises(InputError, match=match) as e:
            TrunkManifest.from_folder(folder)
        assert "re-export the trunk: edgeseg export" in e.value.fix
    folder = tmp_path / "odd-cut"
    folder.mkdir()
    write_manifest(folder, "trunk", {**body, "cut": "encoder3"}, [])
    with pytest.raises(InputError, match="unknown cut point 'encoder3'"):
        TrunkManifest.from_folder(folder)
    engine = body_of(json.loads((LEGACY / "engine.json").read_text()))
    folder = tmp_path / "bad-outputs"
    folder.mkdir()
    write_manifest(folder, "engine", {**engine, "organs": ["liver", "spleen"]}, [])
    with pytest.raises(InputError, match="outputs do not match its organs"):
        EngineManifest.from_folder(folder)

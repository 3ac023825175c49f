"""Manifests: consumers refuse an artifact that was edited, is incomplete, or is of another kind."""

from __future__ import annotations

import json

import pytest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import (
    MANIFEST_NAME,
    content_hash,
    read_manifest,
    write_manifest,
)


@pytest.fixture
def artifact(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01" * 100)
    write_manifest(tmp_path, "adapter", {"parity": {"rel_l2": 1e-5}}, ["weights.bin"])
    return tmp_path


def test_round_trip_records_files_versions_and_host(artifact):
    m = read_manifest(artifact, "adapter")
    assert m["files"]["weights.bin"]["bytes"] == 200 and len(m["files"]["weights.bin"]["sha256"]) == 64
    assert m["libraries"]["numpy"] and m["host"]["cores"] >= 1
    assert m["manifest_sha256"] == content_hash(m)


def test_hand_edit_is_detected(artifact):
    path = artifact / MANIFEST_NAME
    m = json.loads(path.read_text())
    m["parity"]["rel_l2"] = 1e-9
    path.write_text(json.dumps(m))
    with pytest.raises(InputError, match="edited after it was written"):
        read_manifest(artifact, "adapter")


def test_changed_file_is_detected(artifact):
    (artifact / "weights.bin").write_bytes(b"\x00\x02" * 100)
    with pytest.raises(InputError, match="weights.bin differs"):
        read_manifest(artifact, "adapter")


def test_missing_file_wrong_kind_and_no_manifest(artifact, tmp_path_factory):
    with pytest.raises(InputError, match="describes a 'adapter', not a 'trunk'"):
        read_manifest(artifact, "trunk")
    (artifact / "weights.bin").unlink()
    with pytest.raises(InputError, match="lists weights.bin, which is missing"):
        read_manifest(artifact, "adapter")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(InputError, match="has no manifest.json") as e:
        read_manifest(empty, "trunk", rebuild="edgeseg export CHECKPOINT --out DIR")
    assert "edgeseg export" in e.value.message


def test_manifest_is_not_overwritten_without_force(artifact):
    with pytest.raises(InputError, match="--force"):
        write_manifest(artifact, "adapter", {}, ["weights.bin"])
    assert (artifact / MANIFEST_NAME).stat().st_mode & 0o044  # readable by others, like a normal file

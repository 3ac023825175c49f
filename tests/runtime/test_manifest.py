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


def _rewrite(folder, edit) -> None:
    """Edit a manifest and recompute its self-hash, as anyone can (a checksum, not a signature)."""
    path = folder / MANIFEST_NAME
    m = json.loads(path.read_text())
    edit(m)
    if isinstance(m, dict):
        m["manifest_sha256"] = content_hash(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("name,why", [("../outside/evil.onnx", "outside its folder"), ("/dev/zero", "outside its folder"),
                                      ("sub/../../evil.onnx", "outside its folder"), ("~/evil", "outside its folder")])
def test_a_rehashed_manifest_cannot_point_outside_its_folder(artifact, tmp_path_factory, name, why):
    entry = {"sha256": "0" * 64, "bytes": 1}
    _rewrite(artifact, lambda m: m["files"].update({name: entry}))
    with pytest.raises(InputError, match=why) as e:
        read_manifest(artifact, "adapter", verify_files=False)  # refused even when files are not verified
    assert name in e.value.problem


def test_a_listed_file_that_is_a_link_or_not_a_regular_file_is_refused(artifact, tmp_path):
    import os

    os.symlink("/dev/zero", artifact / "zero.bin")
    (artifact / "dir.bin").mkdir()
    for name, why in (("zero.bin", "symbolic link"), ("dir.bin", "not a regular file")):
        _rewrite(artifact, lambda m, name=name: m["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
        with pytest.raises(InputError, match=why):
            read_manifest(artifact, "adapter")
        _rewrite(artifact, lambda m, name=name: m["files"].pop(name))


def test_a_manifest_that_is_not_an_object_or_lacks_byte_counts_is_an_input_error(artifact):
    _rewrite(artifact, lambda m: m["files"]["weights.bin"].pop("bytes"))
    with pytest.raises(InputError, match="lacks a sha256 or a byte count"):
        read_manifest(artifact, "adapter")
    (artifact / MANIFEST_NAME).write_text("[]")
    with pytest.raises(InputError, match="holds a JSON list, not a manifest object"):
        read_manifest(artifact, "adapter")


def test_a_graph_named_outside_the_listed_files_or_with_external_data_outside_is_refused(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeseg.runtime.artifacts.engine import EngineManifest
    from edgeseg.runtime.preprocess import PreprocessSpec

    folder = tmp_path / "engine"
    folder.mkdir()
    w = numpy_helper.from_array(np.ones((4,), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    model = helper.make_model(graph)
    onnx.save(model, str(folder / "g.onnx"), save_as_external_data=True, location="g.onnx.data",
              size_threshold=0)
    spec = PreprocessSpec(window=(64, 64, 64))
    body = {"organs": ["liver"], "preprocess": spec.to_dict(), "window": [64, 64, 64],
            "io": {"input": "image", "outputs": ["prob_liver"]}, "graphs": {"fp32": {"file": "g.onnx"}}}
    write_manifest(folder, "engine", body, ["g.onnx", "g.onnx.data"])
    m = EngineManifest.from_folder(folder)
    assert m.graph_path(folder, "fp32") == folder / "g.onnx"
    renamed = EngineManifest.from_record({**m.record, "graphs": {"fp32": {"file": "g.onnx.data"}}, "files": {"g.onnx": {}}})
    with pytest.raises(InputError, match="not among the files it lists"):
        renamed.graph_path(folder, "fp32")
    (tmp_path / "evil.bin").write_bytes(np.ones((4,), np.float32).tobytes())
    for t in model.graph.initializer:  # the weights' location rewritten to a file outside the artifact
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        t.external_data.add(key="location", value="../evil.bin")
        t.ClearField("raw_data")
    onnx.save(model, str(folder / "g.onnx"))
    with pytest.raises(InputError, match="outside the artifact"):
        m.graph_path(folder, "fp32")


def test_claim_output_replaces_only_an_edgeseg_artifact_of_its_kind_and_only_its_listed_files(tmp_path):
    from edgeseg.runtime.manifest import claim_output

    assert claim_output(tmp_path / "new", "engine", force=False) == []
    art = tmp_path / "art"
    (art / "sub").mkdir(parents=True)
    (art / "sub" / "w.bin").write_bytes(b"w")
    write_manifest(art, "adapter", {}, ["sub/w.bin"])
    assert json.loads((art / MANIFEST_NAME).read_text())["written_by"].startswith("edgeseg ")
    for force in (False, True):  # another kind: named, and never replaced
        with pytest.raises(InputError, match=r"holds an adapter \(edgeseg adapter\), not a fused engine"):
            claim_output(art, "engine", force=force)
    with pytest.raises(InputError, match="already holds an adapter") as e:
        claim_output(art, "adapter", force=False)
    assert "--force" in e.value.fix
    (art / "notes.txt").write_text("the user's")
    with pytest.raises(InputError, match=r"no edgeseg manifest there lists \(notes.txt\)"):
        claim_output(art, "adapter", force=True)
    (art / "notes.txt").unlink()
    (art / ".edgeseg.lock").write_text("")
    removed = claim_output(art, "adapter", force=True, ignore=(".edgeseg.lock",))
    assert removed == [art / "sub" / "w.bin"] and sorted(p.name for p in art.iterdir()) == [".edgeseg.lock"]


def test_a_manifest_edgeseg_did_not_write_is_never_taken_for_an_artifact(tmp_path):
    from edgeseg.runtime.manifest import claim_output

    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"kind": "trunk", "mine": True}))
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "x.txt").write_text("precious")
    with pytest.raises(InputError, match="manifest.json that edgeseg did not write"):
        claim_output(tmp_path, "trunk", force=True)
    assert (tmp_path / "cases" / "x.txt").read_text() == "precious"


def test_results_record_portable_paths_never_this_machines_absolute_ones(tmp_path):
    from pathlib import Path

    from edgeseg.runtime.manifest import portable_path, portable_paths

    repo = Path(__file__).resolve().parents[2]
    inside = str(repo / "edgeseg" / "assets" / "example_ct_sm.nii.gz")
    result = {"scan": {"path": inside, "work": str(tmp_path / "engine" / "fused.fp32.onnx")},
              "rows": [{"graph": "/elsewhere/x.onnx", "name": "real_ct", "n": 3}],
              "command": f"python bench.py --work {tmp_path}"}
    out = portable_paths(result, base=repo)
    assert out["scan"] == {"path": "edgeseg/assets/example_ct_sm.nii.gz", "work": "fused.fp32.onnx"}
    assert out["rows"] == [{"graph": "x.onnx", "name": "real_ct", "n": 3}]
    assert out["command"] == result["command"]  # a command line is not a path: left as typed
    assert portable_path(inside, base=repo) == "edgeseg/assets/example_ct_sm.nii.gz"

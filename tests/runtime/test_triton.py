"""`edgeseg triton`: a Triton model repository from a fused engine, checked without a Triton server.

The generated `config.pbtxt` is parsed with Triton's own protobuf (tritonclient's `model_config_pb2`) and must
name exactly what ONNX Runtime reads from the model file beside it; the model file, run by ONNX Runtime at
the config's declared shapes and batch sizes on windows of the shipped real CT, gives the engine's own
probabilities (the engine opened by `open_engine` on edgeseg's ORT backend). No Triton server runs here, and
nothing stands in for one. The TensorRT path is checked for the config it writes only (no TensorRT here).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from edgeseg.export import parity
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import write_manifest
from edgeseg.runtime.triton import TRITON_TYPES, preferred_batch_sizes, triton_config_check, write_triton_model
from typer.testing import CliRunner

from edgeseg.assets import EXAMPLE_CT
from edgeseg.cli import app

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'edgeseg[triton]' (CI installs it)")

ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64"}
FP32_CT = parity.TOLERANCES[("fp32", "ct")]
quiet = lambda msg: None  # noqa: E731


@pytest.fixture(scope="module")
def engine(engine5):
    """The tiny trunk (SPEC5: 64^3 windows at 5 mm, batch 1..4) fused with two linear probes (seeded weights)."""
    return engine5


@pytest.fixture(scope="module")
def repo(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton-repo") / "models"
    record = write_triton_model(engine, out, instances=2, device="cpu", log=quiet)
    return out, record


def _parse(path):
    return triton_config_check(path.read_text())


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_config_parses_with_tritons_protobuf_and_names_what_the_model_file_holds(engine, repo):
    from tritonclient.grpc import model_config_pb2

    out, record = repo
    model = out / "edgeseg_liver_spleen"
    assert record["model_dir"] == str(model) and record["config_checked_with"].startswith("tritonclient ")
    config = _parse(model / "config.pbtxt")
    assert config.name == "edgeseg_liver_spleen" and config.platform == "onnxruntime_onnx"
    assert config.default_model_filename == "model.onnx"
    assert config.max_batch_size == 4  # the engine's exported batch range, 1..4
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == group.KIND_CPU

    session = _session(model / "1" / "model.onnx")
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [v.name for v in declared] == [a.name for a in actual]
        for v, a in zip(declared, actual):
            assert model_config_pb2.DataType.Name(v.data_type) == ORT_TYPES[a.type]
            assert isinstance(a.shape[0], str) and list(v.dims) == a.shape[1:]  # dims without the (dynamic) batch axis
    assert [v.name for v in config.output] == ["prob_liver", "prob_spleen"]
    assert list(config.input[0].dims) == [1, 64, 64, 64]

    # The window and the client's preprocessing and post-processing are stated, from the engine's manifest.
    engine_manifest = json.loads((engine / "manifest.json").read_text())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["edgeseg.window"] == "64,64,64" and params["edgeseg.spacing_mm"].startswith("5,5,5 ")
    assert params["edgeseg.hu_window"].startswith("-175,250 ") and params["edgeseg.orientation"].startswith("RAS")
    assert "overlap 0.25" in params["edgeseg.sliding_window"] and "sigma 0.125" in params["edgeseg.blending"]
    assert params["edgeseg.threshold"].startswith("0.5 ") and "sigmoid" in params["edgeseg.outputs"]
    assert params["edgeseg.engine_manifest_sha256"] == engine_manifest["manifest_sha256"]

    # Provenance: the model file is the engine's graph byte for byte; the engine's manifest is copied beside it.
    assert _sha(model / "1" / "model.onnx") == engine_manifest["files"]["fused.fp32.onnx"]["sha256"]
    assert (model / "engine_manifest.json").read_bytes() == (engine / "manifest.json").read_bytes()
    text = (model / "config.pbtxt").read_text()
    assert "fp32 ONNX graph fused.fp32.onnx" in text and engine_manifest["manifest_sha256"] in text
    readme = (out / "README.md").read_text()
    assert "No Triton server runs" in readme and "`edgeseg_liver_spleen`" in readme
    assert "RAS" in readme and engine_manifest["manifest_sha256"] in readme
    assert (model / "README.md").read_text().count("What is verified where") == 1
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "edgeseg_liver_spleen"]  # no lock or temporary left


@pytest.mark.parametrize("edit", [
    ("max_batch_size:", "max_batch_sise:"),  # a misspelled field
    ("TYPE_FP32", "TYPE_FLOAT32"),  # a data type Triton does not have
    ("KIND_CPU", "KIND_TPU"),  # an instance kind Triton does not have
    ("dims: [ 1, 64, 64, 64 ]", "dims: [ 1, 64, 64, sixty-four ]"),
    ("string_value:", "text_value:"),
])
def test_an_edited_invalid_config_fails_the_parse(repo, tmp_path, edit):
    out, _ = repo
    text = (out / "edgeseg_liver_spleen" / "config.pbtxt").read_text()
    assert edit[0] in text
    triton_config_check(text)  # the config as written parses
    with pytest.raises(InputError, match="not a valid Triton model config"):
        triton_config_check(text.replace(edit[0], edit[1], 1))


def test_the_model_file_at_the_declared_shapes_and_batch_sizes_gives_the_engines_probabilities(engine, repo):
    from edgeseg.runtime.engine import open_engine
    from edgeseg.runtime.preprocess import preprocess
    from edgeseg.runtime.sliding_window import sliding_window

    out, _ = repo
    model = out / "edgeseg_liver_spleen"
    config = _parse(model / "config.pbtxt")
    session = _session(model / "1" / "model.onnx")
    dims = tuple(config.input[0].dims)
    sizes = sorted({1, *config.dynamic_batching.preferred_batch_size, config.max_batch_size})
    assert sizes == [1, 2, 4]
    with open_engine(engine, backend="ort", precision="fp32", threads=2) as eng:
        prepared = preprocess(EXAMPLE_CT, eng.manifest.preprocess)  # the package's own preprocessing
        image = prepared.image
        # One window of the real CT at the declared dims, padded with the HU floor as the sliding window pads;
        # a batch is that window and its flips (all real CT content, each item different).
        window = np.zeros(dims, np.float32)
        crop = tuple(slice(0, min(s, d)) for s, d in zip(image.shape, dims[1:]))
        window[(0, *crop)] = image[crop]
        items = [window, window[:, ::-1], window[:, :, ::-1], window[:, :, :, ::-1]]
        for b in sizes:
            batch = np.ascontiguousarray(np.stack(items[:b]))
            got = session.run(None, {config.input[0].name: batch})
            ref = eng.backend.predict(batch)
            for name, g, r in zip([o.name for o in config.output], got, ref):
                assert g.shape == (b, *config.output[0].dims), name
                assert parity.rel_l2(r, g) <= FP32_CT.rel_l2 and np.mean((g > 0.5) != (r > 0.5)) <= FP32_CT.mask_flip
                assert 0.0 <= g.min() and g.max() <= 1.0  # probabilities: the sigmoid is in the graph
        # The client's whole procedure (the parameters' sliding window and blending) gives predict's probabilities.
        volume = image[None].astype(np.float32)
        for b in sizes:
            blended = sliding_window(volume, dims[1:], lambda x: tuple(session.run(None, {"image": x})), batch_size=b)
            expected = eng.probabilities(volume, batch_size=b, reuse_blank=False)
            assert parity.rel_l2(expected, np.concatenate(blended)) <= FP32_CT.rel_l2


def test_batch_beyond_the_graphs_range_is_refused_naming_the_limit(engine, tmp_path):
    result = CliRunner().invoke(app, ["triton", str(engine), "--out", str(tmp_path / "r"), "--max-batch", "8", "--json"])
    assert result.exit_code == 2, result.output
    err = json.loads(result.output)
    assert "--max-batch 8" in err["problem"] and "1 to 4" in err["problem"] and "--max-batch 4" in err["fix"]
    assert not (tmp_path / "r" / "edgeseg_liver_spleen").exists()
    # A smaller batch is fine: one preferred size, and none at 1.
    record = write_triton_model(engine, tmp_path / "r", max_batch=3, log=quiet)
    assert record["preferred_batch_sizes"] == [2, 3]
    assert preferred_batch_sizes(1) == () and preferred_batch_sizes(8) == (2, 4, 8)
    config = _parse(tmp_path / "r" / "edgeseg_liver_spleen" / "config.pbtxt")
    assert config.max_batch_size == 3 and config.instance_group[0].kind == config.instance_group[0].KIND_GPU


def test_tensorrt_without_a_plan_is_refused_with_the_fix(engine, tmp_path):
    result = CliRunner().invoke(app, ["triton", str(engine), "--out", str(tmp_path / "r"), "--tensorrt", "--json"])
    assert result.exit_code == 2, result.output
    err = json.loads(result.output)
    assert "no TensorRT engine" in err["problem"] and "leave out --tensorrt" in err["fix"]
    assert not (tmp_path / "r" / "edgeseg_liver_spleen").exists()


def _engine_with_plans(engine, tmp_path, keys):
    """A copy of the engine whose manifest lists TensorRT plans: their bytes are not plans (no TensorRT here to
    build one); what is checked is the config and README the TensorRT path writes, and which plan it copies."""
    from edgeseg.runtime.backends.tensorrt import engine_key_from_facts, key_string

    folder = tmp_path / "engine-trt"
    shutil.copytree(engine, folder)
    m = json.loads((folder / "manifest.json").read_text())
    body = {k: v for k, v in m.items() if k not in ("kind", "written_by", "created", "libraries", "host", "files",
                                                    "manifest_sha256")}
    engines = {}
    for facts in keys:
        key = engine_key_from_facts(*facts)
        name = f"fused.{key_string(key)}.plan"
        (folder / name).write_bytes(b"plan bytes for " + name.encode())
        engines[key_string(key)] = {"file": name, "key": key}
    write_manifest(folder, "engine", {**body, "engines": engines}, [*m["files"], *(e["file"] for e in engines.values())],
                   force=True)
    return folder, engines


def test_tensorrt_with_a_plan_writes_a_tensorrt_plan_config_naming_the_version_it_needs(engine, tmp_path):
    folder, engines = _engine_with_plans(engine, tmp_path, [("10.13.3.9", "NVIDIA RTX 3060", "8.6", "12.8")])
    (plan,) = engines.values()
    with pytest.raises(InputError, match="runs on a GPU only"):
        write_triton_model(folder, tmp_path / "r", tensorrt=True, device="cpu", log=quiet)
    record = write_triton_model(folder, tmp_path / "r", tensorrt=True, log=quiet)
    model = tmp_path / "r" / "edgeseg_liver_spleen"
    config = _parse(model / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert [v.name for v in config.output] == ["prob_liver", "prob_spleen"] and list(config.input[0].dims) == [1, 64, 64, 64]
    assert (model / "1" / "model.plan").read_bytes() == (folder / plan["file"]).read_bytes()
    assert not (model / "1" / "model.onnx").exists()
    text = (model / "config.pbtxt").read_text()
    assert "TensorRT 10.13.3.9" in text and "compute capability 8.6" in text
    assert "TensorRT 10.13.3.9" in (tmp_path / "r" / "README.md").read_text()
    assert record["tensorrt"] == plan["key"]

    two, _ = _engine_with_plans(engine, tmp_path / "two", [("10.13.3.9", "NVIDIA RTX 3060", "8.6", "12.8"),
                                                           ("10.13.3.9", "Tesla T4", "7.5", "12.8")])
    with pytest.raises(InputError, match="holds 2 TensorRT plans") as e:
        write_triton_model(two, tmp_path / "r2", tensorrt=True, log=quiet)
    assert "Triton server's GPU machine" in e.value.fix


def test_an_existing_model_is_replaced_only_with_force_and_a_users_file_never(engine, tmp_path):
    repo = tmp_path / "r"
    first = write_triton_model(engine, repo, name="seg", log=quiet)
    result = CliRunner().invoke(app, ["triton", str(engine), "--out", str(repo), "--name", "seg", "--json"])
    assert result.exit_code == 2, result.output
    assert "already holds a Triton model" in json.loads(result.output)["problem"]
    assert "--force" in json.loads(result.output)["fix"]

    again = write_triton_model(engine, repo, name="seg", max_batch=2, force=True, log=quiet)
    assert again["max_batch_size"] == 2 and first["max_batch_size"] == 4
    assert _parse(repo / "seg" / "config.pbtxt").max_batch_size == 2
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "seg"]  # the old folder is gone, no temporary left

    (repo / "seg" / "labels.txt").write_text("mine\n")  # a user's file in the model folder
    with pytest.raises(InputError, match="labels.txt"):
        write_triton_model(engine, repo, name="seg", force=True, log=quiet)
    assert (repo / "seg" / "labels.txt").read_text() == "mine\n"
    assert _parse(repo / "seg" / "config.pbtxt").max_batch_size == 2  # untouched

    (repo / "other").mkdir()
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')  # another model of the repository
    (repo / "README.md").write_text("# our models\n")  # the repository's own README
    write_triton_model(engine, repo, name="seg2", log=quiet)
    assert (repo / "README.md").read_text() == "# our models\n" and (repo / "other" / "config.pbtxt").exists()
    assert (repo / "seg2" / "README.md").exists()
    with pytest.raises(InputError, match="not a model name"):
        write_triton_model(engine, repo, name="../up", log=quiet)


def test_the_triton_types_are_tritons(repo):
    from tritonclient.grpc import model_config_pb2

    names = set(model_config_pb2.DataType.keys())
    assert set(TRITON_TYPES.values()) <= names


def test_a_graph_with_external_weights_is_served_as_a_model_onnx_folder(engine, tmp_path):
    """Triton's ONNX Runtime backend takes `model.onnx` as a folder holding the graph and its weights files:
    both are copied byte for byte, and the graph there runs and gives what the engine's graph gives."""
    import onnx

    folder = tmp_path / "engine-ext"
    shutil.copytree(engine, folder)
    m = json.loads((folder / "manifest.json").read_text())
    model = onnx.load(str(folder / "fused.fp32.onnx"))
    (folder / "fused.fp32.onnx").unlink()
    onnx.save(model, str(folder / "fused.fp32.onnx"), save_as_external_data=True, location="fused.fp32.onnx.data")
    body = {k: v for k, v in m.items() if k not in ("kind", "written_by", "created", "libraries", "host", "files",
                                                    "manifest_sha256")}
    body["graphs"]["fp32"]["data_file"] = "fused.fp32.onnx.data"
    write_manifest(folder, "engine", body, [*m["files"], "fused.fp32.onnx.data"], force=True)

    record = write_triton_model(folder, tmp_path / "r", log=quiet)
    served = tmp_path / "r" / "edgeseg_liver_spleen" / "1" / "model.onnx"
    assert served.is_dir() and sorted(p.name for p in served.iterdir()) == ["fused.fp32.onnx.data", "model.onnx"]
    assert (served / "fused.fp32.onnx.data").read_bytes() == (folder / "fused.fp32.onnx.data").read_bytes()
    assert record["source"]["external_files"] == ["fused.fp32.onnx.data"]
    config = _parse(tmp_path / "r" / "edgeseg_liver_spleen" / "config.pbtxt")
    x = np.random.default_rng(0).random((2, *config.input[0].dims), dtype=np.float32)
    got = _session(served / "model.onnx").run(None, {"image": x})
    ref = _session(engine / "fused.fp32.onnx").run(None, {"image": x})
    for g, r in zip(got, ref):
        assert np.array_equal(g, r)


def test_without_tritonclient_the_repository_is_written_and_says_its_config_was_not_parsed(engine, tmp_path, monkeypatch):
    from edgeseg.runtime import triton

    monkeypatch.setattr(triton, "_tritonclient_version", lambda: None)  # as on a box without edgeseg[triton]
    lines = []
    record = write_triton_model(engine, tmp_path / "r", log=lines.append)
    assert record["config_checked_with"] is None
    assert any("not parsed" in line and "edgeseg[triton]" in line for line in lines)
    _parse(tmp_path / "r" / "edgeseg_liver_spleen" / "config.pbtxt")  # written the same way: it still parses

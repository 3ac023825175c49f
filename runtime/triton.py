"""A Triton Inference Server model repository from a fused engine folder (`edgeseg triton`).

`write_triton_model(engine, repo)` writes ``repo/<name>/``::

    config.pbtxt            platform onnxruntime_onnx (or tensorrt_plan), I/O without the batch axis,
                            max_batch_size, dynamic_batching, instance_group, and the preprocessing and
                            post-processing the client must apply, as `parameters`
    1/model.onnx            the engine's ONNX graph, byte for byte (a folder `model.onnx/` holding the
                            graph and its external weights when it has them, as Triton documents)
    1/model.plan            instead, with --tensorrt: the engine's TensorRT plan for this GPU
    README.md               what the client must do, and what was verified where
    engine_manifest.json    the engine's manifest.json, byte for byte (provenance)
    manifest.json           edgeseg's record of the folder (kind "triton-model"): what `--force` may delete

and ``repo/README.md``, an index of the edgeseg models in the repository (left alone when a README.md
there is not edgeseg's). The model folder is built under a hidden temporary name in `repo` and renamed
into place: a killed run leaves no half-written model for Triton to load. An existing model folder is
replaced only with `force`, and only when edgeseg wrote it (`claim_output`: a user's file there is never
deleted). Nothing here needs torch, tritonclient or a GPU; when tritonclient is installed, the written
config is parsed with Triton's own protobuf (`model_config_pb2.ModelConfig`) before it is renamed into place.

No Triton server runs where this was written: the config is written against Triton's documented
ModelConfig fields and checked by its protobuf; the model file runs under ONNX Runtime (tests).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from edgeseg.runtime.atomic import TMP_MARK, _umask, fsync_dir, refuse_link, write_text_atomic
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.lock import locks_output
from edgeseg.runtime.manifest import MANIFEST_NAME, WRITTEN_BY, claim_output, read_manifest, sha256_file, write_manifest

__all__ = ["KIND", "README_MARK", "TRITON_TYPES", "client_parameters", "config_text", "preferred_batch_sizes",
           "triton_config_check", "write_triton_model"]

KIND = "triton-model"  # the manifest kind of a model folder edgeseg wrote (runtime.manifest.ARTIFACT_KINDS)
VERSION = "1"
CONFIG = "config.pbtxt"
README = "README.md"
ENGINE_MANIFEST_COPY = "engine_manifest.json"
README_MARK = "<!-- written by edgeseg triton; rewritten by each run -->"
INSTALL_HINT = "pip install 'edgeseg[triton]'"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
DEVICES = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
Log = Callable[[str], None]

# numpy's dtype name (what `inspect_graph` reports) -> Triton's DataType (model_config.proto)
TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
                "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
                "bfloat16": "TYPE_BF16"}


# --- what the config says ----------------------------------------------------------------------------


def preferred_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The sizes the dynamic batcher tries to form: powers of two from 2 up to `max_batch`, and `max_batch`."""
    if max_batch < 2:
        return ()
    sizes = {max_batch}
    b = 2
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


def _fmt(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def client_parameters(manifest, *, engine_sha256: str, graph: str, graph_sha256: str) -> dict[str, str]:
    """What a client must do around the model, as `edgeseg predict` does it: the config's `parameters`.

    Read from the engine's manifest (preprocessing spec, window, organs) and from the code that predict
    runs (overlap and threshold defaults of `PredictOptions`, the blending of `sliding_window`), so the
    config cannot state something predict does not do.
    """
    from edgeseg.runtime.predict.options import PredictOptions
    from edgeseg.runtime.sliding_window import gaussian_importance, sliding_window

    pre = manifest.preprocess
    window_defaults = inspect.signature(sliding_window).parameters
    sigma = window_defaults["sigma_scale"].default
    pad = window_defaults["pad_value"].default
    min_weight = inspect.signature(gaussian_importance).parameters["min_weight"].default
    opts = PredictOptions()
    lo, hi = pre.hu_min, pre.hu_max
    return {
        "edgeseg.organs": ",".join(manifest.organs),
        "edgeseg.input": f"{manifest.io.input}: float32 (batch, {manifest.in_channels}, {_fmt(manifest.window)}), "
                         "one preprocessed CT window per batch item",
        "edgeseg.orientation": f"{pre.orientation} (reorient the scan's voxel axes to {pre.orientation} first)",
        "edgeseg.spacing_mm": f"{_fmt(pre.spacing)} (resample the image linearly to this spacing, keeping the first "
                              "voxel's centre, as MONAI's Spacing)",
        "edgeseg.hu_window": f"{lo:g},{hi:g} (clip HU to [{lo:g}, {hi:g}], then (HU - ({lo:g})) / {hi - lo:g}: "
                             "values in [0, 1])",
        "edgeseg.window": _fmt(manifest.window),
        "edgeseg.sliding_window": f"overlap {opts.overlap:g}: per axis stride int(window * (1 - overlap)), starts 0, "
                                  "stride, 2 stride, ... and a last one at size - window; an axis shorter than the "
                                  f"window is padded with {pad:g} (floor(diff / 2) before, the rest after)",
        "edgeseg.blending": f"gaussian: per axis exp(-x^2 / (2 (sigma * side)^2)) around the window's centre, "
                            f"sigma {sigma:g}, product over axes, clamped below at {min_weight:g}; each voxel "
                            "= sum(weight * prob) / sum(weight) over the windows covering it",
        "edgeseg.outputs": ", ".join(manifest.io.outputs) + ": probabilities (the sigmoid is in the graph), "
                           "one channel per organ",
        "edgeseg.threshold": f"{opts.threshold:g} (mask = blended probability >= threshold, on the model grid; "
                             "then back to the scan's grid)",
        "edgeseg.engine_manifest_sha256": engine_sha256,
        "edgeseg.preprocess_sha256": manifest.preprocess_sha256 or pre.sha256(),
        "edgeseg.graph": f"{graph} sha256 {graph_sha256}",
        "edgeseg.written_by": WRITTEN_BY,
    }


def _quote(text: str) -> str:
    """A protobuf text-format string literal (one line)."""
    text = " ".join(str(text).split())
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    return "\n".join("# " + " ".join(line.split()) if line.strip() else "#" for line in text.splitlines())


def _tensor_entries(values: list[dict]) -> str:
    entries = []
    for v in values:
        entries.append("  {\n"
                       f"    name: {_quote(v['name'])}\n"
                       f"    data_type: {v['data_type']}\n"
                       f"    dims: [ {', '.join(str(d) for d in v['dims'])} ]\n"
                       "  }")
    return "[\n" + ",\n".join(entries) + "\n]"


def config_text(*, name: str, platform: str, model_file: str, max_batch: int, inputs: list[dict], outputs: list[dict],
                instances: int, kind: str, parameters: Mapping[str, str], comments: str) -> str:
    """config.pbtxt: Triton's ModelConfig in protobuf text format (field names as in model_config.proto)."""
    preferred = preferred_batch_sizes(max_batch)
    batching = ("dynamic_batching {\n"
                + (f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else "")
                + "}\n")
    params = "".join(f"parameters {{\n  key: {_quote(k)}\n  value: {{ string_value: {_quote(v)} }}\n}}\n"
                     for k, v in parameters.items())
    return (f"{_comment(comments)}\n"
            f"name: {_quote(name)}\n"
            f"platform: {_quote(platform)}\n"
            f"default_model_filename: {_quote(model_file)}\n"
            f"max_batch_size: {max_batch}\n"
            f"# dims leave out the batch axis: a request carries [b, ...dims] with 1 <= b <= {max_batch}\n"
            f"input {_tensor_entries(inputs)}\n"
            f"output {_tensor_entries(outputs)}\n"
            f"{batching}"
            f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n"
            "# What the client must do around the model (edgeseg predict does the same); see README.md\n"
            f"{params}")


def triton_config_check(text: str):
    """Parse `text` with Triton's own protobuf (tritonclient's `model_config_pb2.ModelConfig`): the ModelConfig,
    or an `InputError` saying where it fails. Needs tritonclient (`edgeseg[triton]`)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise InputError(f"is not a valid Triton model config: {e}", path=CONFIG,
                         fix="regenerate it with edgeseg triton (the config is written, not edited)") from None


def _tritonclient_version() -> str | None:
    from edgeseg.runtime.availability import module_version

    return module_version("tritonclient")


# --- the model file ------------------------------------------------------------------------------------


def _io(values: list[dict], graph: Path, what: str) -> list[dict]:
    from edgeseg.runtime.graph import DYNAMIC

    out = []
    for v in values:
        if v["dtype"] not in TRITON_TYPES:
            raise InputError(f"its {what} {v['name']!r} is {v['dtype']}, which Triton has no type for", path=graph,
                             fix="fuse the engine again with this edgeseg (its graphs take and give float32)")
        shape = v["shape"]
        if not shape or shape[0] != DYNAMIC:
            raise InputError(f"its {what} {v['name']!r} has shape {shape}: the batch axis is not dynamic, so Triton "
                             "cannot batch requests", path=graph,
                             fix="export the trunk and fuse the engine again with this edgeseg (batch axis dynamic)")
        out.append({"name": v["name"], "dtype": v["dtype"], "data_type": TRITON_TYPES[v["dtype"]],
                    "dims": [-1 if d == DYNAMIC else int(d) for d in shape[1:]]})
    return out


def _choose_plan(manifest, engine_dir: Path) -> tuple[Path, dict]:
    """The engine's TensorRT plan for this GPU, or a refusal saying why none can be named."""
    from edgeseg.runtime.backends.tensorrt import current_engine_key, engine_key_differences, key_string

    if not manifest.engines:
        raise InputError(f"has no TensorRT engine to serve; it holds {manifest.artifacts_present()}", path=engine_dir,
                         fix=f"build one on a GPU like the Triton server's ({manifest.REBUILD} --tensorrt), or leave out "
                             "--tensorrt to serve the ONNX graph with Triton's ONNX Runtime backend")
    plan, key = manifest.pick_engine(engine_dir, required=True)
    try:
        here = current_engine_key()
    except Exception as e:  # noqa: BLE001 - no TensorRT or no GPU here: say so, never guess among several
        if len(manifest.engines) > 1:
            raise InputError(f"holds {len(manifest.engines)} TensorRT plans ({', '.join(sorted(manifest.engines))}) and "
                             f"this machine cannot tell which GPU the server has ({type(e).__name__}: {e})",
                             path=engine_dir, fix="run edgeseg triton --tensorrt on the Triton server's GPU machine "
                             "(with edgeseg[trt]), or leave out --tensorrt to serve the ONNX graph") from None
        return plan, dict(key or {})
    if key_string(here) not in manifest.engines:
        diffs = engine_key_differences(dict(key or {}), here)
        raise InputError(f"holds no TensorRT plan for this GPU ({key_string(here)}): {'; '.join(diffs)}",
                         path=engine_dir, fix=f"build one here: {manifest.REBUILD} --tensorrt, or leave out --tensorrt")
    return plan, dict(key or {})


def _copy(src: Path, dst: Path, sha256: str | None) -> str:
    """Copy `src` to `dst` (a new file) and return its sha256, refused when it is not the one the engine recorded."""
    refuse_link(src, doing="copies")
    shutil.copyfile(src, dst, follow_symlinks=False)
    got = sha256_file(dst)
    if sha256 is not None and got != sha256:
        raise InputError(f"the copy of {src.name} has sha256 {got[:12]}, the engine's manifest records {sha256[:12]} "
                         "(changed while it was copied?)", path=src, fix="run the same command again")
    return got


# --- the README --------------------------------------------------------------------------------------


VERIFIED = ("No Triton server runs where edgeseg is developed and tested: `config.pbtxt` is written against "
            "Triton's documented model configuration and parses with Triton's own protobuf "
            "(`tritonclient.grpc.model_config_pb2`); the model file is the engine's own graph, and it runs under "
            "ONNX Runtime at the shapes and batch sizes the config declares, giving the engine's probabilities "
            "(edgeseg's tests). A TensorRT plan (`--tensorrt`) has not run under Triton either; it must match the "
            "server's TensorRT version and GPU.")


def model_readme(record: Mapping) -> str:
    """One model's section: what Triton serves, what the client must do, where it came from."""
    p = record["parameters"]
    src = record["source"]
    io = record["io"]
    lines = [
        f"## `{record['name']}`",
        "",
        f"- Serves organs {', '.join(f'`{o}`' for o in p['edgeseg.organs'].split(','))} from the edgeseg engine "
        f"`{record['engine']['folder']}` (engine manifest sha256 `{record['engine']['manifest_sha256']}`; a copy "
        f"is `{record['name']}/{ENGINE_MANIFEST_COPY}`).",
        f"- Platform `{record['platform']}`, file `{record['name']}/{VERSION}/{record['model_file']}`: "
        + (f"the engine's TensorRT plan `{src['file']}` (sha256 `{src['sha256']}`); it needs TensorRT "
           f"{record['tensorrt']['tensorrt']} and a GPU of compute capability {record['tensorrt']['compute_capability']} "
           f"(built on {record['tensorrt']['gpu']}, CUDA {record['tensorrt']['cuda']}): a Triton release that "
           "ships that TensorRT version." if record.get("tensorrt") else
           f"the engine's {src['precision']} ONNX graph `{src['file']}`, byte for byte (sha256 `{src['sha256']}`)."),
        f"- `max_batch_size` {record['max_batch_size']}, preferred batch sizes "
        f"{record['preferred_batch_sizes'] or 'none (batch 1 only)'}, {record['instances']} instance(s) on "
        f"{record['device'].upper()}.",
        "- Inputs: " + "; ".join(f"`{v['name']}` {v['data_type']} dims {v['dims']}" for v in io["inputs"])
        + "; outputs: " + "; ".join(f"`{v['name']}` {v['data_type']} dims {v['dims']}" for v in io["outputs"])
        + " (dims without the batch axis).",
        "",
        "What the client must do, as `edgeseg predict` does (also in the config's `parameters`):",
        "",
        f"1. Orientation: {p['edgeseg.orientation']}.",
        f"2. Spacing (mm): {p['edgeseg.spacing_mm']}.",
        f"3. Intensity: {p['edgeseg.hu_window']}.",
        f"4. Windows of {p['edgeseg.window']} voxels, {p['edgeseg.sliding_window']}; send them in batches.",
        f"5. Outputs: {p['edgeseg.outputs']}. Blend: {p['edgeseg.blending']}.",
        f"6. Threshold: {p['edgeseg.threshold']}.",
        "",
    ]
    return "\n".join(lines)


def _repo_readme(models: list[Mapping]) -> str:
    head = [README_MARK, "# Triton model repository (edgeseg)", "",
            "Serve it with `tritonserver --model-repository=<this folder>`; each model takes preprocessed CT "
            "windows and returns organ probabilities. `edgeseg predict` does the whole scan on one machine; a "
            "Triton client does steps 1-6 below around the server.", "", "**What is verified where.** " + VERIFIED, ""]
    return "\n".join(head + [model_readme(m) for m in models])


def _write_repo_readme(repo: Path, log: Log) -> Path | None:
    """Rewrite repo/README.md from every edgeseg model folder in `repo`; a README.md edgeseg did not write is kept."""
    target = repo / README
    if target.is_symlink() or (target.exists() and not target.read_text(errors="replace").startswith(README_MARK)):
        log(f"{target} is not edgeseg's: left as it is (each model folder holds its own {README})")
        return None
    models = []
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        try:
            models.append(read_manifest(folder, KIND, verify_files=False))
        except InputError:
            continue  # another model of the repository, not edgeseg's
    write_text_atomic(target, _repo_readme(models), force=True)
    return target


# --- writing -----------------------------------------------------------------------------------------


def _check_options(name: str, max_batch: int | None, limit: int, instances: int, device: str, tensorrt: bool,
                   engine_dir: Path) -> int:
    if not NAME_RE.fullmatch(name) or name.isdigit():
        raise InputError(f"--name {name!r} is not a model name Triton and file systems take",
                         fix="use letters, digits, '_', '-' and '.', starting with a letter or digit, not only digits")
    if not isinstance(instances, int) or isinstance(instances, bool) or instances < 1:
        raise InputError(f"--instances {instances!r} must be a whole number >= 1", fix="e.g. --instances 1")
    if device not in DEVICES:
        raise InputError(f"--device {device!r} must be one of {', '.join(DEVICES)}", fix="e.g. --device gpu")
    if tensorrt and device != "gpu":
        raise InputError("a TensorRT plan runs on a GPU only: --tensorrt with --device cpu", fix="pass --device gpu")
    max_batch = limit if max_batch is None else max_batch
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise InputError(f"--max-batch {max_batch!r} must be a whole number >= 1", fix=f"e.g. --max-batch {limit}")
    if max_batch > limit:
        raise InputError(f"--max-batch {max_batch} is beyond the engine's batch range: its graphs were exported for "
                         f"batches of 1 to {limit}", path=engine_dir,
                         fix=f"pass --max-batch {limit} or less, or export the trunk with --batch {max_batch} and fuse "
                             "the engine again")
    return max_batch


@locks_output("edgeseg triton", "repo")  # one writer per repository
def write_triton_model(engine: str | Path, repo: str | Path, *, name: str | None = None, max_batch: int | None = None,
                       instances: int = 1, device: str = "gpu", tensorrt: bool = False, precision: str | None = None,
                       force: bool = False, log: Log = print) -> dict:
    """Write the Triton model of the fused engine in `engine` into the model repository `repo`; returns its record.

    name: the model's folder and Triton name (default ``edgeseg_<organs>``). max_batch: Triton's
    max_batch_size (default and limit: the batch range the engine was exported for). instances: the
    instance_group count on `device` ("gpu" or "cpu"). precision: which ONNX graph (default fp32 when the
    engine has it, else fp16). tensorrt: serve the engine's TensorRT plan for this GPU instead (refused when
    it holds none). force: replace a model folder edgeseg wrote before (never a user's files).
    """
    from edgeseg.runtime.artifacts.engine import EngineManifest
    from edgeseg.runtime.graph import inspect_graph

    engine_dir, repo = Path(engine).expanduser(), Path(repo).expanduser()
    manifest = EngineManifest.from_folder(engine_dir)  # kind, self-hash, every file's sha256
    plan = key = None
    if tensorrt:
        plan, key = _choose_plan(manifest, engine_dir)  # none for this GPU: refused before anything else
    if precision is None:  # a plan is built from the fp16 graph: its I/O (float32) is read from that graph
        precision = "fp16" if "fp16" in manifest.graphs and (tensorrt or "fp32" not in manifest.graphs) else "fp32"
    graph_path = manifest.graph_path(engine_dir, precision)  # refuses a precision the engine lacks
    graph = inspect_graph(graph_path)
    inputs, outputs = _io(graph["inputs"], graph_path, "input"), _io(graph["outputs"], graph_path, "output")
    if [v["name"] for v in inputs] != [manifest.io.input] or [v["name"] for v in outputs] != list(manifest.io.outputs):
        raise InputError(f"its graph {graph_path.name} has inputs {[v['name'] for v in inputs]} and outputs "
                         f"{[v['name'] for v in outputs]}, its manifest lists {manifest.io.input!r} and "
                         f"{list(manifest.io.outputs)}", path=engine_dir, fix=manifest.fix())
    name = name or "edgeseg_" + "_".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", o) for o in manifest.organs)
    max_batch = _check_options(name, max_batch, manifest.max_batch, instances, device, tensorrt, engine_dir)
    model_dir = repo / name
    refuse_link(repo, doing="writes a model repository")
    refuse_link(model_dir, doing="replaces a model folder")
    claim_output(model_dir, KIND, force=force, dry_run=True)  # refused before any work: a user's folder, no --force
    repo.mkdir(parents=True, exist_ok=True)

    engine_sha = manifest.sha256
    src = plan if plan is not None else graph_path
    src_sha = manifest.files.get(src.name, {}).get("sha256")
    platform, model_file = ("tensorrt_plan", "model.plan") if plan is not None else ("onnxruntime_onnx", "model.onnx")
    external = [] if plan is not None else list(graph["external_files"])
    parameters = client_parameters(manifest, engine_sha256=engine_sha, graph=src.name, graph_sha256=str(src_sha))
    if plan is not None:
        what = (f"{VERSION}/{model_file}: the engine's TensorRT plan {src.name}, built with TensorRT {key.get('tensorrt')} "
                f"on {key.get('gpu')} (compute capability {key.get('compute_capability')}, CUDA {key.get('cuda')}).\n"
                f"It needs a Triton release whose TensorRT is {key.get('tensorrt')}, on a GPU of compute capability "
                f"{key.get('compute_capability')}; its I/O is the engine's graphs' (float32), read from {graph_path.name}.")
    else:
        what = (f"{VERSION}/{model_file}: the engine's {precision} ONNX graph {src.name}, byte for byte"
                + (f", with its external weights ({', '.join(external)}) in the folder {model_file}/" if external else "")
                + f" (float32 inputs and outputs{'; mixed fp16 inside' if precision == 'fp16' else ''}), "
                "run by Triton's ONNX Runtime backend.")
    comments = (f"Written by {WRITTEN_BY} (edgeseg triton) from the engine {engine_dir.resolve()}\n"
                f"(its manifest sha256 {engine_sha}; a copy is {ENGINE_MANIFEST_COPY}).\n{what}\n"
                "Organ probabilities per window: the client preprocesses, tiles and blends as the parameters below and "
                "README.md say.")
    text = config_text(name=name, platform=platform, model_file=model_file, max_batch=max_batch, inputs=inputs,
                       outputs=outputs, instances=instances, kind=DEVICES[device], parameters=parameters,
                       comments=comments)
    checked_with = None
    if _tritonclient_version():
        triton_config_check(text)
        checked_with = f"tritonclient {_tritonclient_version()}"
    else:
        log(f"config.pbtxt not parsed with Triton's protobuf: tritonclient is not installed ({INSTALL_HINT})")

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_MARK, dir=repo))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: a server running as another user must read it
        version = tmp / VERSION
        version.mkdir()
        files = [CONFIG, README, ENGINE_MANIFEST_COPY]
        if external:  # Triton's ONNX Runtime backend takes a folder named model.onnx holding the graph and its data
            (version / model_file).mkdir()
            rel = [f"{VERSION}/{model_file}/{model_file}"] + [f"{VERSION}/{model_file}/{x}" for x in external]
            sources = [graph_path] + [manifest.member(engine_dir, x) for x in external]
        else:
            rel, sources = [f"{VERSION}/{model_file}"], [src]
        for r, s in zip(rel, sources):
            log(f"copying {s.name} -> {name}/{r} ...")
            _copy(s, tmp / r, manifest.files.get(s.name, {}).get("sha256"))
        files += rel
        _copy(engine_dir / MANIFEST_NAME, tmp / ENGINE_MANIFEST_COPY, None)
        (tmp / CONFIG).write_text(text, encoding="utf-8")
        record = {
            "name": name, "platform": platform, "model_file": model_file, "version": VERSION,
            "engine": {"folder": str(engine_dir.resolve()), "manifest_sha256": engine_sha},
            "source": {"file": src.name, "precision": None if plan is not None else precision, "sha256": src_sha,
                       "external_files": external},
            "tensorrt": key, "max_batch_size": max_batch, "preferred_batch_sizes": list(preferred_batch_sizes(max_batch)),
            "instances": instances, "device": device,
            "io": {"inputs": inputs, "outputs": outputs}, "parameters": parameters,
            "config_checked_with": checked_with,
        }
        (tmp / README).write_text(README_MARK + "\n" + f"# Triton model `{name}` (edgeseg)\n\n**What is verified where.** "
                                  + VERIFIED + "\n\n" + model_readme(record), encoding="utf-8")
        written = write_manifest(tmp, KIND, record, files)
        for d in (version, tmp):
            fsync_dir(d)
        if model_dir.exists():  # checked by claim_output above: an edgeseg model, and --force given
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", suffix=TMP_MARK, dir=repo))
            os.replace(model_dir, old / name)
        os.replace(tmp, model_dir)
        fsync_dir(repo)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder: nothing of the user's is in it
        if old is not None and (old / name).exists() and not model_dir.exists():
            os.replace(old / name, model_dir)  # put the previous model back
            _remove_empty(old)
        raise
    if old is not None:
        try:
            claim_output(old / name, KIND, force=True)  # deletes exactly the files its manifest lists
        except InputError as e:  # a file appeared there meanwhile: kept, with the folder holding it
            log(f"the previous model was moved to {old / name} and kept there: {e.problem}")
        _remove_empty(old)
    log(f"wrote {model_dir} ({platform}, max_batch_size {max_batch}, {instances} instance(s) on {device})")
    index = _write_repo_readme(repo, log)
    return {**written, "model_dir": str(model_dir), "repo_readme": str(index) if index else None}


def _remove_empty(folder: Path) -> None:
    for d in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass

"""Build a strongly typed TensorRT engine from the mixed fp16 ONNX trunk; key it to this machine.

Written against TensorRT 10.x and 11.x (NVIDIA's Python API reference, "Optimizing Builder
Performance" for timing caches, the Engine Inspector page, and the 10.x -> 11.x migration guide):

- precision lives in the ONNX graph; the network is strongly typed: on 10.x by passing
  ``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``, on 11.x by default (the flag and
  ``BuilderFlag.FP16`` are gone; 11.x would silently build fp32 from a weakly typed request).
  ``BuilderFlag.FP16`` is never set here.
- ``OnnxParser.parse_from_file`` so weights stored as external data next to the graph are found.
- one optimization profile over the batch range of input ``image``; workspace through
  ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)``; a timing cache loaded and saved per engine key.
- after the build, the engine inspector (built with ``ProfilingVerbosity.DETAILED``) says which layers
  run in half precision; a build with no half layer is refused (the fp16 graph was not used).

The engine key (TensorRT version, GPU, compute capability, CUDA) and its check are pure functions in
``edgeseg.runtime.backends.tensorrt`` (the deployment side needs them too) and are re-exported here.

Not yet run on hardware: no TensorRT was installable where this was written and no GPU has been
lent, so only the pure functions have run (tests/export/test_tensorrt.py). The `trt`-marked
``test_export_and_fuse_build_engines_that_pick_engine_finds_among_other_machines_plans`` runs the
product's path (export, fuse, engine choice) wherever TensorRT and an NVIDIA GPU are present.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeseg.runtime.atomic import write_bytes_atomic
from edgeseg.runtime.backends.tensorrt import (
    KEY_FIELDS,
    REBUILD,
    check_engine_key,
    device_memory_bytes,
    engine_key_differences,
    engine_key_from_facts,
    half_fraction,
    import_tensorrt,
    key_string,
    layer_precisions,
)
from edgeseg.runtime.errors import EdgesegError, InputError

__all__ = ["KEY_FIELDS", "REBUILD", "EngineBuild", "build_engine", "check_engine_key", "engine_key",
           "engine_key_differences", "engine_key_from_facts", "key_string", "plan_name"]


def engine_key(device_id: int = 0) -> tuple[dict[str, str], str]:
    """This machine's engine key as a dict {tensorrt, gpu, compute_capability, cuda} and its short string."""
    from edgeseg.runtime.backends.tensorrt import current_engine_key

    key = current_engine_key(device_id)
    return key, key_string(key)


def plan_name(key: dict[str, str], stem: str = "trunk") -> str:
    """``trunk.<key>.plan``: one engine per TensorRT version / GPU / CUDA can live side by side."""
    return f"{stem}.{key_string(key)}.plan"


@dataclass
class EngineBuild:
    plan_path: str
    engine_key: dict
    key: str
    half_fraction: float
    layer_precisions: dict
    batch_range: tuple[int, int, int]
    workspace_bytes: int
    device_memory_bytes: int | None
    timing_cache: str | None
    timing_cache_reused: bool
    strongly_typed: str
    seconds: float
    tensorrt: str

    def to_dict(self) -> dict:
        return asdict(self)


def _logger(trt: Any, level: str) -> Any:
    """A TensorRT logger that also keeps errors, so a failed parse/build can say what went wrong."""

    class Collecting(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._print_up_to = getattr(trt.ILogger.Severity, level)

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            if int(severity) <= int(self._print_up_to):
                print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)

    return Collecting()


def build_engine(onnx_fp16_path: str | Path, plan_path: str | Path, *, min_batch: int = 1, opt_batch: int = 2,
                 max_batch: int = 4, workspace_bytes: int = 4 << 30, timing_cache_path: str | Path | None = None,
                 input_name: str = "image", require_half: bool = True, builder_optimization_level: int | None = None,
                 device_id: int = 0, force: bool = False, log_level: str = "WARNING") -> EngineBuild:
    """Build `plan_path` from the mixed fp16 graph; returns what was built, incl. the fraction of half layers.

    `require_half=False` allows an fp32 graph (a test or a parity reference); by default an engine
    with no half-precision layer is refused, because it means the fp16 graph was not the one given.
    """
    onnx_fp16_path, plan_path = Path(onnx_fp16_path), Path(plan_path)
    if not onnx_fp16_path.is_file():
        raise InputError("does not exist", path=onnx_fp16_path, fix="export the ONNX graphs first (`edgeseg export`)")
    if plan_path.exists() and not force:
        raise InputError("already exists; refusing to overwrite it", path=plan_path, fix="pass --force, or choose another --out")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise InputError(f"batch range must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}",
                         fix="pass min_batch <= opt_batch <= max_batch")
    trt = import_tensorrt()
    key, key_str = engine_key(device_id)
    major = int(trt.__version__.split(".")[0])
    t0 = time.perf_counter()

    logger = _logger(trt, log_level)
    builder = trt.Builder(logger)
    if major >= 11:  # strongly typed is the only mode; the creation flag is not needed (nor EXPLICIT_BATCH)
        network, typing = builder.create_network(0), "always (TensorRT 11+)"
    else:
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        typing = "NetworkDefinitionCreationFlag.STRONGLY_TYPED"
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_fp16_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise InputError("TensorRT's ONNX parser rejected the graph: " + " | ".join(errors or logger.errors or ["no details"]),
                         path=onnx_fp16_path, fix="re-export the graph (`edgeseg export`); check its opset and operators")

    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if input_name not in inputs:
        raise InputError(f"has no input {input_name!r} (inputs: {', '.join(inputs)})", path=onnx_fp16_path,
                         fix="export the trunk with input_names=['image']")
    dims = tuple(int(d) for d in inputs[input_name].shape)
    if any(d < 0 for d in dims[1:]):
        raise InputError(f"input {input_name!r} has dynamic dimensions other than the batch: {dims}", path=onnx_fp16_path,
                         fix="export with a fixed window (only the batch dimension dynamic)")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # so the inspector reports layer types
    if builder_optimization_level is not None:
        config.builder_optimization_level = int(builder_optimization_level)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (min_batch, *dims[1:]), (opt_batch, *dims[1:]), (max_batch, *dims[1:]))
    config.add_optimization_profile(profile)

    reused = False
    cache = None
    if timing_cache_path is not None:
        timing_cache_path = Path(timing_cache_path)
        blob = timing_cache_path.read_bytes() if timing_cache_path.exists() else b""
        cache = config.create_timing_cache(blob)
        reused = bool(blob)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            # A cache from another device/TensorRT: start an empty one rather than mixing timings.
            cache, reused = config.create_timing_cache(b""), False
            config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgesegError("TensorRT could not build the engine: " + (" | ".join(logger.errors) or "see the log above"),
                           path=onnx_fp16_path, fix="check GPU memory (workspace_bytes) and the TensorRT log; try a "
                                                    "smaller max_batch")
    plan_bytes = bytes(plan)

    # Inspect before writing: a plan that is not fp16 is never left on disk looking finished.
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
    if engine is None:
        raise EdgesegError("TensorRT built an engine it cannot deserialize: " + " | ".join(logger.errors), fix=REBUILD)
    layer_json = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    counts = layer_precisions(layer_json) or {}
    fraction = half_fraction(layer_json) or 0.0
    if require_half and fraction == 0.0:
        raise InputError(f"the engine has no half-precision layer (layer types: {counts or 'unknown'}): the graph is "
                         "fp32, and TensorRT 11 takes precision from the graph only", path=onnx_fp16_path,
                         fix="build from the mixed fp16 graph (trunk.fp16.onnx), not the fp32 one")

    write_bytes_atomic(plan_path, plan_bytes, force=force)
    if cache is not None:
        write_bytes_atomic(timing_cache_path, bytes(config.get_timing_cache().serialize()), force=True)
    return EngineBuild(
        plan_path=str(plan_path), engine_key=key, key=key_str, half_fraction=fraction, layer_precisions=counts,
        batch_range=(min_batch, opt_batch, max_batch), workspace_bytes=int(workspace_bytes),
        device_memory_bytes=device_memory_bytes(engine), timing_cache=None if cache is None else str(timing_cache_path),
        timing_cache_reused=reused, strongly_typed=typing, seconds=round(time.perf_counter() - t0, 2),
        tensorrt=trt.__version__,
    )

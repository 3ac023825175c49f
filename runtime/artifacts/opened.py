"""An artifact folder opened on a backend: what `OpenedTrunk` and `Engine` share, and how one is opened.

A trunk folder (`edgeseg export`) and an engine folder (`edgeseg fuse`) both list ONNX graphs by
precision and TensorRT engines by engine key in their manifests (`GraphFolderManifest`).
`open_on_backend` picks the one the caller asked for and opens it on a backend by name (no fallback)
or by `choose_backend` ("auto", which says what ran and why); it returns the active backend, the
precision of the graph it runs and the reason. Which file a backend, device and precision runs (or
why none can) is the support table's `Combination.runs` (`edgeseg.runtime.support`).
`OpenedArtifact.open(folder, ...)` reads the folder's manifest through its class, opens it and
builds the opened artifact; its constructor is the one both kinds use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from edgeseg.runtime.artifacts.graphs import GraphFolderManifest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.support import (
    DEFAULT_PRECISION,
    PROBES,
    BackendChoice,
    Precision,
    Refusal,
    Source,
    combination,
    parse_choice,
    parse_backend,
    parse_device,
    parse_precision,
)


class OpenedArtifact:
    """An artifact folder with an active backend: its manifest, preprocessing, what ran, and closing it
    (also as a context manager).

    Build with `open` (`open_trunk`, `open_engine`). The constructor takes the manifest (or its JSON
    record, parsed by the class: tests build stand-ins so) and any active-able `Backend`.
    """

    MANIFEST: ClassVar[type[GraphFolderManifest]]
    backend: Any

    def __init__(self, folder: str | Path | None, manifest: GraphFolderManifest | Mapping[str, Any], backend, *,
                 precision: str, reason: str = ""):
        if not isinstance(manifest, GraphFolderManifest):
            manifest = self.MANIFEST.from_record(manifest)
        self.folder = None if folder is None else Path(folder)
        self.manifest = manifest
        self.manifest_hash = manifest.sha256
        self.preprocess = manifest.preprocess
        self.window: tuple[int, int, int] = manifest.window
        self.output_names: tuple[str, ...] = manifest.io.outputs
        self.cut = manifest.cut
        self.graph_precision = precision  # the graph/engine picked: "fp32", "fp16" or "int8"
        self.max_batch = manifest.max_batch
        self.in_channels = manifest.in_channels
        self.backend = backend.activate()
        self.reason = reason
        self.check_outputs()

    def check_outputs(self) -> None:
        """Refuse a backend whose graph's outputs are not the ones the manifest lists."""

    @classmethod
    def open(cls, folder: str | Path, *, backend: str | BackendChoice = "auto", precision: str | None = None,
             threads: int | None = None, device: str | None = None, cache_dir: str | Path | None = None,
             torch_module: Callable[[Path, Any], Any] | None = None):
        """The artifact in `folder` (its manifest checked) opened on `backend`, active (close it, or `with`)."""
        folder = Path(folder)
        key, precision = check_choices(backend, precision)
        manifest = cls.MANIFEST.from_folder(folder)
        made, graph, reason = open_on_backend(
            folder, manifest, key, precision, threads=threads, device=device, cache_dir=cache_dir,
            torch_module=None if torch_module is None else (lambda: torch_module(folder, manifest)))
        try:
            return cls(folder, manifest, made, precision=graph, reason=reason)
        except BaseException:
            made.deactivate()
            raise

    @property
    def ran(self) -> dict:
        """What runs (backend, precision, device, detail), as recorded in caches and reports."""
        return self.backend.describe().to_dict()

    def describe(self) -> str:
        info = self.backend.describe()
        return f"{info.backend} {info.precision} on {info.device}"

    @property
    def on_gpu(self) -> bool:
        """Whether the backend runs on a GPU (CUDA, or ONNX Runtime's TensorRT execution provider)."""
        return self.backend.device.is_gpu

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_choices(backend: str | BackendChoice, precision: str | None) -> tuple[BackendChoice, Precision | None]:
    """What `open_trunk` / `open_engine` were asked for, parsed (unknown names refused with the choices)."""
    return parse_choice(backend), parse_precision(precision)


def open_on_backend(folder: Path, manifest: GraphFolderManifest, key: BackendChoice, precision: Precision | None, *,
                    threads: int | None, device: str | None, cache_dir,
                    torch_module: Callable[[], Any] | None = None) -> tuple[Any, str, str]:
    """(active backend, precision of the graph it runs, why it was chosen) for the artifact in `folder`.

    precision None: the fp32 graph for a named backend (the engine's fp16 for "tensorrt"), any graph
    for "auto" (fp16 on GPU candidates only, as `default_candidates` offers them); "fp32"/"fp16": that
    graph only (refused, naming what the folder has, when missing); "bf16": OpenVINO on the fp32 graph; "int8": the quantized
    graphs (QDQ on ONNX Runtime's TensorRT EP or CPU, NNCF's IR on OpenVINO).
    `torch_module` rebuilds the torch module from the folder's checkpoint (a trunk's); without it the
    torch backend is refused.
    """
    from edgeseg.runtime.backends import Candidate, choose_backend, default_candidates, open_backend

    key, precision = check_choices(key, precision)
    if key is BackendChoice.AUTO:
        graphs = manifest.graphs
        if precision in (Precision.FP32, Precision.FP16, Precision.INT8):
            manifest.graph_path(folder, str(precision))  # refuse a missing graph by name
        fp32 = fp16 = None
        if precision is Precision.INT8:  # int8 only when asked for: the quantized graphs, fastest first
            qdq = manifest.graph_path(folder, "int8")
            cands = [Candidate("ort", qdq, precision="int8", device="tensorrt", options={"cache_dir": cache_dir}),
                     Candidate("openvino", manifest.openvino_ir_path(folder), precision="int8",
                               options={"threads": threads, "cache_dir": cache_dir}),
                     Candidate("ort", qdq, precision="int8", device="cpu", options={"threads": threads})]
            chosen, reason = choose_backend(cands)
            return chosen, "int8", reason
        if precision is Precision.BF16:
            cands = [Candidate("openvino", manifest.graph_path(folder, "fp32"), precision="bf16",
                               options={"threads": threads, "cache_dir": cache_dir})]
        else:
            fp32 = manifest.graph_path(folder, "fp32") if "fp32" in graphs and precision != "fp16" else None
            fp16 = manifest.graph_path(folder, "fp16") if "fp16" in graphs and precision != "fp32" else None
            engine = manifest.pick_engine(folder, required=False) if precision != "fp32" else None
            cands = default_candidates(plan=engine[0] if engine else None, onnx_fp32=fp32, onnx_fp16=fp16,
                                       threads=threads, cache_dir=cache_dir,
                                       manifest_key=engine[1] if engine else None)
            if fp16 is not None and fp32 is None:  # the fp16 graph also runs on the CPU (export checks its parity there)
                cands.append(Candidate("ort", fp16, precision="fp16", device="cpu", options={"threads": threads}))
        if not cands:
            raise InputError(f"holds nothing to run; it has {manifest.artifacts_present()}", path=folder,
                             fix=f"build it again: {manifest.REBUILD}")
        chosen, reason = choose_backend(cands)
        path = getattr(chosen, "path", None)
        picked = "fp16" if chosen.name == "tensorrt" or (fp16 is not None and path is not None and Path(path) == fp16) \
            else "fp32"
        return chosen, picked, reason

    name = parse_backend(key)
    dev, _ = parse_device(name, device)
    row = combination(name, dev, precision or DEFAULT_PRECISION[name])  # the table's refusal, if any
    if isinstance(row.runs, Refusal):
        raise row.runs.error(path=folder)
    if row.runs is Source.ENGINE:
        plan, engine_key = manifest.pick_engine(folder, required=True)  # type: ignore[misc]
        made = open_backend(name, plan, precision=row.precision, device=device, manifest_key=engine_key)
    elif row.runs is Source.CHECKPOINT:
        if torch_module is None:
            raise InputError(f"backend {name} runs a trunk rebuilt from its checkpoint; a fused engine has no torch form "
                             "(it would be the trunk and adapters rebuilt, not the fused graph)", path=folder,
                             fix="use --backend auto, ort, openvino or tensorrt")
        from edgeseg.runtime.availability import require

        probe = PROBES[(name, dev)]
        require(probe.name, probe.title)  # the install hint before a slow checkpoint load
        made = open_backend(name, torch_module(), precision=row.precision, device=device, threads=threads)
    else:
        opts = {"threads": threads} | ({"cache_dir": cache_dir} if cache_dir is not None else {})
        path = manifest.openvino_ir_path(folder, "int8") if row.runs is Source.INT8_IR \
            else manifest.graph_path(folder, row.runs.graph_precision)
        made = open_backend(name, path, precision=row.precision, device=device, **opts)
    made.activate()
    info = made.describe()
    return made, row.runs.graph_precision, f"{name} as asked ({info.precision} on {info.device})"

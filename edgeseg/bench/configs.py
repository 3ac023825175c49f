"""What `edgeseg bench trunk|engine` can run, and why a configuration is skipped on this machine.

A configuration is one backend, device and precision (plus options such as torch.compile). Planning
is pure: given the artifact's manifest, the availability probe of every backend
(`edgeseg.runtime.availability.probe_backends`) and the batch sizes, `plan` says for each
(configuration, batch) whether it runs or why not: the backend's library or device missing here (the
probe's own reason and install hint), the artifact lacking the graph or engine it needs, a batch
beyond the exported maximum, or a torch run with no checkpoint to rebuild the module from.
Nothing unusable is faked: a skipped row carries its reason into every table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from edgeseg.runtime.errors import InputError

if TYPE_CHECKING:
    from edgeseg.runtime.artifacts.graphs import GraphFolderManifest

BASELINE = {"trunk": "torch-cpu-fp32", "engine": "ort-cpu-fp32"}  # ratios are to this row (same batch)
REFERENCE_ORDER = {"trunk": ("torch-cpu-fp32", "ort-cpu-fp32"), "engine": ("ort-cpu-fp32",)}  # parity is against this


@dataclass
class BenchConfig:
    name: str
    backend: str  # "torch", "ort", "openvino", "tensorrt": the runtime backend that runs
    device: str  # "cpu", "cuda", or "tensorrt" (ONNX Runtime's TensorRT execution provider)
    precision: str  # asked for: fp32, fp16, bf16
    probe: str  # the availability probe that says whether it can run here
    graph: str | None = None  # the folder's graph it needs ("fp32", "fp16", "int8"), "plan" for TensorRT, None for torch
    options: dict = field(default_factory=dict)  # backend options (torch: compile, cuda_graphs)
    label: str = ""  # human-readable

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BenchConfig":
        return cls(**dict(d))


CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("torch-cpu-fp32", "torch", "cpu", "fp32", "torch-cpu", None, {}, "PyTorch eager, fp32"),
    BenchConfig("torch-cpu-bf16", "torch", "cpu", "bf16", "torch-cpu", None, {}, "PyTorch eager, bf16 autocast"),
    BenchConfig("ort-cpu-fp32", "ort", "cpu", "fp32", "ort-cpu", "fp32", {}, "ONNX Runtime CPU, fp32 graph"),
    BenchConfig("ort-cpu-fp16", "ort", "cpu", "fp16", "ort-cpu", "fp16", {},
                "ONNX Runtime CPU, mixed fp16 graph (computed in fp32 on x86)"),
    BenchConfig("openvino-fp32", "openvino", "cpu", "fp32", "openvino", "fp32", {}, "OpenVINO CPU, f32"),
    BenchConfig("openvino-bf16", "openvino", "cpu", "bf16", "openvino", "fp32", {}, "OpenVINO CPU, bf16 hint"),
    # int8: the folder's quantized graphs (edgeseg export --precision int8); skipped with the reason when absent
    BenchConfig("ort-cpu-int8", "ort", "cpu", "int8", "ort-cpu", "int8", {}, "ONNX Runtime CPU, QDQ int8 graph"),
    BenchConfig("openvino-int8", "openvino", "cpu", "int8", "openvino", "int8", {}, "OpenVINO CPU, NNCF int8 IR"),
    BenchConfig("torch-cuda-fp32", "torch", "cuda", "fp32", "torch-cuda", None, {}, "PyTorch CUDA eager, fp32"),
    BenchConfig("torch-cuda-fp16", "torch", "cuda", "fp16", "torch-cuda", None, {}, "PyTorch CUDA eager, fp16 autocast"),
    BenchConfig("torch-cuda-bf16", "torch", "cuda", "bf16", "torch-cuda", None, {}, "PyTorch CUDA eager, bf16 autocast"),
    BenchConfig("torch-cuda-fp16-compile", "torch", "cuda", "fp16", "torch-cuda", None, {"compile": True},
                "PyTorch CUDA, torch.compile, fp16 autocast"),
    BenchConfig("torch-cuda-fp16-graphs", "torch", "cuda", "fp16", "torch-cuda", None, {"cuda_graphs": True},
                "PyTorch CUDA graphs, fp16 autocast"),
    BenchConfig("ort-cuda-fp32", "ort", "cuda", "fp32", "ort-cuda", "fp32", {}, "ONNX Runtime CUDA EP, fp32 graph"),
    BenchConfig("ort-cuda-fp16", "ort", "cuda", "fp16", "ort-cuda", "fp16", {}, "ONNX Runtime CUDA EP, mixed fp16 graph"),
    BenchConfig("ort-tensorrt-fp16", "ort", "tensorrt", "fp16", "ort-tensorrt", "fp16", {},
                "ONNX Runtime TensorRT EP, mixed fp16 graph"),
    BenchConfig("ort-tensorrt-int8", "ort", "tensorrt", "int8", "ort-tensorrt", "int8", {},
                "ONNX Runtime TensorRT EP, QDQ int8 graph (explicit quantization)"),
    BenchConfig("tensorrt-fp16", "tensorrt", "cuda", "fp16", "tensorrt", "plan", {}, "TensorRT engine (strongly typed fp16)"),
)
BY_NAME = {c.name: c for c in CONFIGS}


def select_configs(spec: str | Sequence[str] | None, configs: Sequence[BenchConfig] = CONFIGS) -> list[BenchConfig]:
    """Configurations named by `spec`: "all" (or None), or comma-separated names or prefixes
    ("ort" is every ONNX Runtime configuration, "torch-cuda" every torch GPU one, "ort-cpu-fp32" one)."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(configs)
    tokens = [t.strip().lower() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if not tokens:
        raise InputError("--backends is empty", fix="pass 'all' or names such as ort,openvino,torch-cpu-fp32")
    chosen: list[BenchConfig] = []
    for token in tokens:
        if token == "all":
            return list(configs)
        hits = [c for c in configs if c.name == token or c.name.startswith(token + "-")]
        if not hits:
            raise InputError(f"--backends {token!r} names no benchmark configuration",
                             fix="use 'all', a backend (torch, ort, openvino, tensorrt), a backend-device prefix "
                                 f"(e.g. ort-cpu) or one of: {', '.join(c.name for c in configs)}")
        chosen += [c for c in hits if c not in chosen]
    return [c for c in configs if c in chosen]  # stable order


@dataclass
class PlannedRow:
    config: BenchConfig
    batch: int
    skip: str | None = None  # why it does not run here; None: it runs


def unusable_reason(status) -> str:
    """The probe's reason, with its install hint: what a skipped row shows."""
    hint = getattr(status, "install_hint", "") or ""
    return f"{status.detail}" + (f" (to enable: {hint})" if hint else "")


def artifact_reason(kind: str, config: BenchConfig, manifest: GraphFolderManifest, folder: Path | None) -> str | None:
    """Why the artifact cannot feed this configuration (graph, engine or checkpoint missing), or None."""
    graphs = manifest.graphs
    if config.backend == "torch":
        if kind != "trunk":
            return "a fused engine runs as one graph: there is no torch backend for it (bench the trunk for torch)"
        ckpt = manifest.checkpoint.path if manifest.checkpoint is not None else None
        if not ckpt or not Path(ckpt).is_file():
            return (f"the torch backend rebuilds the trunk from its checkpoint, which is not at {ckpt!r} "
                    "(put it back there to bench torch)")
        return None
    if config.graph == "plan":
        if not manifest.engines:
            return "the folder holds no TensorRT engine (export/fuse with --tensorrt on this GPU)"
        return None
    if config.graph and config.graph not in graphs:
        have = ", ".join(sorted(graphs)) or "none"
        return f"the folder has no {config.graph} graph (it holds: {have}; export with --precision fp32,fp16" + \
            (",int8)" if config.graph == "int8" else ")")
    return None


def plan(kind: str, manifest: GraphFolderManifest, configs: Iterable[BenchConfig], statuses: Mapping[str, Any],
         batches: Sequence[int], *, folder: Path | None = None) -> list[PlannedRow]:
    """One row per (configuration, batch), in configuration order, each running or skipped with its reason.

    statuses: probe name -> BackendStatus (anything with usable, detail, install_hint).
    The backend's availability is checked first (its reason is the more fundamental), then the artifact,
    then the batch against the exported maximum (torch runs any batch).
    """
    if kind not in BASELINE:
        raise InputError(f"unknown benchmark kind {kind!r}", fix="use trunk or engine")
    max_batch = manifest.max_batch
    rows: list[PlannedRow] = []
    for config in configs:
        status = statuses.get(config.probe)
        if status is None:
            why: str | None = f"no availability probe named {config.probe!r} on this edgeseg"
        elif not status.usable:
            why = unusable_reason(status)
        else:
            why = artifact_reason(kind, config, manifest, folder)
        for b in batches:
            skip = why
            if skip is None and config.backend != "torch" and b > max_batch:
                skip = f"the graph was exported for batches 1..{max_batch} (re-export with --batch {b})"
            rows.append(PlannedRow(config, int(b), skip))
    return rows


def reference_candidates(kind: str, statuses: Mapping[str, Any], manifest: GraphFolderManifest,
                         folder: Path | None = None) -> list[BenchConfig]:
    """The fp32 configurations parity can be measured against, best first (REFERENCE_ORDER), that can run here
    (whether or not they were selected: an unselected one runs once, untimed, for its outputs)."""
    out = []
    for name in REFERENCE_ORDER[kind]:
        config = BY_NAME[name]
        status = statuses.get(config.probe)
        if status is not None and status.usable and artifact_reason(kind, config, manifest, folder) is None:
            out.append(config)
    return out

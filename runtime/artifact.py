"""What `open_trunk` and `open_engine` share: an artifact folder's graphs and engines, and how to run one.

A trunk folder (`edgeseg export`) and an engine folder (`edgeseg fuse`) both list ONNX graphs by
precision and TensorRT engines by engine key in their manifests. `open_on_backend` picks the one the
caller asked for and opens it on a backend by name (no fallback) or by `choose_backend` ("auto",
which says what ran and why); it returns the active backend, the precision of the graph it runs and
the reason. Which file a backend, device and precision runs (or why none can) is the support table's
`Combination.runs` (`edgeseg.runtime.support`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import member_path
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
    """An artifact folder with an active backend: what ran, and closing it (also as a context manager)."""

    backend: Any

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


def artifacts_present(manifest: dict) -> str:
    graphs = manifest.get("graphs") or {}
    parts = [f"{p} ({g.get('file', '?')})" for p, g in sorted(graphs.items())]
    engines = manifest.get("engines") or {}
    parts += [f"TensorRT engine {e.get('file', k)}" for k, e in sorted(engines.items())]
    return ", ".join(parts) or "no graph at all"


def graph_path(folder: Path, manifest: dict, precision: str, rebuild: str) -> Path:
    graphs = manifest.get("graphs") or {}
    if precision not in graphs:
        raise InputError(f"has no {precision} graph; it holds {artifacts_present(manifest)}", path=folder,
                         fix=(f"re-export with --precision fp32,fp16 ({rebuild} --precision fp32,fp16), "
                              f"or ask for a precision the folder has" if precision in ("fp32", "fp16")
                              else "ask for fp32 or fp16"))
    path = member_path(folder, graphs[precision].get("file"), manifest=manifest)
    check_external_data(folder, manifest, path)
    return path


def check_external_data(folder: Path, manifest: dict, graph: Path) -> None:
    """Refuse a graph whose external weights live outside the artifact or are not among its hashed files.

    ONNX Runtime and OpenVINO would follow `location` wherever it points (or refuse with a message about
    installing a backend); edgeseg checks it first, against the manifest, with its own message.
    """
    import onnx

    if not graph.exists():
        return  # the missing file is reported by the manifest's check or the backend, naming it
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable graphs are refused by the backend with the reason
        return
    base = graph.parent.relative_to(folder) if graph.parent != folder else None
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            if not isinstance(loc, str) or loc.startswith("/") or ".." in loc.replace("\\", "/").split("/"):
                raise InputError(f"its graph {graph.name} keeps tensor {t.name!r} in {loc!r}, outside the artifact",
                                 path=folder / "manifest.json", fix="rebuild the artifact with edgeseg")
            member_path(folder, loc if base is None else f"{base.as_posix()}/{loc}", manifest=manifest)


def pick_engine(folder: Path, manifest: dict, *, required: bool, rebuild: str) -> tuple[Path, dict] | None:
    """The TensorRT engine of this machine (by engine key) or, when none can be matched, the first one."""
    engines = manifest.get("engines") or {}
    if not engines:
        if required:
            raise InputError(f"has no TensorRT engine; it holds {artifacts_present(manifest)}", path=folder,
                             fix=f"build one on this GPU: {rebuild} --tensorrt, or choose --backend ort/openvino")
        return None
    chosen = next(iter(sorted(engines.items())))
    if len(engines) > 1:
        try:
            from edgeseg.runtime.backends.tensorrt import current_engine_key, key_string

            here = key_string(current_engine_key())
            if here in engines:
                chosen = (here, engines[here])
        except Exception:  # no TensorRT or GPU here: the backend refuses the engine with the reason
            pass
    return member_path(folder, chosen[1].get("file"), manifest=manifest), chosen[1].get("key")


def open_on_backend(folder: Path, manifest: dict, key: BackendChoice, precision: Precision | None, *,
                    threads: int | None, device: str | None, cache_dir, rebuild: str,
                    torch_module: Callable[[], Any] | None = None) -> tuple[Any, str, str]:
    """(active backend, precision of the graph it runs, why it was chosen) for the artifact in `folder`.

    precision None: the fp32 graph for a named backend (the engine's fp16 for "tensorrt"), any graph
    for "auto" (fp16 on GPU candidates only, as `default_candidates` offers them); "fp32"/"fp16": that
    graph only (refused, naming what the folder has, when missing); "bf16": OpenVINO on the fp32 graph.
    `torch_module` rebuilds the torch module from the folder's checkpoint (a trunk's); without it the
    torch backend is refused.
    """
    from edgeseg.runtime.backends import Candidate, choose_backend, default_candidates, open_backend

    key, precision = check_choices(key, precision)
    if key is BackendChoice.AUTO:
        graphs = manifest.get("graphs") or {}
        if precision in (Precision.FP32, Precision.FP16):
            graph_path(folder, manifest, str(precision), rebuild)  # refuse a missing graph by name
        fp32 = fp16 = None
        if precision is Precision.BF16:
            cands = [Candidate("openvino", graph_path(folder, manifest, "fp32", rebuild), precision="bf16",
                               options={"threads": threads, "cache_dir": cache_dir})]
        else:
            fp32 = graph_path(folder, manifest, "fp32", rebuild) if "fp32" in graphs and precision != "fp16" else None
            fp16 = graph_path(folder, manifest, "fp16", rebuild) if "fp16" in graphs and precision != "fp32" else None
            engine = pick_engine(folder, manifest, required=False, rebuild=rebuild) if precision != "fp32" else None
            cands = default_candidates(plan=engine[0] if engine else None, onnx_fp32=fp32, onnx_fp16=fp16,
                                       threads=threads, cache_dir=cache_dir,
                                       manifest_key=engine[1] if engine else None)
            if fp16 is not None and fp32 is None:  # the fp16 graph also runs on the CPU (export checks its parity there)
                cands.append(Candidate("ort", fp16, precision="fp16", device="cpu", options={"threads": threads}))
        if not cands:
            raise InputError(f"holds nothing to run; it has {artifacts_present(manifest)}", path=folder,
                             fix=f"build it again: {rebuild}")
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
        plan, engine_key = pick_engine(folder, manifest, required=True, rebuild=rebuild)  # type: ignore[misc]
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
        made = open_backend(name, graph_path(folder, manifest, row.runs.graph_precision, rebuild),
                            precision=row.precision, device=device, **opts)
    made.activate()
    info = made.describe()
    return made, row.runs.graph_precision, f"{name} as asked ({info.precision} on {info.device})"

"""What `open_trunk` and `open_engine` share: an artifact folder's graphs and engines, and how to run one.

A trunk folder (`edgeseg export`) and an engine folder (`edgeseg fuse`) both list ONNX graphs by
precision and TensorRT engines by engine key in their manifests. `open_on_backend` picks the one the
caller asked for and opens it on a backend by name (no fallback) or by `choose_backend` ("auto",
which says what ran and why); it returns the active backend, the precision of the graph it runs and
the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import member_path

BACKEND_CHOICES = ("auto", "ort", "openvino", "torch", "tensorrt")
PRECISION_CHOICES = ("fp32", "fp16", "bf16")


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

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_choices(backend: str, precision: str | None, backends: tuple[str, ...] = BACKEND_CHOICES) -> str:
    key = str(backend).strip().lower()
    if key not in backends:
        raise InputError(f"unknown backend {backend!r}; choices: {', '.join(backends)}",
                         fix=f"use one of {', '.join(backends)}")
    if precision is not None and precision not in PRECISION_CHOICES:
        raise InputError(f"unknown precision {precision!r}; choices: {', '.join(PRECISION_CHOICES)}",
                         fix="use fp32, fp16 or bf16 (or leave it unset)")
    return key


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


def open_on_backend(folder: Path, manifest: dict, key: str, precision: str | None, *, threads: int | None,
                    device: str | None, cache_dir, rebuild: str,
                    torch_module: Callable[[], Any] | None = None) -> tuple[Any, str, str]:
    """(active backend, precision of the graph it runs, why it was chosen) for the artifact in `folder`.

    precision None: the fp32 graph for a named backend (the engine's fp16 for "tensorrt"), any graph
    for "auto" (fp16 on GPU candidates only, as `default_candidates` offers them); "fp32"/"fp16": that
    graph only (refused, naming what the folder has, when missing); "bf16": OpenVINO on the fp32 graph.
    """
    from edgeseg.runtime.backends import Candidate, choose_backend, default_candidates, open_backend

    if key == "auto":
        graphs = manifest.get("graphs") or {}
        if precision in ("fp32", "fp16"):
            graph_path(folder, manifest, precision, rebuild)  # refuse a missing graph by name
        fp32 = fp16 = None
        if precision == "bf16":
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

    if key == "ort":
        if precision == "bf16":
            raise InputError("ONNX Runtime runs the graph's own precision (fp32 or mixed fp16), not bf16",
                             fix="use --backend openvino for bf16 on the CPU")
        graph = precision or "fp32"
        opts = {"threads": threads} | ({"cache_dir": cache_dir} if cache_dir is not None else {})
        made = open_backend("ort", graph_path(folder, manifest, graph, rebuild), precision=graph, device=device, **opts)
    elif key == "openvino":
        if precision == "fp16":
            raise InputError("OpenVINO on the CPU runs fp32 or bf16, not fp16",
                             fix="use precision fp32 or bf16 with --backend openvino, or --backend ort for the fp16 graph")
        graph = "fp32"
        made = open_backend("openvino", graph_path(folder, manifest, "fp32", rebuild), precision=precision or "fp32",
                            threads=threads, cache_dir=cache_dir)
    elif key == "tensorrt":
        if precision == "fp32":
            raise InputError("the TensorRT engines edgeseg builds run the mixed fp16 graph", path=folder,
                             fix="use precision fp16 (or none) with --backend tensorrt, or another backend for fp32")
        graph = "fp16"
        plan, engine_key = pick_engine(folder, manifest, required=True, rebuild=rebuild)  # type: ignore[misc]
        made = open_backend("tensorrt", plan, precision="fp16", manifest_key=engine_key)
    elif key == "torch" and torch_module is not None:
        graph = "fp32"
        from edgeseg.runtime.backends import _require  # the install hint before a slow checkpoint load

        _require("torch-cuda" if (device or "cpu").startswith("cuda") else "torch-cpu", "PyTorch")
        made = open_backend("torch", torch_module(), precision=precision or "fp32", device=device, threads=threads)
    else:
        raise InputError(f"backend {key!r} cannot run this artifact", path=folder, fix="use auto, ort, openvino or tensorrt")
    made.activate()
    info = made.describe()
    return made, graph, f"{key} as asked ({info.precision} on {info.device})"


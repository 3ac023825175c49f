"""What a trunk folder and an engine folder share: ONNX graphs by precision, TensorRT plans by engine key.

Both manifests record `graphs` ({precision: {"file": ..., parity, export details}}), `engines`
({engine key: {"file": ..., "key": ..., build, parity}}), the preprocessing spec the graphs were made
for (with its hash), their I/O names, and the model and export specs. `GraphFolderManifest` answers
what the runtime asks of them: which file runs a precision (confined and hashed, external weights
included), which plan fits this GPU, the window, the batch range and the input channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.runtime.artifacts.base import ArtifactManifest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.manifest import MANIFEST_NAME, member_path
from edgeseg.runtime.preprocess import PreprocessSpec


@dataclass(frozen=True)
class GraphIO:
    """A graph's input name and output names, as its manifest's "io" records them."""

    input: str
    outputs: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> GraphIO:
        d = d or {}
        return cls(input=d.get("input", "image"), outputs=tuple(d.get("outputs") or ()))

    def to_dict(self) -> dict:
        return {"input": self.input, "outputs": list(self.outputs)}


@dataclass(frozen=True, kw_only=True)
class GraphFolderManifest(ArtifactManifest):
    """Behaviour shared by `TrunkManifest` and `EngineManifest`; each declares these fields in its JSON order."""

    if TYPE_CHECKING:
        model_spec: Mapping[str, Any]
        export_spec: Mapping[str, Any] | None
        preprocess: PreprocessSpec
        preprocess_sha256: str | None
        io: GraphIO
        graphs: Mapping[str, Mapping[str, Any]]
        engines: Mapping[str, Mapping[str, Any]]

    @classmethod
    def _preprocess(cls, record: Mapping[str, Any], path: Path | None) -> PreprocessSpec:
        """The recorded preprocessing spec, refused when it does not match the hash recorded beside it."""
        spec = PreprocessSpec.from_dict(record["preprocess"])
        recorded = record.get("preprocess_sha256")
        if recorded is not None and recorded != spec.sha256():
            raise InputError("its preprocessing spec does not match the hash recorded beside it", path=path,
                             fix=cls.fix())
        return spec

    @property
    def max_batch(self) -> int:
        """The largest batch the graphs were exported for (their batch axis runs 1..max_batch)."""
        return int((self.export_spec or {}).get("max_batch") or 1)

    @property
    def in_channels(self) -> int:
        return int((self.model_spec or {}).get("in_channels") or 1)

    @property
    def feature_size(self) -> int | None:
        return (self.model_spec or {}).get("feature_size")

    def artifacts_present(self) -> str:
        parts = [f"{p} ({g.get('file', '?')})" for p, g in sorted(self.graphs.items())]
        parts += [f"TensorRT engine {e.get('file', k)}" for k, e in sorted(self.engines.items())]
        return ", ".join(parts) or "no graph at all"

    def graph_path(self, folder: Path, precision: str) -> Path:
        """The graph of `precision` in `folder` (confined, hashed, its external weights too), or a refusal
        naming what the folder holds."""
        if precision not in self.graphs:
            raise InputError(f"has no {precision} graph; it holds {self.artifacts_present()}", path=folder,
                             fix=(f"re-export with --precision fp32,fp16 ({self.REBUILD} --precision fp32,fp16), "
                                  f"or ask for a precision the folder has" if precision in ("fp32", "fp16")
                                  else f"build it with {self.REBUILD} --precision int8" if precision == "int8"
                                  else "ask for fp32 or fp16"))
        path = self.member(folder, self.graphs[precision].get("file"))
        check_external_data(folder, self.record, path)
        return path

    def openvino_ir_path(self, folder: Path, precision: str = "int8") -> Path:
        """The OpenVINO IR (.xml, its .bin checked beside it) recorded under graphs[precision]["openvino"]."""
        self.graph_path(folder, precision)  # the folder has that precision at all (else the refusal naming it)
        ir = self.graphs[precision].get("openvino") or {}
        if not ir.get("file"):
            raise InputError(f"its {precision} entry holds no OpenVINO IR; it holds {self.artifacts_present()}",
                             path=folder, fix=f"build it again with this edgeseg: {self.REBUILD} --precision {precision}")
        self.member(folder, ir.get("weights_file"))  # confined and hashed like the .xml
        return self.member(folder, ir["file"])

    def pick_engine(self, folder: Path, *, required: bool) -> tuple[Path, dict] | None:
        """The TensorRT plan of this machine (by engine key) or, when none can be matched, the first one."""
        engines = self.engines
        if not engines:
            if required:
                raise InputError(f"has no TensorRT engine; it holds {self.artifacts_present()}", path=folder,
                                 fix=f"build one on this GPU: {self.REBUILD} --tensorrt, or choose --backend ort/openvino")
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
        return self.member(folder, chosen[1].get("file")), chosen[1].get("key")


def check_external_data(folder: Path, record: Mapping[str, Any], graph: Path) -> None:
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
                                 path=folder / MANIFEST_NAME, fix="rebuild the artifact with edgeseg")
            member_path(folder, loc if base is None else f"{base.as_posix()}/{loc}", manifest=record)

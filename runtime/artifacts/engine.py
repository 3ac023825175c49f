"""The fused engine folder's contract (`edgeseg fuse` writes it; `open_engine`, `predict` and `bench scan` read it).

Files: ``fused.<precision>.onnx`` (the trunk graph with every adapter appended, outputs ``prob_<organ>``)
with external weights, TensorRT plans by engine key, and `manifest.json` (kind "engine"), written last.
The manifest names the trunk and adapters it was fused from, by folder and manifest hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.runtime.artifacts.graphs import GraphFolderManifest, GraphIO
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.preprocess import PreprocessSpec

__all__ = ["AdapterRef", "EngineManifest", "TrunkRef"]


@dataclass(frozen=True)
class TrunkRef:
    """The trunk an engine was fused from: its folder when fused, and its manifest's content hash."""

    folder: str
    manifest_sha256: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrunkRef:
        return cls(folder=str(d.get("folder", "")), manifest_sha256=str(d.get("manifest_sha256", "")))

    def to_dict(self) -> dict:
        return {"folder": self.folder, "manifest_sha256": self.manifest_sha256}


@dataclass(frozen=True)
class AdapterRef:
    """One adapter an engine was fused from: organ, adapter kind, folder when fused, manifest hash."""

    organ: str
    adapter: str
    folder: str
    manifest_sha256: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdapterRef:
        return cls(organ=d.get("organ", ""), adapter=d.get("adapter", ""), folder=str(d.get("folder", "")),
                   manifest_sha256=str(d.get("manifest_sha256", "")))

    def to_dict(self) -> dict:
        return {"organ": self.organ, "adapter": self.adapter, "folder": self.folder,
                "manifest_sha256": self.manifest_sha256}


@dataclass(frozen=True, kw_only=True)
class EngineManifest(GraphFolderManifest):
    KIND = "engine"
    REBUILD = "edgeseg fuse TRUNK ADAPTER... --out DIR"
    AGAIN = "fuse again"
    REQUIRED = ("organs", "graphs", "preprocess", "io", "window")

    organs: tuple[str, ...]
    trunk: TrunkRef | None = None
    adapters: tuple[AdapterRef, ...] = ()
    cut: str | None = None
    model_spec: Mapping[str, Any] = field(default_factory=dict)
    export_spec: Mapping[str, Any] | None = None
    preprocess: PreprocessSpec
    preprocess_sha256: str | None = None
    window: tuple[int, int, int]
    io: GraphIO
    graphs: Mapping[str, Mapping[str, Any]]
    engines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @staticmethod
    def graph_name(precision: str) -> str:
        return f"fused.{precision}.onnx"

    @staticmethod
    def output_name(organ: str) -> str:
        """The fused graph's output for `organ`: its probability (sigmoid of the adapter's logit)."""
        return f"prob_{organ}"

    @classmethod
    def _parse(cls, record: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
        preprocess = cls._preprocess(record, path)
        organs = tuple(record["organs"])
        io = GraphIO.from_dict(record["io"])
        if list(io.outputs) != [cls.output_name(o) for o in organs]:
            raise InputError("its outputs do not match its organs", path=path, fix=cls.fix())
        return {
            "organs": organs,
            "trunk": TrunkRef.from_dict(record["trunk"]) if record.get("trunk") else None,
            "adapters": tuple(AdapterRef.from_dict(a) for a in record.get("adapters") or ()),
            "cut": record.get("cut"), "model_spec": record.get("model_spec") or {},
            "export_spec": record.get("export_spec"), "preprocess": preprocess,
            "preprocess_sha256": record.get("preprocess_sha256"),
            "window": tuple(int(w) for w in record["window"]), "io": io, "graphs": record["graphs"] or {},
            "engines": record.get("engines") or {},
        }

"""The trunk folder's contract (`edgeseg export` writes it; `open_trunk`, `edgeseg cache`, `adapt` and `fuse` read it).

Files: ``trunk.<precision>.onnx`` (fp32, and the mixed fp16 graph) with their external weights, TensorRT
plans by engine key, and `manifest.json` (kind "trunk"), written last. The manifest names the
checkpoint the graphs were exported from (path and sha256): the torch backend, fusion's parity
reference and an adapter's pretrained head rebuild the model from it
(`edgeseg.model.checkpoint.load_exported_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.runtime.artifacts.graphs import GraphFolderManifest, GraphIO
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.preprocess import PreprocessSpec

__all__ = ["CUT_ALIGN", "CheckpointRef", "TrunkManifest"]

CUT_ALIGN = {"decoder1": 1, "pre-decoder1": 2}  # the cut points this edgeseg knows: the coarsest output's downsampling


@dataclass(frozen=True)
class CheckpointRef:
    """The checkpoint a trunk was exported from: where it was, its sha256, and what loading it reported."""

    path: str
    sha256: str | None
    load_report: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> CheckpointRef:
        d = d or {}
        return cls(path=str(d.get("path") or ""), sha256=d.get("sha256"), load_report=d.get("load_report"))

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "load_report": self.load_report}


@dataclass(frozen=True, kw_only=True)
class TrunkManifest(GraphFolderManifest):
    KIND = "trunk"
    REBUILD = "edgeseg export CHECKPOINT --out DIR"
    AGAIN = "re-export the trunk"
    REQUIRED = ("cut", "graphs", "preprocess", "io", "model_spec")

    checkpoint: CheckpointRef | None = None
    model_spec: Mapping[str, Any]
    export_spec: Mapping[str, Any] | None = None
    preprocess: PreprocessSpec
    preprocess_sha256: str | None = None
    cut: str
    io: GraphIO
    graphs: Mapping[str, Mapping[str, Any]]
    engines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @staticmethod
    def graph_name(precision: str) -> str:
        return f"trunk.{precision}.onnx"

    @classmethod
    def _parse(cls, record: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
        if record["cut"] not in CUT_ALIGN:
            raise InputError(f"names an unknown cut point {record['cut']!r} (this edgeseg knows {', '.join(CUT_ALIGN)})",
                             path=path, fix=f"re-export the trunk with this edgeseg: {cls.REBUILD}")
        return {
            "checkpoint": CheckpointRef.from_dict(record["checkpoint"]) if record.get("checkpoint") else None,
            "model_spec": record["model_spec"], "export_spec": record.get("export_spec"),
            "preprocess": cls._preprocess(record, path), "preprocess_sha256": record.get("preprocess_sha256"),
            "cut": record["cut"], "io": GraphIO.from_dict(record["io"]), "graphs": record["graphs"] or {},
            "engines": record.get("engines") or {},
        }

    @property
    def window(self) -> tuple[int, int, int]:
        return tuple(int(w) for w in self.preprocess.window)  # type: ignore[return-value]

    @property
    def align(self) -> int:
        """Windows and regions start on multiples of this (the half-resolution `dec0` of pre-decoder1)."""
        return CUT_ALIGN[self.cut]

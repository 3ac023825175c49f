"""The adapter folder's contract (`edgeseg adapt` writes it through `export.adapter.save_adapter`; `fuse` reads it).

Files: `adapter.safetensors` (the trainable weights), `adapter.onnx` (takes the trunk's outputs by
name, returns the organ's logit) and `manifest.json` (kind "adapter"), written last. The manifest
names the trunk manifest whose features the adapter was trained on: fusion refuses another trunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.runtime.artifacts.base import ArtifactManifest

__all__ = ["AdapterIO", "AdapterManifest"]


@dataclass(frozen=True)
class AdapterIO:
    """The adapter graph's inputs (the trunk's outputs, by name) and its one output."""

    inputs: tuple[str, ...] = ()
    output: str = "logits"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AdapterIO:
        d = d or {}
        return cls(inputs=tuple(d.get("inputs") or ()), output=d.get("output", "logits"))

    def to_dict(self) -> dict:
        return {"inputs": list(self.inputs), "output": self.output}


@dataclass(frozen=True, kw_only=True)
class AdapterManifest(ArtifactManifest):
    KIND = "adapter"
    REBUILD = "edgeseg adapt CACHE --out DIR"
    AGAIN = "adapt again"
    REQUIRED = ("adapter", "feature_size")
    WEIGHTS = "adapter.safetensors"
    GRAPH = "adapter.onnx"

    adapter: str  # the adapter kind (`edgeseg.adapters.ADAPTERS`): lp, spatial, decoder-block, ft-last
    organ: str | None = None
    cut: str | None = None
    feature_size: int
    trunk_manifest_sha256: str | None = None  # the trunk whose features it was trained on
    io: AdapterIO = field(default_factory=AdapterIO)

    @classmethod
    def _parse(cls, record: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
        return {"adapter": record["adapter"], "organ": record.get("organ"), "cut": record.get("cut"),
                "feature_size": int(record["feature_size"]), "trunk_manifest_sha256": record.get("trunk_manifest_sha256"),
                "io": AdapterIO.from_dict(record.get("io"))}

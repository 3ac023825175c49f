"""The feature cache folder's contract (`edgeseg cache` writes it through `edgeseg.features.writer`;
`open_cache`, and so `edgeseg adapt`, read it).

Files: `cache.json` (the plan: which cases, with which settings; checked when a run resumes), one
folder per case under `cases/` (float16 features of each region and its uint8 label, or a query's
pooled features) and `manifest.json` (kind "feature-cache"), written last. The manifest names the
trunk whose features these are (its manifest's hash): an adapter trained on them fuses only with
that trunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.runtime.artifacts.base import ArtifactManifest
from edgeseg.runtime.preprocess import PreprocessSpec

__all__ = ["CacheManifest", "CacheTrunk"]


@dataclass(frozen=True)
class CacheTrunk:
    """The trunk a cache's features came from: its folder, manifest hash, cut, graph and output names."""

    folder: str
    manifest_sha256: str
    cut: str
    graph: str | None = None
    output_names: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CacheTrunk:
        return cls(folder=str(d.get("folder", "?")), manifest_sha256=str(d["manifest_sha256"]), cut=str(d.get("cut")),
                   graph=d.get("graph"), output_names=tuple(d.get("output_names") or ()))

    def to_dict(self) -> dict:
        return {"folder": self.folder, "manifest_sha256": self.manifest_sha256, "cut": self.cut, "graph": self.graph,
                "output_names": list(self.output_names)}


@dataclass(frozen=True, kw_only=True)
class CacheManifest(ArtifactManifest):
    KIND = "feature-cache"
    REBUILD = "edgeseg cache --trunk DIR --data DATASET --organ NAME --out DIR"
    AGAIN = "rebuild the cache"
    REQUIRED = ("trunk", "cut", "organ", "preprocess", "supports", "queries", "cases")
    PLAN = "cache.json"
    CASES_DIR = "cases"

    trunk: CacheTrunk
    cut: str
    organ: str
    preprocess: PreprocessSpec
    preprocess_sha256: str | None = None
    supports: tuple[str, ...]  # the support case ids
    queries: tuple[Mapping[str, Any], ...] = ()  # {"id", "image"} per unlabelled query scan
    cases: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per case id: regions, files, grid
    bytes_on_disk: int = 0

    @classmethod
    def _parse(cls, record: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
        return {"trunk": CacheTrunk.from_dict(record["trunk"]), "cut": record["cut"], "organ": record["organ"],
                "preprocess": PreprocessSpec.from_dict(record["preprocess"]),
                "preprocess_sha256": record.get("preprocess_sha256"), "supports": tuple(record["supports"]),
                "queries": tuple(record["queries"]), "cases": record["cases"],
                "bytes_on_disk": int(record.get("bytes_on_disk") or 0)}

    @property
    def output_names(self) -> tuple[str, ...]:
        """The trunk outputs each region stores, in the trunk's order (older caches did not record them)."""
        return self.trunk.output_names or (("enc0", "dec0") if self.cut == "pre-decoder1" else ("features",))

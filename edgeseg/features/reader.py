"""Open a feature cache for training: the manifest checked, every region and query memory-mapped.

Training never runs the trunk: it samples crops from `CacheEntry` regions (`FeatureCache.supports`)
whose arrays are ``np.load(mmap_mode="r")`` views, so memory does not grow with the scans. The few-shot
protocol hands training the same `CacheEntry`, as views of the whole cases it stores. Pages read through a
mapping stay in the process's resident memory until released: readers that sweep a cache
(`check_features`, training's crops, the held-out evaluation) hand them back with `release_pages`.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.features.regions import Box
from edgeseg.runtime.errors import InputError

__all__ = ["CACHE_KIND", "CASES_DIR", "REBUILD", "CacheEntry", "FeatureCache", "QueryEntry", "check_finite",
           "map_array", "open_cache", "release_pages"]

from edgeseg.runtime.artifacts.cache import CacheManifest  # noqa: E402 - the contract this module reads

CACHE_KIND = CacheManifest.KIND
CASES_DIR = CacheManifest.CASES_DIR
REBUILD = CacheManifest.REBUILD


def map_array(path: Path) -> np.ndarray:
    """A stored .npy file, memory-mapped read-only (no pickles)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def release_pages(arrays) -> None:
    """Drop the resident pages of memory-mapped `arrays` (and of views of them) from this process.

    ``madvise(MADV_DONTNEED)`` on a read-only file mapping: the data stay in the kernel's page cache and
    the next touch maps them again (a minor fault). Without it, every page a sweep has read counts in this
    process's RSS: 1.5 GB for five supports at feature size 48. Arrays in memory are left alone.
    """
    if not hasattr(mmap, "MADV_DONTNEED"):  # not on this platform: the pages stay, nothing is wrong
        return
    seen: set[int] = set()
    for a in arrays:
        base = a
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, mmap.mmap) and id(base) not in seen and not base.closed:
            seen.add(id(base))
            base.madvise(mmap.MADV_DONTNEED)


@dataclass
class CacheEntry:
    """One support region: `features` in the trunk's output order, float16 (C, d, h, w) (a half-resolution
    output at half the box), and `label`, uint8 0/1 on the full-resolution grid of the box."""

    case_id: str
    name: str  # "positive" or "negative-<i>"
    role: str  # "positive" or "negative"
    box: Box  # on the case's model grid
    voxel_ml: float
    organ_ml: float  # the whole organ on the model grid (not only this region)
    spacing_mm: tuple[float, ...]
    features: tuple[np.ndarray, ...] = field(repr=False)
    label: np.ndarray = field(repr=False)
    info: dict = field(repr=False, default_factory=dict)
    files: tuple[Path, ...] = field(repr=False, default=())  # where `features` are mapped from (none: in memory)


@dataclass
class QueryEntry:
    """One cached query scan: pooled `features` (memory-mapped), `pool`, `voxel_ml` of one model-grid voxel."""

    case_id: str
    image: str
    pool: int
    voxel_ml: float
    cropped_shape: tuple[int, int, int]
    features: tuple[np.ndarray, ...] = field(repr=False)
    info: dict = field(repr=False, default_factory=dict)
    files: tuple[Path, ...] = field(repr=False, default=())
    role: str = "query"

    @property
    def transform(self):
        from edgeseg.runtime.preprocess import GridTransform

        return GridTransform.from_dict(self.info["transform"])


def check_finite(path: Path, array: np.ndarray, rows: int = 8) -> None:
    """Refuse an array holding NaN or Inf (read in slabs of `rows` along its second axis: memory stays small)."""
    n = array.shape[1] if array.ndim > 1 else 1
    for i in range(0, n, rows):
        block = np.asarray(array[:, i:i + rows] if array.ndim > 1 else array)
        if not np.isfinite(block).all():
            bad = int(block.size - np.count_nonzero(np.isfinite(block)))
            raise InputError(f"holds NaN or Inf features ({bad} or more values): training on it would give a "
                             "meaningless adapter", path=path, fix=f"rebuild the cache: {REBUILD} --force")


@dataclass
class FeatureCache:
    folder: Path
    manifest: CacheManifest
    supports: list[CacheEntry]
    queries: list[QueryEntry]

    @property
    def manifest_hash(self) -> str:
        return self.manifest.sha256

    @property
    def trunk_manifest_hash(self) -> str:
        return self.manifest.trunk.manifest_sha256

    @property
    def trunk_dir(self) -> Path:
        return Path(self.manifest.trunk.folder)

    @property
    def cut(self) -> str:
        return self.manifest.cut

    @property
    def organ(self) -> str:
        return self.manifest.organ

    @property
    def spec(self):
        return self.manifest.preprocess

    preprocess = spec

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.manifest.trunk.output_names

    @property
    def bytes_on_disk(self) -> int:
        return self.manifest.bytes_on_disk

    @property
    def case_ids(self) -> list[str]:
        return list(self.manifest.supports)

    def check_features(self) -> None:
        """Every cached feature array is finite (NaN/Inf refused, naming the file); seconds even at feature size 48."""
        for e in [*self.supports, *self.queries]:
            for path, arr in zip(e.files, e.features):
                check_finite(path, arr)
                release_pages([arr])  # a sweep of the whole cache: none of it needs to stay resident

    def __repr__(self) -> str:
        return (f"<FeatureCache {self.folder} organ={self.organ!r} cut={self.cut} supports={len(self.case_ids)} "
                f"regions={len(self.supports)} queries={len(self.queries)} bytes={self.bytes_on_disk:,}>")


def open_cache(folder: str | Path, *, trunk_manifest_hash: str | None = None, verify_files: bool = False) -> FeatureCache:
    """Open a feature cache: manifest checked (kind, self-hash, every file present at its recorded size;
    every sha256 too with `verify_files`); refused when `trunk_manifest_hash` is given and is not the
    trunk the cache was made by. Arrays are memory-mapped: nothing is read until touched."""
    folder = Path(folder).expanduser()
    manifest = CacheManifest.from_folder(folder, verify_files=verify_files)
    if not verify_files:
        for name, entry in manifest.files.items():
            f = folder / name
            if not f.is_file():
                raise InputError(f"lists {name}, which is missing", path=folder / "manifest.json",
                                 fix=f"rebuild the cache: {REBUILD} --force")
            if f.stat().st_size != entry["bytes"]:
                raise InputError(f"{name} has {f.stat().st_size} bytes, the manifest recorded {entry['bytes']}", path=f,
                                 fix=f"rebuild the cache: {REBUILD} --force")
    made_by = manifest.trunk.manifest_sha256
    if trunk_manifest_hash is not None and trunk_manifest_hash != made_by:
        raise InputError(
            f"the cache was made by trunk {manifest.trunk.folder} (manifest {made_by[:12]}); this is "
            f"trunk {trunk_manifest_hash[:12]}: its features are not this trunk's", path=folder,
            fix=f"rebuild the cache with this trunk: {REBUILD.replace('--out DIR', '--out NEW_DIR')} (or --force)")
    supports: list[CacheEntry] = []
    queries: list[QueryEntry] = []
    for cid in manifest.supports:
        meta = manifest.cases[cid]
        base = folder / CASES_DIR / cid
        names = manifest.output_names
        for r in meta["regions"]:
            files = tuple(base / r["files"][n] for n in names)
            supports.append(CacheEntry(
                case_id=meta["case_id"], name=r["name"], role=r["role"], box=tuple(tuple(b) for b in r["box"]),
                voxel_ml=float(meta["voxel_ml"]), organ_ml=float(meta["organ_ml"]), spacing_mm=tuple(meta["spacing_mm"]),
                features=tuple(map_array(f) for f in files), label=map_array(base / r["label"]), info=r, files=files))
    for q in manifest.queries:
        meta = manifest.cases[q["id"]]
        names = manifest.trunk.output_names or tuple(meta["files_by_output"])
        files = tuple(folder / CASES_DIR / q["id"] / meta["files_by_output"][n] for n in names)
        queries.append(QueryEntry(
            case_id=q["id"], image=meta["image"], pool=int(meta["pool"]), voxel_ml=float(meta["voxel_ml"]),
            cropped_shape=tuple(meta["cropped_shape"]), features=tuple(map_array(f) for f in files), info=meta,
            files=files))
    return FeatureCache(folder=folder, manifest=manifest, supports=supports, queries=queries)

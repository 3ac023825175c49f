"""`edgeseg cache`: run the exported trunk once over the support (and query) scans; store fp16 features on disk.

Training never runs the trunk: it samples crops from this cache through `np.load(mmap_mode="r")`, so
memory does not grow with the scans. Only what training samples is stored (design.md, "Memory and
size"):

* per support case, the **positive** region: the organ's bounding box on the model grid, plus
  `margin_mm`, grown to at least the trunk's window, on even voxels, clipped to the volume; and
  `negatives_per_case` **negative** windows of the trunk's window size, drawn (seeded) inside the body
  (``image > 0.05`` on the [0, 1] HU-window scale, i.e. above -154 HU for the default window) and not
  overlapping the organ's bounding box (the code release samples crops 1:1 positive / negative). Each
  region stores the trunk's outputs (``features.npy`` for the ``decoder1`` cut; ``enc0.npy`` at full and
  ``dec0.npy`` at half resolution for ``pre-decoder1``), float16 (C, d, h, w), and ``label.npy``, uint8
  0/1 on the same full-resolution grid (a negative window's label is stored as it is: it may hold a
  little organ when no window clear of the organ exists, and then says so in the case's meta);
* per query scan (unlabelled; the size prior's S_hat), the whole scan's outputs average-pooled
  `query_pool` x per axis (pooled in float32, stored float16): for ``pre-decoder1`` both ``enc0`` and
  ``dec0``, each pooled at its own scale (so ``dec0`` stays half of ``enc0``, as a decoder-block adapter
  needs). The scan is cropped at its far end to a multiple of the pooling cell (and of 2 for
  ``pre-decoder1``) so the grids nest exactly; the crop is recorded. Queries are computed slab by slab
  (`sliding_window_region`; by default the whole scan at once when its float32 features fit 2 GiB, else
  slabs along the first axis that do) so memory stays bounded.

Preprocessing is `edgeseg.runtime.preprocess.preprocess`, the inference code path, with the trunk's
own spec. Layout of `out`::

    cache.json                 trunk manifest hash + the plan (written first: a resume checks it)
    cases/<id>/meta.json       role, case id, image, GridTransform, boxes, spacing, voxel / organ mL, bytes
    cases/<id>/positive/       features.npy | enc0.npy dec0.npy, label.npy
    cases/<id>/negative-<i>/   the same
    cases/<query id>/          features.npy | enc0.npy dec0.npy (pooled), meta.json
    manifest.json              kind "feature-cache", written last

Resumable: each case is written into ``cases/.<id>.partial/`` (every file fsynced) and renamed to
``cases/<id>/`` when complete; a rerun skips complete cases and deletes partial ones. A folder begun
or finished by another trunk is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeseg.runtime.atomic import fsync_dir, refuse_link, unlink_own, write_text_atomic
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.lock import LOCK_NAME, locks_output

__all__ = ["CACHE_KIND", "CacheEntry", "FeatureCache", "QueryEntry", "build_cache", "negative_boxes", "open_cache",
           "organ_bbox", "positive_box"]

CACHE_KIND = "feature-cache"
PLAN_NAME = "cache.json"
CASES_DIR = "cases"
PARTIAL_SUFFIX = ".partial"
BODY_THRESHOLD = 0.05  # [0, 1] HU-window scale: -154 HU for the default window [-175, 250]
REBUILD = "edgeseg cache --trunk DIR --data DATASET --organ NAME --out DIR"
Log = Callable[[str], None]
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # [start, stop) per axis


# --- boxes ---------------------------------------------------------------------------------------
def organ_bbox(label: np.ndarray) -> Box | None:
    """The tight bounding box [start, stop) per axis of the non-zero voxels; None when there are none."""
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        hit = np.flatnonzero(np.any(label, axis=other))
        if hit.size == 0:
            return None
        out.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def _even_span(lo: int, hi: int, n: int, want: int) -> tuple[int, int]:
    """[lo, hi) grown (centred) to `want` voxels within [0, n), then snapped to even ends within the even part of n."""
    n_even = n - n % 2 if n >= 2 else n
    if hi - lo < want:
        lo = max(0, lo - (want - (hi - lo)) // 2)
        hi = min(n_even, lo + want)
        lo = max(0, hi - want)
    lo = lo - lo % 2
    hi = min(n_even, hi + hi % 2)
    return lo, max(hi, min(lo + 2, n))


def positive_box(bbox: Box, shape: Sequence[int], spacing: Sequence[float], margin_mm: float,
                 window: Sequence[int]) -> Box:
    """The organ's box plus `margin_mm` (rounded up to voxels), grown to the window, on even voxels, in the volume."""
    out = []
    for (lo, hi), n, sp, w in zip(bbox, shape, spacing, window):
        m = math.ceil(float(margin_mm) / float(sp) - 1e-9)
        out.append(_even_span(max(0, lo - m), min(n, hi + m), int(n), int(w)))
    return tuple(out)  # type: ignore[return-value]


def _box_sums(integral: np.ndarray, starts: list[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """Sums over the boxes [s, s + size) for every combination of starts, from a zero-padded 3D integral image."""
    a, b, c = np.meshgrid(*starts, indexing="ij")
    a, b, c = a.ravel(), b.ravel(), c.ravel()
    A, B, C = a + sizes[0], b + sizes[1], c + sizes[2]
    s = integral
    return (s[A, B, C] - s[a, B, C] - s[A, b, C] - s[A, B, c] + s[a, b, C] + s[a, B, c] + s[A, b, c]
            - s[a, b, c]).astype(np.int64)


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.int64 if mask.size >= 2**31 else np.int32)
    np.cumsum(mask, axis=0, dtype=out.dtype, out=out[1:, 1:, 1:])
    np.cumsum(out[1:, 1:, 1:], axis=1, out=out[1:, 1:, 1:])
    np.cumsum(out[1:, 1:, 1:], axis=2, out=out[1:, 1:, 1:])
    return out


def negative_boxes(body: np.ndarray, label: np.ndarray, organ_box: Box, window: Sequence[int], n: int,
                   rng: np.random.Generator, *, min_body_fraction: float = 0.5) -> list[tuple[Box, dict]]:
    """`n` window-sized boxes (even starts) in the body, clear of `organ_box`, drawn with `rng`.

    Candidates, best tier first: (1) clear of the organ box with at least `min_body_fraction` body
    voxels; (2) clear of the organ box with any body voxel; (3) when no window clear of the organ box
    exists, the windows (with body) that hold the fewest organ voxels, those with enough body first
    (the label then says how much organ they hold). Within tiers 1 and 2 the draw is
    uniform, preferring windows that do not overlap those already drawn. Returns (box, info) pairs;
    info says the tier, body fraction, organ voxels and whether the box overlaps the organ box.
    """
    shape = body.shape
    sizes = [min(int(w), s - s % 2) if s >= 2 else s for w, s in zip(window, shape)]
    starts = [np.arange(0, s - z + 1, 2) for s, z in zip(shape, sizes)]
    body_sum = _box_sums(_integral(body), starts, sizes)
    organ_sum = _box_sums(_integral(label), starts, sizes)
    a, b, c = (x.ravel() for x in np.meshgrid(*starts, indexing="ij"))
    clear = np.zeros(a.shape, bool)
    for st, z, (lo, hi) in zip((a, b, c), sizes, organ_box):
        clear |= (st + z <= lo) | (st >= hi)
    frac = body_sum / float(np.prod(sizes))
    tiers = [(1, clear & (frac >= min_body_fraction)), (2, clear & (body_sum > 0))]
    chosen: list[int] = []
    info: list[dict] = []
    for tier, ok in tiers:
        if len(chosen) >= n:
            break
        pool = np.flatnonzero(ok)
        pool = pool[~np.isin(pool, chosen)]
        for i in _draw(rng.permutation(pool), n - len(chosen), a, b, c, sizes, chosen):
            chosen.append(i)
            info.append({"tier": tier})
    if len(chosen) < n:  # nothing clear of the organ box is left: fewest organ voxels, honestly labelled
        pool = np.flatnonzero(body_sum > 0)
        pool = pool[~np.isin(pool, chosen)]
        order = pool[np.lexsort((rng.random(pool.size), frac[pool] < min_body_fraction, organ_sum[pool]))]
        for i in order[: n - len(chosen)]:
            chosen.append(int(i))
            info.append({"tier": 3})
    out = []
    for i, extra in zip(chosen, info):
        box = tuple((int(s[i]), int(s[i]) + z) for s, z in zip((a, b, c), sizes))
        extra.update(body_fraction=round(float(frac[i]), 4), organ_voxels=int(organ_sum[i]),
                     overlaps_organ_box=not bool(clear[i]))
        out.append((box, extra))
    return out  # type: ignore[return-value]


def _draw(order: np.ndarray, n: int, a, b, c, sizes, taken: list[int]) -> list[int]:
    """Up to n of `order`, in order: first those overlapping no window taken (or picked) so far, then any."""
    starts = (a[order], b[order], c[order])

    def hits(j: int) -> np.ndarray:  # which of `order` overlap window j
        out = np.ones(order.size, bool)
        for s, st, z in zip((a, b, c), starts, sizes):
            out &= np.abs(st - s[j]) < z
        return out

    free = np.ones(order.size, bool)
    for j in taken:
        free &= ~hits(j)
    picked: list[int] = []
    while len(picked) < n:
        idx = np.flatnonzero(free)
        if idx.size == 0:
            break
        i = int(order[idx[0]])
        picked.append(i)
        free &= ~hits(i)
        free[idx[0]] = False
    for i in order:
        if len(picked) >= n:
            break
        if int(i) not in picked:
            picked.append(int(i))
    return picked


def _slices(box: Box) -> tuple[slice, slice, slice]:
    return tuple(slice(lo, hi) for lo, hi in box)  # type: ignore[return-value]


# --- durable writes --------------------------------------------------------------------------------
def _save_npy(path: Path, array: np.ndarray) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return path.stat().st_size


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as fh:
        fh.write(json.dumps(obj, indent=1, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _commit_case(partial: Path, final: Path) -> None:
    """Make a fully written case visible: one rename, then the folder's entry is made durable."""
    fsync_dir(partial)
    os.replace(partial, final)
    fsync_dir(final.parent)


def _case_complete(folder: Path) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    try:
        m = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size
               for name, size in (m.get("files") or {}).items()) and bool(m.get("files"))


# --- the plan --------------------------------------------------------------------------------------
_ID_RE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_id(text: str, taken: set[str]) -> str:
    base = _ID_RE.sub("_", text).lstrip(".") or "case"
    cid, i = base, 2
    while cid in taken:
        cid, i = f"{base}-{i}", i + 1
    taken.add(cid)
    return cid


@dataclass
class _Item:
    id: str
    role: str  # "support" | "query"
    image: Path
    case: Any = None  # the dataset's Case for a support


def _plan(data, organ: str, k: int | None, seed: int, query: Sequence[str | Path]) -> tuple[list[_Item], dict]:
    from edgeseg.data.datasets import open_dataset
    from edgeseg.runtime.nifti import is_nifti_path, open_nifti, shape_3d

    reader = open_dataset(data, organ)
    cases = sorted(reader.cases(), key=lambda c: c.case_id)
    if not cases:
        raise InputError(f"the dataset has no case labelled {organ!r}", path=data, fix="check --organ and --data")
    ids = [c.case_id for c in cases]
    draw: dict[str, Any] = {"from": len(cases), "candidates": ids}
    if k is None:
        chosen = cases
        draw["method"] = "every case (no --k)"
    else:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= len(cases):
            raise InputError(f"--k {k!r} must be a whole number from 1 to the {len(cases)} case(s) labelled {organ!r}",
                             path=data, fix=f"pass --k 1..{len(cases)}, or leave it out to cache every case")
        picked = np.random.default_rng(int(seed)).choice(len(cases), size=int(k), replace=False)
        chosen = [cases[i] for i in sorted(int(i) for i in picked)]
        draw["method"] = "numpy.random.default_rng(seed).choice(len(candidates), k, replace=False), sorted"
    draw["chosen"] = [c.case_id for c in chosen]
    taken: set[str] = set()
    items = [_Item(_safe_id(c.case_id, taken), "support", Path(c.image), c) for c in chosen]
    for q in query:
        path = Path(q).expanduser()
        if not is_nifti_path(path):
            raise InputError("a query scan must be a NIfTI file (.nii or .nii.gz)", path=path,
                             fix="pass --query SCAN.nii.gz (an unlabelled CT)")
        shape_3d(open_nifti(path).shape, path)  # refuse a missing, unreadable or non-3D scan now, not hours later
        stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)
        items.append(_Item(_safe_id(f"query-{stem}", taken), "query", path.resolve()))
    layout = getattr(reader, "layout", "")
    return items, {"organ": reader.organ, "data": str(Path(data).expanduser().resolve()), "layout": layout,
                   "k": None if k is None else int(k), "seed": int(seed), "draw": draw}


# --- per case ----------------------------------------------------------------------------------------
def _output_files(trunk) -> tuple[str, ...]:
    names = tuple(trunk.output_names) or (("enc0", "dec0") if trunk.cut == "pre-decoder1" else ("features",))
    return tuple(f"{n}.npy" for n in names)


def _support_case(trunk, item: _Item, partial: Path, s: dict, seed: int) -> dict:
    from edgeseg.runtime.nifti import Scan
    from edgeseg.runtime.preprocess import preprocess

    image, mask = item.case.load_pair()
    label_scan = Scan(path=Path(item.case.label), data=mask, affine=image.affine, header=image.header)
    prepared = preprocess(image, trunk.preprocess, label=label_scan)
    del image, mask, label_scan
    volume = prepared.image
    label = (prepared.label > 0).astype(np.uint8)
    t = prepared.transform
    spacing = t.model_spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    bbox = organ_bbox(label)
    if bbox is None:
        raise InputError(f"organ {s['organ']!r} of case {item.id!r} vanishes on the model grid "
                         f"({'x'.join(f'{v:g}' for v in trunk.preprocess.spacing)} mm)", path=item.case.label,
                         fix="drop the case; the organ is smaller than one model voxel")
    pos = positive_box(bbox, volume.shape, spacing, s["margin_mm"], trunk.window)
    rng = np.random.default_rng([int(seed), zlib.crc32(item.id.encode())])
    negs = negative_boxes(volume > BODY_THRESHOLD, label, bbox, trunk.window, s["negatives_per_case"], rng,
                          min_body_fraction=s["min_body_fraction"])
    regions = [("positive", "positive", pos, {})] + [(f"negative-{i}", "negative", b, extra)
                                                     for i, (b, extra) in enumerate(negs)]
    files: dict[str, int] = {}
    out_regions = []
    windows = 0
    for name, role, box, extra in regions:
        st: dict = {}
        feats = trunk.features(volume[None], _slices(box), overlap=s["overlap"], batch_size=s["batch_size"],
                               context=s["context"], dtype=np.float16, stats=st)
        windows += int(st.get("run", 0))
        entry = {"name": name, "role": role, "box": [list(b) for b in box], "files": {}, **extra}
        for fname, f in zip(_output_files(trunk), feats):
            rel = f"{name}/{fname}"
            files[rel] = _save_npy(partial / rel, f)
            entry["files"][fname[:-4]] = rel
            entry.setdefault("shapes", {})[fname[:-4]] = list(f.shape)
        del feats
        lab = np.ascontiguousarray(label[_slices(box)])
        files[f"{name}/label.npy"] = _save_npy(partial / name / "label.npy", lab)
        entry["label"] = f"{name}/label.npy"
        entry["label_voxels"] = int(lab.sum())
        out_regions.append(entry)
    organ_voxels = int(label.sum())
    pos_voxels = out_regions[0]["label_voxels"]
    return {
        "role": "support", "case_id": item.case.case_id, "id": item.id, "image": str(item.image),
        "label": str(item.case.label), "label_value": item.case.label_value,
        "transform": t.to_dict(), "model_shape": list(volume.shape), "spacing_mm": list(spacing),
        "voxel_ml": voxel_ml, "organ_voxels": organ_voxels, "organ_ml": organ_voxels * voxel_ml,
        "organ_box": [list(b) for b in bbox], "organ_voxels_outside_positive": organ_voxels - pos_voxels,
        "regions": out_regions, "windows_run": windows, "files": files, "bytes": int(sum(files.values())),
    }


def _pool(f: np.ndarray, p: int) -> np.ndarray:
    if p == 1:
        return f.astype(np.float16)
    c, d, h, w = f.shape
    return f.reshape(c, d // p, p, h // p, p, w // p, p).mean(axis=(2, 4, 6), dtype=np.float32).astype(np.float16)


QUERY_BUDGET_BYTES = 2 << 30  # float32 accumulators of one query slab (the whole scan when it fits)


def _auto_slab(trunk, cropped: Sequence[int], context) -> int:
    """Voxels along the first axis whose float32 features (plus the region's context) fit QUERY_BUDGET_BYTES."""
    channels = int(trunk.feature_size or 48)
    per_slice = cropped[1] * cropped[2] * 4 * (channels * (1.125 if trunk.cut == "pre-decoder1" else 1.0) + 1)
    ctx = trunk.window[0] // 4 if context is None else int(context if np.isscalar(context) else context[0])
    slab = int(QUERY_BUDGET_BYTES // per_slice) - 2 * ctx
    return max(int(trunk.window[0]), slab)


def _query_case(trunk, item: _Item, partial: Path, s: dict) -> dict:
    from edgeseg.runtime.preprocess import preprocess

    prepared = preprocess(item.image, trunk.preprocess)
    volume = prepared.image
    t = prepared.transform
    spacing = t.model_spacing
    pool = s["query_pool"]
    cell = pool * trunk.align  # the coarsest pooled cell, in model voxels
    cropped = tuple(n // cell * cell for n in volume.shape)
    if min(cropped) == 0:
        raise InputError(f"the query scan is {volume.shape} voxels on the model grid, too small to pool by {cell}",
                         path=item.image, fix="pass a whole CT as --query, or --query-pool 1")
    step = math.lcm(cell, 2)
    slab = int(s["query_slab"]) if s["query_slab"] else _auto_slab(trunk, cropped, s["context"])
    slab = max(step, slab // step * step)
    names = _output_files(trunk)
    scales = (1, 2) if trunk.cut == "pre-decoder1" else (1,)
    arrays: list[np.ndarray] = []
    windows = 0
    for z0 in range(0, cropped[0], slab):
        box = (slice(z0, min(z0 + slab, cropped[0])), slice(0, cropped[1]), slice(0, cropped[2]))
        st: dict = {}
        feats = trunk.features(volume[None], box, overlap=s["overlap"], batch_size=s["batch_size"],
                               context=s["context"], dtype=np.float32, stats=st)
        windows += int(st.get("run", 0))
        if not arrays:
            for fname, f, sc in zip(names, feats, scales):
                shape = (f.shape[0], *(n // (sc * pool) for n in cropped))
                (partial).mkdir(parents=True, exist_ok=True)
                arrays.append(np.lib.format.open_memmap(partial / fname, mode="w+", dtype=np.float16, shape=shape))
        for arr, f, sc in zip(arrays, feats, scales):
            a0 = z0 // (sc * pool)
            pooled = _pool(f, pool)
            arr[:, a0:a0 + pooled.shape[1]] = pooled
        del feats
    files = {}
    shapes = {}
    for fname, arr in zip(names, arrays):
        arr.flush()
        shapes[fname[:-4]] = list(arr.shape)
        del arr
        with open(partial / fname, "rb+") as fh:
            os.fsync(fh.fileno())
        files[fname] = (partial / fname).stat().st_size
    arrays.clear()
    return {
        "role": "query", "case_id": item.id, "id": item.id, "image": str(item.image), "transform": t.to_dict(),
        "model_shape": list(volume.shape), "cropped_shape": list(cropped), "spacing_mm": list(spacing),
        "voxel_ml": float(np.prod(spacing)) / 1000.0, "pool": pool, "slab": min(slab, cropped[0]),
        "files_by_output": {n[:-4]: n for n in names}, "shapes": shapes, "windows_run": windows,
        "files": files, "bytes": int(sum(files.values())),
    }


# --- the build -------------------------------------------------------------------------------------
def _recorded_trunk(out: Path) -> dict | None:
    """The trunk a (partial or complete) cache in `out` was made with: {manifest_sha256, folder}, or None."""
    for name in (PLAN_NAME, "manifest.json"):
        p = out / name
        if p.is_file():
            try:
                trunk = json.loads(p.read_text()).get("trunk")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
            if isinstance(trunk, dict) and trunk.get("manifest_sha256"):
                return trunk
    return None


_OWN_CASE_FILE = re.compile(r"^[^/]+/[^/]+\.(npy|json)$|^[^/]+/[^/]+/[^/]+\.(npy|json)$")


def _own_cases(out: Path) -> list[Path]:
    """The case folders under `out/cases` that a cache build wrote (only .npy and .json files, at the depths it
    writes them); anything else there is refused, never deleted."""
    cases = out / CASES_DIR
    refuse_link(cases, doing="deletes")
    if not cases.exists():
        return []
    found, strangers = [], []
    for d in sorted(cases.iterdir()):
        files = [p.relative_to(cases).as_posix() for p in d.rglob("*") if p.is_file() or p.is_symlink()] if d.is_dir() \
            and not d.is_symlink() else [d.name]
        bad = [f for f in files if not _OWN_CASE_FILE.match(f) or (cases / f).is_symlink()]
        (strangers.extend(bad) if bad or not d.is_dir() or d.is_symlink() else found.append(d))
    if strangers:
        raise InputError(f"holds files that a feature cache does not write ({', '.join(strangers[:5])}): edgeseg will "
                         "not delete them, even with --force", path=cases, fix="choose a new or empty folder for --out")
    return found


def _wipe(out: Path) -> None:
    """Remove what a cache build wrote in `out` (and nothing else: a finished cache's listed files; an
    unfinished one's plan and case folders, each checked to hold only what a cache build writes)."""
    from edgeseg.runtime.manifest import OWN_FILES, claim_output

    if (out / "manifest.json").exists():
        claim_output(out, CACHE_KIND, force=True, ignore=(*OWN_FILES, PLAN_NAME))
    for d in _own_cases(out):
        shutil.rmtree(d)
    unlink_own(out / PLAN_NAME)
    with contextlib.suppress(OSError):
        (out / CASES_DIR).rmdir()


def _check_out(out: Path, trunk_hash: str, trunk_folder: str, plan: dict, force: bool) -> bool:
    """Decide what to do with `out` (refusing what must be refused); True when an unfinished cache of the
    same plan is resumed. With `force` nothing is refused and nothing is resumed."""
    if out.exists() and not out.is_dir():
        raise InputError("is a file, not a folder", path=out, fix="choose a folder for --out")
    if not out.exists():
        return False
    from edgeseg.runtime.manifest import OWN_FILES, claim_output

    # another kind of artifact, a manifest edgeseg did not write, or a user's files: refused even with --force
    claim_output(out, CACHE_KIND, force=True, ignore=(*OWN_FILES, PLAN_NAME, f"{CASES_DIR}/*"), dry_run=True)
    _own_cases(out)
    recorded = _recorded_trunk(out)
    complete = (out / "manifest.json").exists()
    if force:  # wiped by the caller once the trunk is open (a failing backend must not cost the old cache)
        return False
    if recorded is not None and recorded.get("manifest_sha256") != trunk_hash:
        state = "a feature cache" if complete else "an unfinished feature cache"
        raise InputError(
            f"holds {state} made by another trunk: {recorded.get('folder', '?')} (trunk manifest "
            f"{str(recorded.get('manifest_sha256'))[:12]}), not {trunk_folder} ({trunk_hash[:12]})", path=out,
            fix="use another --out for this trunk, or pass --force to delete that cache and start over")
    if complete:
        raise InputError("already holds a complete feature cache", path=out,
                         fix="pass --force to rebuild it, or choose another --out")
    if (out / PLAN_NAME).exists():
        try:
            before = json.loads((out / PLAN_NAME).read_text()).get("plan")
        except (OSError, json.JSONDecodeError):
            before = None
        if before != plan:
            diff = sorted(k for k in set(before or {}) | set(plan) if (before or {}).get(k) != plan.get(k))
            raise InputError(f"holds an unfinished feature cache begun with other settings ({', '.join(diff) or 'unreadable'} "
                             "differ)", path=out,
                             fix="rerun with the same settings to resume it, pass --force to start over, or choose "
                                 "another --out")
        return True
    if any(p.name not in (CASES_DIR, LOCK_NAME) for p in out.iterdir()) or (out / CASES_DIR).exists():
        raise InputError("is not empty and holds no feature cache", path=out,
                         fix="choose a new or empty folder for --out (or --force to write into it anyway)")
    return False


def _build_cases(trunk, items, cases_dir: Path, settings: dict, drawn: dict, seed, ran: dict, progress, log):
    """Compute (or keep, when complete from an interrupted run) every case; returns (metas, computed, kept)."""
    for leftover in cases_dir.glob(f".*{PARTIAL_SUFFIX}"):
        refuse_link(leftover, doing="deletes")
        log(f"removing the unfinished case {leftover.name} left by an interrupted run")
        shutil.rmtree(leftover)
    metas: dict[str, dict] = {}
    computed, skipped = [], []
    s = {**settings, "organ": drawn["organ"]}
    for n, item in enumerate(items):
        final = cases_dir / item.id
        refuse_link(final)
        refuse_link(cases_dir / f".{item.id}{PARTIAL_SUFFIX}")
        if final.exists():
            if _case_complete(final):
                metas[item.id] = json.loads((final / "meta.json").read_text())
                skipped.append(item.id)
                log(f"{item.id}: already cached, kept")
                if progress:
                    progress(n + 1, len(items))
                continue
            shutil.rmtree(final)
        partial = cases_dir / f".{item.id}{PARTIAL_SUFFIX}"
        partial.mkdir()
        tc = time.perf_counter()
        try:
            meta = (_support_case(trunk, item, partial, s, int(seed)) if item.role == "support"
                    else _query_case(trunk, item, partial, s))
            meta["ran"] = {"backend": ran["backend"], "precision": ran["precision"], "device": ran["device"],
                           "graph": trunk.graph_precision}
            meta["seconds"] = round(time.perf_counter() - tc, 3)
            _write_json(partial / "meta.json", meta)
            _commit_case(partial, final)
        except BaseException:  # disk full, Ctrl-C, a bad scan: the unfinished case leaves nothing behind
            shutil.rmtree(partial, ignore_errors=True)
            raise
        metas[item.id] = meta
        computed.append(item.id)
        what = (f"positive box {'x'.join(str(b - a) for a, b in meta['regions'][0]['box'])} + "
                f"{len(meta['regions']) - 1} negative window(s)" if item.role == "support"
                else f"whole scan pooled {meta['pool']}x -> {'x'.join(map(str, meta['cropped_shape']))} / {meta['pool']}")
        log(f"{item.id}: {what}, {meta['windows_run']} window(s), {meta['bytes'] / 1e6:.1f} MB, {meta['seconds']:.1f} s")
        if progress:
            progress(n + 1, len(items))
    return metas, computed, skipped


@locks_output("edgeseg cache")  # one run per --out: a second one is refused
def build_cache(trunk_dir, data: str | Path, organ: str, out: str | Path, *, k: int | None = None, seed: int = 0,
                query: Sequence[str | Path] = (), margin_mm: float = 20.0, negatives_per_case: int = 2,
                backend: str = "auto", precision: str | None = None, threads: int | None = None,
                context: int | Sequence[int] | None = None, overlap: float = 0.25, batch_size: int = 1,
                query_pool: int = 2, query_slab: int | None = None, min_body_fraction: float = 0.5,
                force: bool = False, progress: Callable[[int, int], None] | None = None,
                log: Log = print) -> dict:
    """Cache the trunk's features for the supports (and queries) of `organ` in `data`; return the manifest.

    trunk_dir: the exported trunk's folder (or an open `edgeseg.runtime.trunk.Trunk`, left open).
    k / seed: draw k of the dataset's cases (sorted by id) with numpy's default_rng(seed); None: all.
    query: unlabelled NIfTI scans for the size prior. context / overlap / batch_size: the sliding window's
    (context None: window // 4 around each region). query_slab: query voxels per slab along the first axis
    (None: the whole scan when its float32 features fit 2 GiB, else slabs that do): bounds a query's memory.
    progress(done, total) after each case (resumed ones included); log(message) for what happens.
    """
    from edgeseg.runtime.manifest import write_manifest
    from edgeseg.runtime.trunk import Trunk, open_trunk, read_trunk_manifest

    t_start = time.perf_counter()
    out = Path(out).expanduser()
    for name, value, ok in (("--negatives", negatives_per_case, isinstance(negatives_per_case, int) and negatives_per_case >= 0),
                            ("--margin", margin_mm, isinstance(margin_mm, (int, float)) and 0 <= margin_mm < 1000),
                            ("--query-pool", query_pool, isinstance(query_pool, int) and 1 <= query_pool <= 8),
                            ("min_body_fraction", min_body_fraction, 0 <= float(min_body_fraction) <= 1)):
        if not ok:
            raise InputError(f"{name} {value!r} is out of range",
                             fix="negatives: 0 or more; margin: 0..1000 mm; query pool: 1..8")
    if isinstance(trunk_dir, Trunk):
        trunk_manifest = trunk_dir.manifest
        trunk_folder = str(trunk_dir.folder.resolve()) if trunk_dir.folder is not None else "(not a folder)"
    else:
        trunk_folder = str(Path(trunk_dir).expanduser().resolve())
        trunk_manifest = read_trunk_manifest(trunk_dir)
    from edgeseg.runtime.manifest import content_hash

    trunk_hash = content_hash(trunk_manifest)
    items, drawn = _plan(data, organ, k, seed, query)
    settings = {
        "margin_mm": float(margin_mm), "negatives_per_case": int(negatives_per_case), "context": context,
        "overlap": float(overlap), "batch_size": int(batch_size), "query_pool": int(query_pool),
        "query_slab": int(query_slab) if query_slab else None, "min_body_fraction": float(min_body_fraction),
        "body_threshold": BODY_THRESHOLD, "organ": drawn["organ"],
    }
    plan = {**drawn, "settings": settings, "cases": [{"id": i.id, "role": i.role, "image": str(i.image)} for i in items]}
    plan = json.loads(json.dumps(plan, default=str))  # as cache.json will hold it
    resuming = _check_out(out, trunk_hash, trunk_folder, plan, force)

    t0 = time.perf_counter()
    trunk = trunk_dir if isinstance(trunk_dir, Trunk) else open_trunk(trunk_dir, backend=backend, precision=precision,
                                                                      threads=threads)
    t_open = time.perf_counter() - t0
    try:
        ran = trunk.ran
        log(f"trunk {trunk_folder} (cut {trunk.cut}, window {'x'.join(map(str, trunk.window))}) runs on "
            f"{ran['backend']} {ran['precision']} on {ran['device']}" + (f" [{trunk.reason}]" if trunk.reason else ""))
        n_sup = sum(i.role == "support" for i in items)
        log(f"{n_sup} support case(s) of {drawn['draw']['from']} for {drawn['organ']!r}"
            + (f" (k={k}, seed {seed})" if k is not None else "") + f": {', '.join(drawn['draw']['chosen'])}; "
            f"{len(items) - n_sup} query scan(s)")
        if force and out.exists():
            _wipe(out)
        cases_dir = out / CASES_DIR
        refuse_link(cases_dir)
        fresh = not resuming and not cases_dir.exists()  # this run begins the cache: a refusal must leave nothing
        cases_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            write_text_atomic(out / PLAN_NAME, json.dumps({"kind": "feature-cache-plan", "trunk": {
                "folder": trunk_folder, "manifest_sha256": trunk_hash}, "plan": plan}, indent=1) + "\n", force=True)
            fsync_dir(out)
        try:
            metas, computed, skipped = _build_cases(trunk, items, cases_dir, settings, drawn, seed, ran, progress, log)
        except InputError:
            if fresh and not any(cases_dir.iterdir()):  # refused before a single case: no cache.json, no cases/
                unlink_own(out / PLAN_NAME)
                cases_dir.rmdir()
            raise
        files = [Path(PLAN_NAME)]
        case_bytes = {}
        for item in items:
            folder = cases_dir / item.id
            names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            files += [Path(CASES_DIR) / item.id / nm for nm in names]
            case_bytes[item.id] = int(sum((folder / nm).stat().st_size for nm in names))
        total = int(sum((out / f).stat().st_size for f in files))
        used = sorted({json.dumps(m.get("ran"), sort_keys=True) for m in metas.values()})
        if len(used) > 1:
            log(f"note: the cases were computed by different backends across resumed runs: {', '.join(used)}")
        body = {
            "trunk": {"folder": trunk_folder, "manifest_sha256": trunk_hash, "cut": trunk.cut,
                      "graph": trunk.graph_precision, "output_names": list(trunk.output_names)},
            "cut": trunk.cut, "organ": drawn["organ"],
            "preprocess": trunk.preprocess.to_dict(), "preprocess_sha256": trunk.preprocess.sha256(),
            "data": {"path": drawn["data"], "layout": drawn["layout"]}, "k": drawn["k"], "seed": drawn["seed"],
            "draw": drawn["draw"], "settings": settings,
            "supports": [i.id for i in items if i.role == "support"],
            "queries": [{"id": i.id, "image": str(i.image)} for i in items if i.role == "query"],
            "cases": {i.id: {kk: v for kk, v in metas[i.id].items() if kk != "seconds"} for i in items},
            "ran": ran, "backend_reason": trunk.reason, "backends_used": [json.loads(u) for u in used],
            "case_bytes": case_bytes, "bytes_on_disk": total,
            "timings_seconds": {"open_trunk": round(t_open, 3), "total": round(time.perf_counter() - t_start, 3),
                                "cases": {i: metas[i].get("seconds") for i in metas}, "computed": computed,
                                "resumed": skipped},
        }
        manifest = write_manifest(out, CACHE_KIND, body, files, force=True)
        log(f"cache written to {out}: {len(items)} case(s), {total:,} bytes on disk ({total / 2**20:.1f} MiB)"
            + (f"; {len(skipped)} case(s) kept from an interrupted run" if skipped else ""))
        return manifest
    finally:
        if trunk is not trunk_dir:
            trunk.close()


# --- reading ---------------------------------------------------------------------------------------
def _load(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


@dataclass
class CacheEntry:
    """One cached support region: `features` (memory-mapped, trunk order), `label` (memory-mapped uint8)."""

    folder: Path
    case_id: str
    name: str  # "positive" or "negative-<i>"
    role: str  # "positive" or "negative"
    box: tuple[tuple[int, int], ...]  # on the case's model grid
    voxel_ml: float
    organ_ml: float  # the whole organ on the model grid (not only this region)
    spacing_mm: tuple[float, ...]
    info: dict = field(repr=False, default_factory=dict)
    _files: tuple[str, ...] = field(repr=False, default=())
    _label: str = field(repr=False, default="")

    @cached_property
    def features(self) -> tuple[np.ndarray, ...]:
        return tuple(_load(self.folder / f) for f in self._files)

    @cached_property
    def label(self) -> np.ndarray:
        return _load(self.folder / self._label)


@dataclass
class QueryEntry:
    """One cached query scan: pooled `features` (memory-mapped), `pool`, `voxel_ml` of one model-grid voxel."""

    folder: Path
    case_id: str
    image: str
    pool: int
    voxel_ml: float
    cropped_shape: tuple[int, int, int]
    info: dict = field(repr=False, default_factory=dict)
    _files: tuple[str, ...] = field(repr=False, default=())
    role: str = "query"

    @cached_property
    def features(self) -> tuple[np.ndarray, ...]:
        return tuple(_load(self.folder / f) for f in self._files)

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
    manifest: dict
    supports: list[CacheEntry]
    queries: list[QueryEntry]

    @property
    def manifest_hash(self) -> str:
        from edgeseg.runtime.manifest import content_hash

        return content_hash(self.manifest)

    @property
    def trunk_manifest_hash(self) -> str:
        return self.manifest["trunk"]["manifest_sha256"]

    @property
    def trunk_dir(self) -> Path:
        return Path(self.manifest["trunk"]["folder"])

    @property
    def cut(self) -> str:
        return self.manifest["cut"]

    @property
    def organ(self) -> str:
        return self.manifest["organ"]

    @property
    def spec(self):
        from edgeseg.runtime.preprocess import PreprocessSpec

        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    preprocess = spec

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["trunk"]["output_names"])

    @property
    def bytes_on_disk(self) -> int:
        return int(self.manifest["bytes_on_disk"])

    @property
    def case_ids(self) -> list[str]:
        return list(self.manifest["supports"])

    def check_features(self) -> None:
        """Every cached feature array is finite (NaN/Inf refused, naming the file); seconds even at feature size 48."""
        for e in [*self.supports, *self.queries]:
            for name, arr in zip(e._files, e.features):
                check_finite(e.folder / name, arr)

    def __repr__(self) -> str:
        return (f"<FeatureCache {self.folder} organ={self.organ!r} cut={self.cut} supports={len(self.case_ids)} "
                f"regions={len(self.supports)} queries={len(self.queries)} bytes={self.bytes_on_disk:,}>")


def open_cache(folder: str | Path, *, trunk_manifest_hash: str | None = None, verify_files: bool = False) -> FeatureCache:
    """Open a feature cache: manifest checked (kind, self-hash, every file present at its recorded size;
    every sha256 too with `verify_files`); refused when `trunk_manifest_hash` is given and is not the
    trunk the cache was made by. Arrays are memory-mapped when first touched."""
    from edgeseg.runtime.manifest import read_manifest

    folder = Path(folder).expanduser()
    manifest = read_manifest(folder, CACHE_KIND, verify_files=verify_files, rebuild=REBUILD)
    if not verify_files:
        for name, entry in (manifest.get("files") or {}).items():
            f = folder / name
            if not f.is_file():
                raise InputError(f"lists {name}, which is missing", path=folder / "manifest.json",
                                 fix=f"rebuild the cache: {REBUILD} --force")
            if f.stat().st_size != entry["bytes"]:
                raise InputError(f"{name} has {f.stat().st_size} bytes, the manifest recorded {entry['bytes']}", path=f,
                                 fix=f"rebuild the cache: {REBUILD} --force")
    made_by = manifest["trunk"]["manifest_sha256"]
    if trunk_manifest_hash is not None and trunk_manifest_hash != made_by:
        raise InputError(
            f"the cache was made by trunk {manifest['trunk'].get('folder', '?')} (manifest {made_by[:12]}); this is "
            f"trunk {trunk_manifest_hash[:12]}: its features are not this trunk's", path=folder,
            fix=f"rebuild the cache with this trunk: {REBUILD.replace('--out DIR', '--out NEW_DIR')} (or --force)")
    supports: list[CacheEntry] = []
    queries: list[QueryEntry] = []
    for cid in manifest["supports"]:
        meta = manifest["cases"][cid]
        base = folder / CASES_DIR / cid
        names = manifest["trunk"]["output_names"] or (["enc0", "dec0"] if manifest["cut"] == "pre-decoder1" else ["features"])
        for r in meta["regions"]:
            supports.append(CacheEntry(
                folder=base, case_id=meta["case_id"], name=r["name"], role=r["role"],
                box=tuple(tuple(b) for b in r["box"]), voxel_ml=float(meta["voxel_ml"]), organ_ml=float(meta["organ_ml"]),
                spacing_mm=tuple(meta["spacing_mm"]), info=r, _files=tuple(r["files"][n] for n in names),
                _label=r["label"]))
    for q in manifest["queries"]:
        meta = manifest["cases"][q["id"]]
        names = manifest["trunk"]["output_names"] or list(meta["files_by_output"])
        queries.append(QueryEntry(
            folder=folder / CASES_DIR / q["id"], case_id=q["id"], image=meta["image"], pool=int(meta["pool"]),
            voxel_ml=float(meta["voxel_ml"]), cropped_shape=tuple(meta["cropped_shape"]), info=meta,
            _files=tuple(meta["files_by_output"][n] for n in names)))
    return FeatureCache(folder=folder, manifest=manifest, supports=supports, queries=queries)

"""`edgeseg cache`: run the exported trunk once over the support (and query) scans; store fp16 features on disk.

What is stored (the regions are `edgeseg.features.regions`'s):

* per support case, each region's trunk outputs (``features.npy`` for the ``decoder1`` cut; ``enc0.npy``
  at full and ``dec0.npy`` at half resolution for ``pre-decoder1``), float16 (C, d, h, w), and
  ``label.npy``, uint8 0/1 on the same full-resolution grid (a negative window's label is stored as it
  is: it may hold a little organ when no window clear of the organ exists, and then says so in the
  case's meta);
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
    manifest.json              kind "feature-cache", written last (`cache_manifest`)

Resumable: each case is written whole or not at all (`edgeseg.features.cases`); a rerun skips complete
cases and deletes partial ones. A folder begun or finished by another trunk is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.features.cases import case_complete, own_cases, remove_leftovers, save_npy, write_durable, writing_case
from edgeseg.features.plan import PLAN_NAME, CachePlan, PlannedCase, draw_plan, read_plan, write_plan
from edgeseg.features.reader import CASES_DIR
from edgeseg.runtime.artifacts.cache import CacheManifest, CacheTrunk
from edgeseg.features.regions import BODY_THRESHOLD, organ_bbox, region_slices, support_regions
from edgeseg.runtime.atomic import refuse_link, unlink_own
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.lock import LOCK_NAME, locks_output

__all__ = ["CacheConfig", "build_cache", "cache_manifest"]

Log = Callable[[str], None]
QUERY_BUDGET_BYTES = 2 << 30  # float32 accumulators of one query slab (the whole scan when it fits)


@dataclass(frozen=True)
class CacheConfig:
    """What `edgeseg cache` draws and stores, and how the trunk runs.

    k / seed: draw k of the dataset's cases (sorted by id) with numpy's default_rng(seed); None: all (the
    seed also draws the negative windows). query: unlabelled NIfTI scans for the size prior.
    context / overlap / batch_size: the sliding window's (context None: window // 4 around each region).
    query_slab: query voxels per slab along the first axis (None: the whole scan when its float32
    features fit 2 GiB, else slabs that do): bounds a query's memory. force: replace a cache in --out.
    """

    k: int | None = None
    seed: int = 0
    query: tuple[str | Path, ...] = ()
    margin_mm: float = 20.0
    negatives_per_case: int = 2
    min_body_fraction: float = 0.5
    query_pool: int = 2
    query_slab: int | None = None
    context: int | Sequence[int] | None = None
    overlap: float = 0.25
    batch_size: int = 1
    backend: str = "auto"
    precision: str | None = None
    threads: int | None = None
    force: bool = False

    def check(self) -> None:
        """Refuse settings out of range (the draw's k is checked against the dataset by `draw_plan`)."""
        n, m, p = self.negatives_per_case, self.margin_mm, self.query_pool
        for name, value, ok in (("--negatives", n, isinstance(n, int) and n >= 0),
                                ("--margin", m, isinstance(m, (int, float)) and 0 <= m < 1000),
                                ("--query-pool", p, isinstance(p, int) and 1 <= p <= 8),
                                ("min_body_fraction", self.min_body_fraction, 0 <= float(self.min_body_fraction) <= 1)):
            if not ok:
                raise InputError(f"{name} {value!r} is out of range",
                                 fix="negatives: 0 or more; margin: 0..1000 mm; query pool: 1..8")

    def settings(self) -> dict:
        """How regions and queries are computed, as the plan and the manifest record them."""
        return {
            "margin_mm": float(self.margin_mm), "negatives_per_case": int(self.negatives_per_case),
            "context": self.context, "overlap": float(self.overlap), "batch_size": int(self.batch_size),
            "query_pool": int(self.query_pool), "query_slab": int(self.query_slab) if self.query_slab else None,
            "min_body_fraction": float(self.min_body_fraction), "body_threshold": BODY_THRESHOLD,
        }


# --- per case ----------------------------------------------------------------------------------------
def _output_files(trunk) -> tuple[str, ...]:
    names = tuple(trunk.output_names) or (("enc0", "dec0") if trunk.cut == "pre-decoder1" else ("features",))
    return tuple(f"{n}.npy" for n in names)


def _support_case(trunk, item: PlannedCase, partial: Path, s: dict, seed: int) -> dict:
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
    regions = support_regions(volume, label, bbox, spacing, trunk.window, margin_mm=s["margin_mm"],
                              negatives=s["negatives_per_case"], min_body_fraction=s["min_body_fraction"],
                              rng=np.random.default_rng([int(seed), zlib.crc32(item.id.encode())]))
    files: dict[str, int] = {}
    out_regions = []
    windows = 0
    for region in regions:
        name, box = region.name, region.box
        st: dict = {}
        feats = trunk.features(volume[None], region_slices(box), overlap=s["overlap"], batch_size=s["batch_size"],
                               context=s["context"], dtype=np.float16, stats=st)
        windows += int(st.get("run", 0))
        entry = {"name": name, "role": region.role, "box": [list(b) for b in box], "files": {}, **region.info}
        for fname, f in zip(_output_files(trunk), feats):
            rel = f"{name}/{fname}"
            files[rel] = save_npy(partial / rel, f)
            entry["files"][fname[:-4]] = rel
            entry.setdefault("shapes", {})[fname[:-4]] = list(f.shape)
        del feats
        lab = np.ascontiguousarray(label[region_slices(box)])
        files[f"{name}/label.npy"] = save_npy(partial / name / "label.npy", lab)
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


def _auto_slab(trunk, cropped: Sequence[int], context) -> int:
    """Voxels along the first axis whose float32 features (plus the region's context) fit QUERY_BUDGET_BYTES."""
    channels = int(trunk.feature_size or 48)
    per_slice = cropped[1] * cropped[2] * 4 * (channels * (1.125 if trunk.cut == "pre-decoder1" else 1.0) + 1)
    ctx = trunk.window[0] // 4 if context is None else int(context if np.isscalar(context) else context[0])
    slab = int(QUERY_BUDGET_BYTES // per_slice) - 2 * ctx
    return max(int(trunk.window[0]), slab)


def _query_case(trunk, item: PlannedCase, partial: Path, s: dict) -> dict:
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




# --- the output folder -----------------------------------------------------------------------------
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


def _wipe(out: Path) -> None:
    """Remove what a cache build wrote in `out` (and nothing else: a finished cache's listed files; an
    unfinished one's plan and case folders, each checked to hold only what a cache build writes)."""
    from edgeseg.runtime.manifest import OWN_FILES

    if (out / "manifest.json").exists():
        CacheManifest.claim(out, force=True, ignore=(*OWN_FILES, PLAN_NAME))
    for d in own_cases(out / CASES_DIR):
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
    from edgeseg.runtime.manifest import OWN_FILES

    # another kind of artifact, a manifest edgeseg did not write, or a user's files: refused even with --force
    CacheManifest.claim(out, force=True, ignore=(*OWN_FILES, PLAN_NAME, f"{CASES_DIR}/*"), dry_run=True)
    own_cases(out / CASES_DIR)
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
        before = read_plan(out)
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


def _build_cases(trunk, plan: CachePlan, cases_dir: Path, seed: int, ran: dict, progress, log):
    """Compute (or keep, when complete from an interrupted run) every case; returns (metas, computed, kept)."""
    remove_leftovers(cases_dir, log)
    metas: dict[str, dict] = {}
    computed, skipped = [], []
    items = plan.cases
    for n, item in enumerate(items):
        final = cases_dir / item.id
        refuse_link(final)
        if final.exists():
            if case_complete(final):
                metas[item.id] = json.loads((final / "meta.json").read_text())
                skipped.append(item.id)
                log(f"{item.id}: already cached, kept")
                if progress:
                    progress(n + 1, len(items))
                continue
            shutil.rmtree(final)
        tc = time.perf_counter()
        with writing_case(final) as partial:
            meta = (_support_case(trunk, item, partial, plan.settings, int(seed)) if item.role == "support"
                    else _query_case(trunk, item, partial, plan.settings))
            meta["ran"] = {"backend": ran["backend"], "precision": ran["precision"], "device": ran["device"],
                           "graph": trunk.graph_precision}
            meta["seconds"] = round(time.perf_counter() - tc, 3)
            write_durable(partial / "meta.json", json.dumps(meta, indent=1, default=str) + "\n")
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
def build_cache(trunk_dir, data: str | Path, organ: str, out: str | Path, config: CacheConfig = CacheConfig(), *,
                progress: Callable[[int, int], None] | None = None, log: Log = print) -> dict:
    """Cache the trunk's features for the supports (and queries) of `organ` in `data`; return the manifest.

    trunk_dir: the exported trunk's folder (or an open `edgeseg.runtime.trunk.OpenedTrunk`, left open).
    progress(done, total) after each case (resumed ones included); log(message) for what happens.
    """
    from edgeseg.runtime.artifacts.trunk import TrunkManifest
    from edgeseg.runtime.trunk import OpenedTrunk, open_trunk

    t_start = time.perf_counter()
    out = Path(out).expanduser()
    config.check()
    if isinstance(trunk_dir, OpenedTrunk):
        trunk_manifest = trunk_dir.manifest
        trunk_folder = str(trunk_dir.folder.resolve()) if trunk_dir.folder is not None else "(not a folder)"
    else:
        trunk_folder = str(Path(trunk_dir).expanduser().resolve())
        trunk_manifest = TrunkManifest.from_folder(trunk_dir)
    trunk_hash = trunk_manifest.sha256
    plan = draw_plan(data, organ, config.k, config.seed, config.query, config.settings())
    resuming = _check_out(out, trunk_hash, trunk_folder, plan.to_dict(), config.force)

    t0 = time.perf_counter()
    trunk = trunk_dir if isinstance(trunk_dir, OpenedTrunk) else open_trunk(trunk_dir, backend=config.backend,
                                                                      precision=config.precision, threads=config.threads)
    t_open = time.perf_counter() - t0
    try:
        ran = trunk.ran
        log(f"trunk {trunk_folder} (cut {trunk.cut}, window {'x'.join(map(str, trunk.window))}) runs on "
            f"{ran['backend']} {ran['precision']} on {ran['device']}" + (f" [{trunk.reason}]" if trunk.reason else ""))
        n_sup = sum(c.role == "support" for c in plan.cases)
        log(f"{n_sup} support case(s) of {plan.drawn['draw']['from']} for {plan.organ!r}"
            + (f" (k={config.k}, seed {config.seed})" if config.k is not None else "")
            + f": {', '.join(plan.drawn['draw']['chosen'])}; {len(plan.cases) - n_sup} query scan(s)")
        if config.force and out.exists():
            _wipe(out)
        cases_dir = out / CASES_DIR
        refuse_link(cases_dir)
        fresh = not resuming and not cases_dir.exists()  # this run begins the cache: a refusal must leave nothing
        cases_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            write_plan(out, trunk_folder, trunk_hash, plan.to_dict())
        try:
            metas, computed, skipped = _build_cases(trunk, plan, cases_dir, config.seed, ran, progress, log)
        except InputError:
            if fresh and not any(cases_dir.iterdir()):  # refused before a single case: no cache.json, no cases/
                unlink_own(out / PLAN_NAME)
                cases_dir.rmdir()
            raise
        used = sorted({json.dumps(m.get("ran"), sort_keys=True) for m in metas.values()})
        if len(used) > 1:
            log(f"note: the cases were computed by different backends across resumed runs: {', '.join(used)}")
        made, files = cache_manifest(out, plan, trunk, trunk_folder, trunk_hash, metas, [json.loads(u) for u in used],
                                     {"open_trunk": round(t_open, 3), "total": round(time.perf_counter() - t_start, 3),
                                      "cases": {i: metas[i].get("seconds") for i in metas}, "computed": computed,
                                      "resumed": skipped})
        manifest = dict(made.write(out, files).record)
        total = made.bytes_on_disk
        log(f"cache written to {out}: {len(plan.cases)} case(s), {total:,} bytes on disk ({total / 2**20:.1f} MiB)"
            + (f"; {len(skipped)} case(s) kept from an interrupted run" if skipped else ""))
        return manifest
    finally:
        if trunk is not trunk_dir:
            trunk.close()


def cache_manifest(out: Path, plan: CachePlan, trunk, trunk_folder: str, trunk_hash: str, metas: dict[str, dict],
                   backends_used: list[dict], timings: dict) -> tuple[CacheManifest, list[Path]]:
    """The feature cache's manifest (not yet written) and the files it lists (the plan, then every case's files), from
    what is in `out` once every case is written."""
    files = [Path(PLAN_NAME)]
    case_bytes = {}
    for item in plan.cases:
        folder = out / CASES_DIR / item.id
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        files += [Path(CASES_DIR) / item.id / nm for nm in names]
        case_bytes[item.id] = int(sum((folder / nm).stat().st_size for nm in names))
    total = int(sum((out / f).stat().st_size for f in files))
    drawn = plan.drawn
    manifest = CacheManifest(
        trunk=CacheTrunk(folder=trunk_folder, manifest_sha256=trunk_hash, cut=trunk.cut, graph=trunk.graph_precision,
                         output_names=tuple(trunk.output_names)),
        cut=trunk.cut, organ=drawn["organ"], preprocess=trunk.preprocess, preprocess_sha256=trunk.preprocess.sha256(),
        supports=tuple(i.id for i in plan.cases if i.role == "support"),
        queries=tuple({"id": i.id, "image": str(i.image)} for i in plan.cases if i.role == "query"),
        cases={i.id: {kk: v for kk, v in metas[i.id].items() if kk != "seconds"} for i in plan.cases},
        bytes_on_disk=total,
        extra={"data": {"path": drawn["data"], "layout": drawn["layout"]}, "k": drawn["k"], "seed": drawn["seed"],
               "draw": drawn["draw"], "settings": plan.settings, "ran": trunk.ran, "backend_reason": trunk.reason,
               "backends_used": backends_used, "case_bytes": case_bytes, "timings_seconds": timings})
    return manifest, files

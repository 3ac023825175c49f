"""Segment new scans NIfTI to NIfTI with a fused engine (trunk + adapters, one pass per scan).

Per scan: read, preprocess (the same code as caching), sliding window with Gaussian blending,
threshold, optional largest-connected-component clean-up, back to the scan's own grid, write
`<case>_<organ>.nii.gz` (uint8, the input's shape and header geometry), optionally the probability
maps, a multi-label map when the engine has several organs, a preview PNG, and `<case>.json`: what
ran, time per stage, windows, organ volumes in mL, peak memory. The report is written last and a
`<case>.partial` marker first, so a crashed run resumes: a case with a report is skipped, a case
with a marker is redone, and outputs that neither edgeseg run made are not overwritten without --force.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.atomic import write_text_atomic
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.host import peak_rss_gib
from edgeseg.runtime.nifti import is_nifti_path, load_scan, save_like


@dataclass(frozen=True)
class PredictOptions:
    overlap: float = 0.25
    sw_batch: int = 1
    threshold: float = 0.5
    lcc: bool = False  # keep only each organ's largest connected component
    save_prob: bool = False
    preview: bool = False
    force: bool = False


def case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """NIfTI files, folders of them (sorted), or text files listing one path per line (relative to the list)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            scans = sorted(p for p in item.iterdir() if p.is_file() and is_nifti_path(p))
            if not scans:
                raise InputError("folder holds no .nii or .nii.gz file", path=item, fix="point at the scans themselves")
            found += scans
        elif item.suffix.lower() in (".txt", ".lst", ".list") and item.is_file():
            lines = [ln.strip() for ln in item.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            found += [p if p.is_absolute() else item.parent / p for p in map(Path, lines)]
        else:
            found.append(item)
    for p in found:
        if not p.exists():
            raise InputError("input scan not found", path=p, fix="check the path (lists are read relative to their folder)")
    case_names(found)  # refuse colliding outputs before any work
    return found


# File names that dataset layouts give every scan (TotalSegmentator: sXXXX/ct.nii.gz): the folder names the case.
GENERIC_NAMES = {"ct", "image", "img", "scan", "volume"}


def case_names(paths: Sequence[Path]) -> list[str]:
    """Output names per scan, stable whatever else is in the batch: the file name without .nii(.gz), or
    `<folder>_<name>` for a generic file name such as ct.nii.gz."""
    stems = [case_name(p) for p in paths]
    names = [f"{p.parent.name}_{s}" if s.lower() in GENERIC_NAMES else s for p, s in zip(paths, stems)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"several inputs share the case name(s) {dupes}: their outputs would collide",
                         fix="rename the scans or run them into separate --out folders")
    return names


def largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def outputs_for(case: str, organs: Sequence[str], opts: PredictOptions) -> list[str]:
    names = [f"{case}_{o}.nii.gz" for o in organs]
    if len(organs) > 1:
        names.append(f"{case}_labels.nii.gz")
    if opts.save_prob:
        names += [f"{case}_{o}_prob.nii.gz" for o in organs]
    if opts.preview:
        names.append(f"{case}_preview.png")
    return names


def predict_scan(engine, path: Path, out: Path, opts: PredictOptions, case: str | None = None) -> dict:
    """Segment one scan with an open engine; returns (and writes) its report."""
    from edgeseg.runtime.preprocess import mask_to_input_grid, preprocess_scan, to_input_grid

    case = case or case_names([path])[0]
    report_path, marker = out / f"{case}.json", out / f"{case}.partial"
    mine = marker.exists()
    force = opts.force or mine  # a marker means an edgeseg run began this case: its files are ours to redo
    if not force:
        clash = [n for n in outputs_for(case, engine.organs, opts) if (out / n).exists()]
        if clash:
            raise InputError(f"outputs already exist: {', '.join(clash)}", path=out, fix="pass --force to overwrite them")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("edgeseg predict started this case; it is incomplete until its report exists\n")
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    scan = load_scan(path)
    t["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    prepared = preprocess_scan(scan, engine.preprocess)
    t["preprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stats: dict = {}
    probs = engine.probabilities(prepared.image[None], overlap=opts.overlap, batch_size=opts.sw_batch, stats=stats)
    t["inference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    voxel_ml = abs(float(np.linalg.det(scan.affine[:3, :3]))) / 1000.0
    masks, volumes = {}, {}
    for organ, prob in zip(engine.organs, probs):
        on_model = prob >= opts.threshold
        if opts.lcc:
            on_model = largest_component(on_model)
        masks[organ] = mask_to_input_grid(on_model.astype(np.float32), prepared.transform)
        volumes[organ] = round(float(masks[organ].sum()) * voxel_ml, 2)
    labels = None
    if len(engine.organs) > 1:  # one label per voxel: the most probable organ above the threshold
        best = np.argmax(probs, axis=0)
        fg = np.max(probs, axis=0) >= opts.threshold
        labels_model = np.where(fg, best + 1, 0).astype(np.float32)
        labels = to_input_grid(labels_model, prepared.transform, order=0).astype(np.uint8)
    t["postprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    written = []
    for organ, mask in masks.items():
        written.append(save_like(mask, scan, out / f"{case}_{organ}.nii.gz", force=force))
        if opts.save_prob:
            prob_in = to_input_grid(probs[engine.organs.index(organ)], prepared.transform, order=1).astype(np.float32)
            written.append(save_like(prob_in, scan, out / f"{case}_{organ}_prob.nii.gz", force=force))
    if labels is not None:
        written.append(save_like(labels, scan, out / f"{case}_labels.nii.gz", force=force))
    if opts.preview:
        from edgeseg.runtime.png import write_preview

        written.append(write_preview(out / f"{case}_preview.png", scan.data, scan.affine,
                                     {o: m > 0 for o, m in masks.items()}, force=force))
    t["write"] = time.perf_counter() - t0

    report = {
        "case": case, "input": str(path.resolve()), "shape": list(scan.shape),
        "spacing_mm": [round(s, 4) for s in scan.spacing], "model_grid": list(prepared.transform.model_shape),
        "engine": str(engine.folder), "ran": engine.ran, "organs": list(engine.organs),
        "volume_ml": volumes, "windows": {k: stats.get(k) for k in ("windows", "run", "skipped", "batches")},
        "seconds": {k: round(v, 3) for k, v in t.items()}, "total_seconds": round(sum(t.values()), 3),
        "peak_rss_gib": peak_rss_gib(), "options": asdict(opts), "outputs": [p.name for p in written],
    }
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n", force=True)
    marker.unlink()
    return report


def predict_many(engine, inputs: Sequence[str | Path], out: str | Path, opts: PredictOptions, *,
                 progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Segment every input with one loaded engine; cases with a report are skipped unless `force`."""
    out = Path(out)
    scans = collect_inputs(inputs)
    reports = []
    for i, (path, case) in enumerate(zip(scans, case_names(scans))):
        done = out / f"{case}.json"
        if done.exists() and not opts.force and not (out / f"{case}.partial").exists():
            log(f"{case}: already segmented ({done.name}); skipped (--force to redo)")
            reports.append({"case": case, "skipped": True, "report": str(done)})
        else:
            r = predict_scan(engine, path, out, opts, case)
            vols = ", ".join(f"{o} {v:.1f} mL" for o, v in r["volume_ml"].items())
            log(f"{case}: {vols}; {r['total_seconds']:.1f} s ({r['ran']['backend']} {r['ran']['precision']}), "
                f"{r['windows']['run']} windows")
            reports.append(r)
        if progress:
            progress(i + 1, len(scans))
    return reports

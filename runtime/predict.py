"""Segment new scans NIfTI to NIfTI with a fused engine (trunk + adapters, one pass per scan).

Per scan: read, preprocess (the same code as caching), sliding window with Gaussian blending,
threshold, optional largest-connected-component clean-up, back to the scan's own grid, write
`<case>_<organ>.nii.gz` (uint8, the input's shape and header geometry), optionally the probability
maps, a multi-label map when the engine has several organs, a preview PNG, and `<case>.json`: what
ran, time per stage, windows, organ volumes in mL, peak memory. The report is written last and a
`<case>.partial` marker first, so a crashed run resumes: a case with a report is skipped, a case
with a marker is redone, and outputs that neither edgeseg run made are not overwritten without --force.

Faults: the output folder is locked for the run (`edgeseg.runtime.lock`: a second run into it is
refused); a case that fails or is interrupted (Ctrl-C, disk full) removes the outputs it had
written and its marker, so nothing of it is left; a run killed outright leaves its marker (and
maybe a hidden temporary), and the next run redoes the case and removes the temporaries. Before
any voxel is read, the memory the case needs is estimated from its header (`estimate_memory`) and
a scan beyond the budget (`max_memory_gib`, else the memory available now) is refused with the
number needed. A 4D series is segmented one volume at a time (`volume`). See docs/faults.md.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.atomic import (refuse_link, remove_stale_temporaries, unlink_own, write_small_text,
                                    write_text_atomic)
from edgeseg.runtime.errors import InputError, ResourceError, user_facing_os_errors
from edgeseg.runtime.host import available_memory, available_memory_bytes, current_rss_gib, peak_rss_gib
from edgeseg.runtime.lock import output_lock
from edgeseg.runtime.nifti import is_nifti_path, load_scan, open_nifti, save_like, scan_geometry

GIB = 2**30


MAX_MEMORY_GIB = 1 << 20  # 1 PiB: anything larger is a typo, not a budget


@dataclass(frozen=True)
class PredictOptions:
    overlap: float = 0.25
    sw_batch: int = 1
    threshold: float = 0.5
    lcc: bool = False  # keep only each organ's largest connected component
    save_prob: bool = False
    preview: bool = False
    force: bool = False
    volume: int | None = None  # which volume of 4D series to segment (a 4D scan without it is refused)
    max_memory_gib: float | None = None  # memory budget of the whole process; None: what is available now
    reuse_blank: bool = True  # run the graph once for all pure-air windows (exact; see Engine.probabilities)
    # read and preprocess the next scan while this one infers: "auto" does it when the engine runs on a GPU
    # (the CPU is idle during inference); on a CPU backend inference already uses every core
    prefetch: str = "auto"
    hu_check: bool = True  # refuse intensities that cannot be Hounsfield units (nifti.check_hounsfield)

    def __post_init__(self) -> None:
        if self.volume is not None and (isinstance(self.volume, bool) or not isinstance(self.volume, int)
                                        or self.volume < 0):
            raise InputError(f"--volume {self.volume!r} must be a whole number >= 0", fix="e.g. --volume 0")
        if self.max_memory_gib is not None and not (isinstance(self.max_memory_gib, (int, float))
                                                    and math.isfinite(self.max_memory_gib)
                                                    and 0 < self.max_memory_gib <= MAX_MEMORY_GIB):
            raise InputError(f"--max-memory {self.max_memory_gib!r} must be a positive number of GiB, at most "
                             f"{MAX_MEMORY_GIB:,}", fix="e.g. --max-memory 8")
        if isinstance(self.overlap, (int, float)) and not isinstance(self.overlap, bool) and 0.75 < self.overlap < 1:
            factor = (0.5 / (1 - self.overlap)) ** 3
            raise InputError(f"--overlap {self.overlap:g} runs about {factor:.0f}x the windows of --overlap 0.5 for "
                             "no measurable gain", fix="use --overlap 0.25 (the default) to 0.5; at most 0.75")
        if self.prefetch not in ("auto", "on", "off"):
            raise InputError(f"--prefetch {self.prefetch!r} must be auto, on or off", fix="e.g. --prefetch auto")


REPORT_KIND = "edgeseg-predict-report"
# Options that change what a case's outputs hold: a report made under others is redone, never kept.
OUTPUT_OPTIONS = ("overlap", "threshold", "lcc", "save_prob", "preview", "volume", "hu_check")
_LEGACY_REPORT_KEYS = {"case", "engine", "ran", "volume_ml", "options", "outputs"}


def made_with(engine, path: Path, opts: PredictOptions) -> dict:
    """What a case's outputs depend on: the engine (manifest hash, graph, backend), the options, the input file."""
    st = Path(path).stat()
    ran = getattr(engine, "ran", None) or {}
    return {"engine_manifest_sha256": getattr(engine, "manifest_hash", None),
            "graph": ran.get("graph", ran.get("precision")), "backend": ran.get("backend"),
            "options": {k: getattr(opts, k) for k in OUTPUT_OPTIONS},
            "input": {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}}


def read_report(path: Path) -> dict | None:
    """The edgeseg report at `path`, None when there is none; a file edgeseg did not write is refused.

    A report is recognised by its content, never by its name alone: a BIDS sidecar `sub-01_ct.json` beside
    `sub-01_ct.nii.gz` is the user's, and edgeseg neither skips the case because of it nor overwrites it.
    """
    refuse_link(path)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = None
    if isinstance(report, dict) and (report.get("kind") == REPORT_KIND or _LEGACY_REPORT_KEYS <= set(report)):
        return report
    raise InputError("exists and is not an edgeseg report (another tool's file, e.g. a BIDS sidecar): edgeseg "
                     "never skips a case for it, nor overwrites or deletes it, even with --force", path=path,
                     fix="write the outputs to another folder (--out), away from the scans and their sidecars")


def why_redo(report: dict, now: dict) -> str | None:
    """Why a case with this report must be segmented again under `now` (None: its outputs still hold)."""
    before = report.get("made_with")
    if not isinstance(before, dict):
        return "its report does not record the engine and options that made it"
    diffs = []
    for key, label in (("engine_manifest_sha256", "another engine"), ("graph", "another graph precision"),
                       ("backend", "another backend"), ("input", "the input file changed")):
        if before.get(key) != now.get(key):
            diffs.append(label)
    old, new = before.get("options") or {}, now["options"]
    diffs += [f"--{k.replace('_', '-')} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    return ", ".join(diffs) or None


def check_out_folder(out: Path, inputs: Sequence[str | Path], scans: Sequence[Path]) -> None:
    """Refuse an output folder that is an input folder (or inside one), or the folder of an input scan:
    a second run would segment its own masks, and a report could land on a sidecar's name."""
    o = Path(out).resolve()
    folders = [Path(i).resolve() for i in inputs if Path(i).is_dir()]
    for f in folders:
        if o == f or f in o.parents:
            raise InputError(f"the output folder is {'the' if o == f else 'inside the'} input folder {f}", path=out,
                             fix="write the outputs to a folder outside the inputs (--out)")
    for p in scans:
        if o == p.resolve().parent:
            raise InputError(f"the output folder is the folder of the input scan {p.name}", path=out,
                             fix="write the outputs to a folder of their own (--out)")


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


def estimate_memory(input_shape, model_shape, n_organs: int, window, *, sw_batch: int = 1,
                    input_itemsize: int = 4, save_prob: bool = False) -> dict[str, int]:
    """Peak bytes of the arrays one case allocates, per stage, and their maximum (`peak`).

    Follows what `predict_scan` holds at each stage: the scan as float32 (and its raw voxels while
    they are converted), the model-grid image and its resampling, the sliding window's accumulators
    (one float32 map per organ, one weight map) and their concatenation into the probabilities, a
    batch of windows in and out, and the masks on the way back to the scan's grid (the multi-label
    map's int64 argmax included). The backend's own memory (weights, one batch of activations) is
    not in it: it is already resident when the check runs, and is counted there.
    """
    n_in, n_m = int(np.prod(input_shape)), int(np.prod(model_shape))
    o, f4 = int(n_organs), 4
    win = int(np.prod(window))
    scan = n_in * f4
    # a batch in and out, per-output scratch, and the Gaussian map (float64 while it is made, then float32)
    windows = sw_batch * win * f4 * (1 + o) + o * win * f4 + win * (8 + f4 + f4)
    # per organ: two bool masks (this organ's and the last one's), int32 components or the float copy,
    # float back on the scan grid and its contiguous copy; labels: int64 argmax, float32 max, bool, int64
    # where and its int64 operand, then float32, while the last organ's bool mask is still held
    post_organ = n_m * (2 + f4 + f4) + n_in * (f4 + f4 + 1)
    post_labels = n_m * (1 + 8 + f4 + 1 + 8 + 8) + n_in * (f4 + f4 + 1) if o > 1 else 0
    post_prob = n_in * (f4 + f4) if save_prob else 0
    stages = {
        "read": n_in * (f4 + int(input_itemsize) + 8),  # raw voxels, float64 while scl_slope is applied, float32
        "preprocess": scan + n_m * 2 * f4,
        "inference": scan + n_m * f4 * max(1 + 2 * o, 2 + o) + windows,
        "postprocess": scan + n_m * f4 * (1 + o) + o * n_in + max(post_organ, post_labels, post_prob),
    }
    return {**stages, "peak": max(stages.values())}


def _case_estimate(engine, path: Path, opts: PredictOptions):
    """(input shape, grid transform, `estimate_memory` of the case), from the header alone."""
    from edgeseg.runtime.preprocess import plan_grid

    shape, affine = scan_geometry(path, volume=opts.volume)
    t = plan_grid(shape, affine, engine.preprocess)
    itemsize = int(open_nifti(path).get_data_dtype().itemsize)
    est = estimate_memory(shape, t.model_shape, len(engine.organs), engine.preprocess.window,
                          sw_batch=opts.sw_batch, input_itemsize=itemsize, save_prob=opts.save_prob)
    return shape, t, est


def prefetch_fits(engine, current: Path, following: Path, opts: PredictOptions) -> bool:
    """Whether the next scan, read and preprocessed, fits beside this one's peak in the memory budget."""
    try:
        peak = _case_estimate(engine, current, opts)[2]["peak"] + _case_estimate(engine, following, opts)[2]["preprocess"]
    except Exception:  # a header that cannot be read: no prefetch; the case reports its own error in its turn
        return False
    resident = int(current_rss_gib() * GIB)
    if opts.max_memory_gib is not None:
        return resident + peak <= opts.max_memory_gib * GIB
    available = available_memory_bytes()
    return available is None or peak <= available


def load_and_prepare(engine, path: Path, opts: PredictOptions):
    """Read and preprocess one scan: (scan, prepared, {"read": s, "preprocess": s})."""
    from edgeseg.runtime.preprocess import preprocess_scan

    t0 = time.perf_counter()
    scan = load_scan(path, volume=opts.volume, hu_check=opts.hu_check)
    t1 = time.perf_counter()
    prepared = preprocess_scan(scan, engine.preprocess)
    return scan, prepared, {"read": t1 - t0, "preprocess": time.perf_counter() - t1}


def check_memory(engine, path: Path, opts: PredictOptions) -> dict:
    """Refuse a scan whose case would not fit the memory budget, before any voxel is read; return the numbers.

    Budget: `opts.max_memory_gib` for the whole process, or (when unset) the memory available now on
    top of what the process already holds. The process's resident memory now (engine loaded) plus the
    case's estimated peak must fit.
    """
    shape, t, est = _case_estimate(engine, path, opts)
    resident = int(current_rss_gib() * GIB)
    need = resident + est["peak"]
    if opts.max_memory_gib is not None:
        budget, source = int(opts.max_memory_gib * GIB), f"--max-memory {opts.max_memory_gib:g}"
    else:
        available, limit = available_memory()
        budget = None if available is None else resident + available
        source = (f"the {(available or 0) / GIB:.1f} GiB this process can still take now ({limit}; no --max-memory "
                  "given)")
    info = {"input_shape": list(shape), "model_shape": list(t.model_shape), "estimated_peak_gib": round(est["peak"] / GIB, 3),
            "resident_gib": round(resident / GIB, 3), "budget_gib": None if budget is None else round(budget / GIB, 3)}
    if budget is not None and need > budget:
        need_gib = math.ceil(need / GIB * 10) / 10
        raise ResourceError(
            f"needs about {need_gib:.1f} GiB of memory: {est['peak'] / GIB:.2f} GiB for this scan (shape "
            f"{'x'.join(map(str, shape))}, model grid {'x'.join(map(str, t.model_shape))} at "
            f"{'x'.join(f'{v:g}' for v in engine.preprocess.spacing)} mm, {len(engine.organs)} organ(s)) on top of the "
            f"{resident / GIB:.2f} GiB this run holds already; over the budget of {source}; nothing was written",
            path=path,
            fix=f"run it with --max-memory {need_gib:.1f} (or more) on a machine with that much free memory, or crop "
                "the scan to the region of interest first (a large field of view or an unusual spacing makes the "
                "model grid large)")
    return info


def check_engine_input(engine) -> None:
    """Refuse an engine whose graph takes another window than its manifest says, before any scan is read."""
    inputs = getattr(getattr(engine, "backend", None), "inputs", None) or ()
    if not inputs:
        return
    shape = tuple(inputs[0].shape)
    want = tuple(int(w) for w in engine.window)
    if len(shape) != 5 or any(s is not None and s != w for s, w in zip(shape[2:], want)):
        got = tuple("N" if s is None else s for s in shape)
        raise InputError(
            f"its graph takes input {inputs[0].name!r} of shape {got}, but its manifest's window is {want} "
            "(the graph was replaced or exported for another spec)", path=getattr(engine, "folder", None),
            fix="fuse the engine again from its trunk and adapters (edgeseg fuse TRUNK ADAPTER... --out DIR)")


def _clean_up_case(paths: Sequence[Path]) -> None:
    """Remove a failed attempt's files, best effort (the error that stopped the case is what gets reported)."""
    for p in paths:
        try:
            unlink_own(p)  # a link at one of our names is refused, not deleted
        except (OSError, InputError):
            pass


def predict_scan(engine, path: Path, out: Path, opts: PredictOptions, case: str | None = None,
                 prefetched=None) -> dict:
    """Segment one scan with an open engine; returns (and writes) its report.

    prefetched: (memory check, future of `load_and_prepare`) when `predict_many` read it ahead.
    """
    case = case or case_names([path])[0]
    report_path, marker = out / f"{case}.json", out / f"{case}.partial"
    for p in (marker, report_path, *(out / n for n in outputs_for(case, engine.organs, opts))):
        refuse_link(p)  # before anything is read or written: never through a link someone planted
    read_report(report_path)  # a file of that name that is not ours: refused, even with --force
    mine = marker.exists()
    force = opts.force or mine  # a marker means an edgeseg run began this case: its files are ours to redo
    names = outputs_for(case, engine.organs, opts)
    if not force:
        clash = [n for n in names if (out / n).exists()]
        if clash:
            raise InputError(f"outputs already exist: {', '.join(clash)}", path=out, fix="pass --force to overwrite them")
    # from the header: refused before anything is read or written (a prefetched case was checked before its read)
    memory = prefetched[0] if prefetched is not None else check_memory(engine, path, opts)
    written: list[Path] = []
    with user_facing_os_errors(marker, doing="writing the case marker"):
        out.mkdir(parents=True, exist_ok=True)
        write_small_text(marker, "edgeseg predict started this case; it is incomplete until its report exists\n")
    try:
        remove_stale_temporaries([out / n for n in names] + [report_path])  # what a killed run left
        unlink_own(report_path)  # a redone case is not complete until its new report exists
        report = _run_case(engine, path, out, opts, case, force, written, memory,
                           None if prefetched is None else prefetched[1])
        write_text_atomic(report_path, json.dumps(report, indent=2) + "\n", force=True)
    except BaseException:
        # Ctrl-C, disk full, a bad scan: remove what this attempt wrote (and, when an earlier edgeseg run had
        # begun the case, what that one left), then the marker. A user's file it did not overwrite stays.
        _clean_up_case([*written, *([out / n for n in names] if mine else []), marker])
        raise
    unlink_own(marker)
    return report


def _run_case(engine, path: Path, out: Path, opts: PredictOptions, case: str, force: bool, written: list[Path],
              memory: dict, future=None) -> dict:
    from edgeseg.runtime.preprocess import mask_to_input_grid, to_input_grid

    t0 = time.perf_counter()
    if future is not None:  # read ahead while the previous case ran; waiting for it is what it still costs
        scan, prepared, t = future.result()
        waited = time.perf_counter() - t0
    else:
        scan, prepared, t = load_and_prepare(engine, path, opts)
        waited = None

    t0 = time.perf_counter()
    stats: dict = {}
    probs = engine.probabilities(prepared.image[None], overlap=opts.overlap, batch_size=opts.sw_batch, stats=stats,
                                 reuse_blank=opts.reuse_blank)
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

    return {
        "kind": REPORT_KIND, "made_with": made_with(engine, path, opts),
        "case": case, "input": str(path.resolve()), "volume": opts.volume, "shape": list(scan.shape),
        "spacing_mm": [round(s, 4) for s in scan.spacing], "model_grid": list(prepared.transform.model_shape),
        "engine": str(engine.folder), "ran": engine.ran, "organs": list(engine.organs),
        "volume_ml": volumes, "windows": {k: stats.get(k) for k in ("windows", "run", "blank", "skipped", "batches")},
        "seconds": {k: round(v, 3) for k, v in t.items()}, "total_seconds": round(sum(t.values()), 3),
        "prefetched": future is not None, "prefetch_wait_seconds": None if waited is None else round(waited, 3),
        "peak_rss_gib": peak_rss_gib(), "memory": memory, "options": asdict(opts),
        "outputs": [p.name for p in written],
    }


def predict_many(engine, inputs: Sequence[str | Path], out: str | Path, opts: PredictOptions, *,
                 progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = lambda m: None,
                 locked: bool = False) -> list[dict]:
    """Segment every input with one loaded engine; cases with a report are skipped unless `force`.

    The output folder is locked for the whole run: a second run into it is refused (`locked`: the caller
    holds that lock already, as `edgeseg predict` does, taking it before the engine loads).
    """
    out = Path(out)
    scans = collect_inputs(inputs)
    check_out_folder(out, inputs, scans)
    check_engine_input(engine)
    if locked:
        return _predict_all(engine, scans, out, opts, progress, log)
    with output_lock(out, "edgeseg predict"):
        return _predict_all(engine, scans, out, opts, progress, log)


def _predict_all(engine, scans: list[Path], out: Path, opts: PredictOptions,
                 progress: Callable[[int, int], None] | None, log: Callable[[str], None]) -> list[dict]:
    names = case_names(scans)
    todo, redo = [], {}
    for i, (path, case) in enumerate(zip(scans, names)):
        report = read_report(out / f"{case}.json")  # a file that is not ours is refused here, before any work
        if opts.force or report is None or (out / f"{case}.partial").exists():
            todo.append(i)
        elif (why := why_redo(report, made_with(engine, path, opts))) is not None:
            todo.append(i)
            redo[i] = why
            log(f"{case}: segmented again ({why}); its earlier outputs are replaced")
    ahead = _use_prefetch(engine, opts) and len(todo) > 1
    pool = None
    if ahead:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeseg-prefetch")
    reports, pending = [], None  # pending: (index, (memory, future)) of the case read ahead
    try:
        for i, (path, case) in enumerate(zip(scans, names)):
            if i not in todo:
                log(f"{case}: already segmented ({case}.json); skipped (--force to redo)")
                reports.append({"case": case, "skipped": True, "report": str(out / f"{case}.json")})
            else:
                mine = pending[1] if pending is not None and pending[0] == i else None
                pending = None
                nxt = next((j for j in todo if j > i), None)
                if pool is not None and nxt is not None and prefetch_fits(engine, path, scans[nxt], opts):
                    try:  # checked now, before its read; a refusal is raised in its own turn instead
                        memory = check_memory(engine, scans[nxt], opts)
                    except (InputError, ResourceError):
                        memory = None
                    if memory is not None:
                        pending = (nxt, (memory, pool.submit(load_and_prepare, engine, scans[nxt], opts)))
                r = predict_scan(engine, path, out, opts if i not in redo else replace(opts, force=True), case,
                                 prefetched=mine)
                if i in redo:
                    r["redone_because"] = redo[i]
                vols = ", ".join(f"{o} {v:.1f} mL" for o, v in r["volume_ml"].items())
                w = r["windows"]
                blank = f" ({w['blank']} more of pure air: one run for all)" if w.get("blank") else ""
                log(f"{case}: {vols}; {r['total_seconds']:.1f} s ({r['ran']['backend']} {r['ran']['precision']}), "
                    f"{w['run']} windows{blank}" + (", read ahead" if r.get("prefetched") else ""))
                reports.append(r)
            if progress:
                progress(i + 1, len(scans))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # a read in flight ends before we return or raise
    return reports


def _use_prefetch(engine, opts: PredictOptions) -> bool:
    if opts.prefetch != "auto":
        return opts.prefetch == "on"
    return bool(getattr(engine, "on_gpu", False))  # OpenedArtifact.on_gpu: the backend's typed device

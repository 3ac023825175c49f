"""Running one planned case: read, preprocess, infer, post-process, write, report.

`run_case(engine, plan, opts)` is the unit of work that a loop over cases hands out
(`predict_many`'s loop, and each actor of a cohort on Ray: `ray_loop.CasePredictor`). It holds the case against the memory budget, writes `<case>.partial` first
and `<case>.json` (the report, returned too) last, so a crashed run resumes: a case with a report
is done, a case with a marker is redone. A case that fails or is interrupted (Ctrl-C, disk full)
removes the outputs it had written and its marker, so nothing of it is left; when an earlier
edgeseg run had begun it (`plan.resumed`), what that run left goes too. A user's file that it did
not overwrite stays.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from edgeseg.runtime.atomic import remove_stale_temporaries, unlink_own, write_small_text, write_text_atomic
from edgeseg.runtime.dicom.series import DicomSeries
from edgeseg.runtime.errors import InputError, user_facing_os_errors
from edgeseg.runtime.host import peak_rss_gib
from edgeseg.runtime.nifti import load_scan, save_like
from edgeseg.runtime.predict.options import PredictOptions
from edgeseg.runtime.predict.plan import CasePlan, case_names, check_memory, plan_case
from edgeseg.runtime.predict.postprocess import Segmentation, segment
from edgeseg.runtime.predict.report import REPORT_KIND, made_with


class Loaded(NamedTuple):
    """A scan read and preprocessed, and the seconds each took."""

    scan: object  # edgeseg.runtime.nifti.Scan
    prepared: object  # edgeseg.runtime.preprocess.Preprocessed: the model-grid image and the way back
    seconds: dict[str, float]  # {"read": s, "preprocess": s}


def load_and_prepare(engine, path: Path | DicomSeries, opts: PredictOptions) -> Loaded:
    """Read (a NIfTI file or a DICOM series) and preprocess one scan (the same code as caching)."""
    from edgeseg.runtime.preprocess import preprocess_scan

    t0 = time.perf_counter()
    if isinstance(path, DicomSeries):
        from edgeseg.runtime.dicom.read import load_series

        scan = load_series(path, hu_check=opts.hu_check)
    else:
        scan = load_scan(path, volume=opts.volume, hu_check=opts.hu_check)
    t1 = time.perf_counter()
    prepared = preprocess_scan(scan, engine.preprocess)
    return Loaded(scan, prepared, {"read": t1 - t0, "preprocess": time.perf_counter() - t1})


@dataclass(frozen=True)
class ReadAhead:
    """A case being read and preprocessed in the background while the one before it runs."""

    memory: dict  # its `check_memory` numbers, checked before its read began
    future: Future  # of `load_and_prepare`


def run_case(engine, plan: CasePlan, opts: PredictOptions, read_ahead: ReadAhead | None = None) -> dict:
    """Segment one planned case with an open engine; returns (and writes) its report.

    read_ahead: the case's read already under way (`predict_many` starts it while the previous case infers).
    A redo (`plan.redo_because`) replaces the case's own outputs: its report records it as --force.
    """
    if plan.redo_because is not None:
        opts = replace(opts, force=True)
    # refused before anything is written (a case read ahead was checked before its read)
    memory = read_ahead.memory if read_ahead is not None else check_memory(plan, engine, opts)
    written: list[Path] = []
    with user_facing_os_errors(plan.marker, doing="writing the case marker"):
        plan.out.mkdir(parents=True, exist_ok=True)
        write_small_text(plan.marker, "edgeseg predict started this case; it is incomplete until its report exists\n")
    try:
        remove_stale_temporaries([*plan.output_paths(), plan.report_path])  # what a killed run left
        unlink_own(plan.report_path)  # a redone case is not complete until its new report exists
        t0 = time.perf_counter()
        if read_ahead is not None:  # read while the previous case ran; waiting for it is what it still costs
            scan, prepared, seconds = read_ahead.future.result()
            waited: float | None = time.perf_counter() - t0
        else:
            scan, prepared, seconds = load_and_prepare(engine, plan.path, opts)
            waited = None
        t = dict(seconds)

        t0 = time.perf_counter()
        stats: dict = {}
        probs = engine.probabilities(prepared.image[None], overlap=opts.overlap, batch_size=opts.sw_batch,
                                     stats=stats, reuse_blank=opts.reuse_blank)
        t["inference"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        voxel_ml = abs(float(np.linalg.det(scan.affine[:3, :3]))) / 1000.0
        seg = segment(probs, engine.organs, prepared.transform, voxel_ml, threshold=opts.threshold, lcc=opts.lcc)
        t["postprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for p in _write_outputs(plan, opts, engine, scan, prepared, probs, seg):
            written.append(p)  # one by one: a failure part-way removes exactly what was written
        t["write"] = time.perf_counter() - t0

        dicom = isinstance(plan.path, DicomSeries)
        report = {
            "kind": REPORT_KIND, "made_with": made_with(engine, plan.path, opts),
            "case": plan.case, "input": str(plan.path.path.resolve() if dicom else plan.path.resolve()),
            "volume": opts.volume, "shape": list(scan.shape),
            "spacing_mm": [round(s, 4) for s in scan.spacing], "model_grid": list(prepared.transform.model_shape),
            "engine": str(engine.folder), "ran": engine.ran, "host": socket.gethostname(), "organs": list(engine.organs),
            "volume_ml": seg.volume_ml,
            # "skipped": 0 since the stitcher lost its unused skip; kept so the report's fields stay as they were
            "windows": {"windows": stats.get("windows"), "run": stats.get("run"), "blank": stats.get("blank"),
                        "skipped": 0, "batches": stats.get("batches")},
            "seconds": {k: round(v, 3) for k, v in t.items()}, "total_seconds": round(sum(t.values()), 3),
            "prefetched": read_ahead is not None,
            "prefetch_wait_seconds": None if waited is None else round(waited, 3),
            "peak_rss_gib": peak_rss_gib(), "memory": memory, "options": asdict(opts),
            "outputs": [p.name for p in written],
        }
        if dicom:  # which series: its UIDs (the report never holds a patient attribute)
            report["dicom"] = plan.path.identity()
        if plan.redo_because is not None:  # a rerun under other options or another engine: the report says why
            report["redone_because"] = plan.redo_because
        write_text_atomic(plan.report_path, json.dumps(report, indent=2) + "\n", force=True)
    except BaseException:
        # Ctrl-C, disk full, a bad scan: remove what this attempt wrote (and, when an earlier edgeseg run had
        # begun the case, what that one left), then the marker. A user's file it did not overwrite stays.
        _clean_up_case([*written, *(plan.output_paths() if plan.resumed else []), plan.marker])
        raise
    unlink_own(plan.marker)
    return report


def _write_outputs(plan: CasePlan, opts: PredictOptions, engine, scan, prepared, probs: np.ndarray,
                   seg: Segmentation) -> Iterator[Path]:
    """Write the case's outputs on the scan's grid, yielding each file once it is complete."""
    from edgeseg.runtime.preprocess import to_input_grid

    out, case, force, organs = plan.out, plan.case, plan.force, engine.organs
    fmt = opts.output_format(isinstance(plan.path, DicomSeries))
    for organ, mask in seg.masks.items():
        if fmt != "dicom-seg":
            yield save_like(mask, scan, out / f"{case}_{organ}.nii.gz", force=force)
        if opts.save_prob:
            prob_in = to_input_grid(probs[organs.index(organ)], prepared.transform, order=1).astype(np.float32)
            yield save_like(prob_in, scan, out / f"{case}_{organ}_prob.nii.gz", force=force)
    if seg.labels is not None and fmt != "dicom-seg":
        yield save_like(seg.labels, scan, out / f"{case}_labels.nii.gz", force=force)
    if fmt != "nifti":  # the masks as one DICOM Segmentation of the source series, pixel-aligned with it
        from edgeseg import __version__
        from edgeseg.runtime.dicom.seg import write_seg

        yield write_seg(out / f"{case}_seg.dcm", plan.path, seg.masks, algorithm_version=__version__,
                        engine_hash=getattr(engine, "manifest_hash", None), force=force)
    if opts.preview:
        from edgeseg.runtime.png import write_preview

        yield write_preview(out / f"{case}_preview.png", scan.data, scan.affine,
                            {o: m > 0 for o, m in seg.masks.items()}, force=force)


def _clean_up_case(paths: Sequence[Path]) -> None:
    """Remove a failed attempt's files, best effort (the error that stopped the case is what gets reported)."""
    for p in paths:
        try:
            unlink_own(p)  # a link at one of our names is refused, not deleted
        except (OSError, InputError):
            pass


def predict_scan(engine, path: Path | DicomSeries, out: Path, opts: PredictOptions, case: str | None = None) -> dict:
    """Plan and segment one scan with an open engine; returns (and writes) its report.

    case: its output name (default: `case_names([path])`). No output lock and no engine window check:
    `predict_many` does both for a run; this is the single-case entry (benchmarks call it per process).
    """
    path = path if isinstance(path, DicomSeries) else Path(path)
    plan = plan_case(engine, path, case or case_names([path])[0], Path(out), opts)
    return run_case(engine, plan, opts)

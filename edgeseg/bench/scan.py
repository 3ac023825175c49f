"""`edgeseg bench scan`: one engine end to end per scan, stage by stage, and how it scales with scan size.

Each scan is segmented in its own worker process (`edgeseg.bench.runner`) by the same code as
`edgeseg predict` (`edgeseg.runtime.predict.predict_scan`): read, preprocess, inference (sliding
window), post-process, write, each timed, with the engine's load time and the process's peak RSS
(and peak GPU memory where nvidia-smi sees a GPU). Scans: the shipped real CT, any scans given, and
seeded phantoms at several voxel spacings (four by default, from 3 mm to a 512 x 512 in-plane
clinical grid), which give the scaling curve of time and peak memory against the number of voxels.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from edgeseg.bench.stats import linear_fit
from edgeseg.runtime.errors import InputError

SCHEMA = "edgeseg.bench.scan/1"
STAGES = ("read", "preprocess", "inference", "postprocess", "write")
DEFAULT_SPACINGS: tuple[tuple[float, float, float], ...] = ((3.0, 3.0, 3.0), (2.0, 2.0, 2.0), (1.5, 1.5, 1.5),
                                                            (0.78, 0.78, 1.5))
DEFAULT_Z_RANGE = (-300.0, 150.0)  # mm: lower thorax to pelvis, every abdominal organ


def parse_spacing(text: str) -> tuple[float, float, float]:
    """'2' -> (2, 2, 2); '0.78,0.78,1.5' or '0.78x0.78x1.5' -> that."""
    try:
        values = [float(v) for v in re.split(r"[,x]", str(text).strip()) if v]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0:
        raise InputError(f"phantom spacing {text!r} is not one or three positive numbers (mm)",
                         fix="e.g. --phantom-spacing 2 or --phantom-spacing 0.78,0.78,1.5")
    return tuple(values)  # type: ignore[return-value]


def phantom_name(spacing: Sequence[float]) -> str:
    return "phantom-" + "x".join(f"{s:g}" for s in spacing) + "mm"


def make_phantom(folder: Path, spacing: Sequence[float], z_range: Sequence[float], seed: int = 0) -> Path:
    """A seeded phantom CT (ct.nii.gz only) at `spacing`, written once into `folder` and reused."""
    path = folder / "ct.nii.gz"
    if path.exists():
        return path
    import nibabel as nib
    import numpy as np

    from edgeseg.data.phantom import generate_case

    case = generate_case(seed, spacing=tuple(spacing), z_range=tuple(z_range), max_voxels=1_000_000_000)
    folder.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(case.ct, dtype=np.int16), case.affine)
    img.header.set_qform(case.affine, code=1)
    img.header.set_sform(case.affine, code=1)
    tmp = folder / "ct.tmp.nii.gz"
    nib.save(img, str(tmp))
    tmp.replace(path)
    return path


def measure_scan(job: dict) -> dict:
    """Worker side: open the engine, segment one scan, report stages, load time and peak RSS."""
    from edgeseg.runtime.engine import open_engine
    from edgeseg.runtime.host import peak_rss_gib
    from edgeseg.runtime.predict import PredictOptions, predict_scan

    t0 = time.perf_counter()
    engine = open_engine(job["engine"], backend=job.get("backend", "auto"), precision=job.get("precision"),
                         threads=job.get("threads"))
    open_s = time.perf_counter() - t0
    try:
        load_s = engine.backend.describe().load_seconds
        opts = PredictOptions(overlap=float(job.get("overlap", 0.25)), sw_batch=int(job.get("sw_batch", 1)), force=True,
                              reuse_blank=bool(job.get("reuse_blank", True)))
        report = predict_scan(engine, Path(job["scan"]), Path(job["out"]), opts, case=job["name"])
    finally:
        engine.close()
    shape, grid = report["shape"], report["model_grid"]
    return {"status": "ok", "ran": report["ran"], "shape": shape, "voxels": math.prod(shape), "model_grid": grid,
            "model_voxels": math.prod(grid), "spacing_mm": report.get("spacing_mm"), "windows": report.get("windows"),
            "seconds": report["seconds"], "total_seconds": report["total_seconds"], "open_s": round(open_s, 3),
            "load_s": None if load_s is None else round(load_s, 3), "peak_rss_gib": peak_rss_gib()}


def scaling(rows: Sequence[dict]) -> dict | None:
    """Least-squares lines of total time and peak RSS against millions of input voxels (rows that ran)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("voxels")]
    xs = [r["voxels"] / 1e6 for r in ok]
    t = linear_fit(xs, [r["total_seconds"] for r in ok])
    m = linear_fit(xs, [r["peak_rss_gib"] for r in ok])
    if t is None:
        return None
    return {"n_scans": len(ok), "seconds_per_mvoxel": round(t[0], 4), "seconds_at_zero": round(t[1], 3),
            "rss_gib_per_mvoxel": None if m is None else round(m[0], 5),
            "rss_gib_at_zero": None if m is None else round(m[1], 3)}


def bench_scan(engine: str | Path, scans: Sequence[str | Path] = (), *, real_ct: bool = True,
               spacings: Sequence[Sequence[float]] = DEFAULT_SPACINGS, z_range: Sequence[float] = DEFAULT_Z_RANGE,
               seed: int = 0, backend: str = "auto", precision: str | None = None, threads: int | None = None,
               overlap: float = 0.25, sw_batch: int = 1, reuse_blank: bool = True, workdir: str | Path | None = None,
               timeout: float | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Segment every scan in its own process; the result (schema `SCHEMA`) with one row per scan."""
    from edgeseg.assets import EXAMPLE_CT
    from edgeseg.bench.machine import describe, gpus, machine_tag
    from edgeseg.bench.runner import run_job
    from edgeseg.runtime.artifacts.engine import EngineManifest
    from edgeseg.runtime.manifest import library_versions

    engine = Path(engine)
    manifest = EngineManifest.from_folder(engine)
    for s in scans:
        if not Path(s).is_file():
            raise InputError("scan not found", path=s, fix="pass NIfTI files (.nii or .nii.gz)")
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="edgeseg-scan-bench-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[str, str, Path, list | None]] = []
    if real_ct:
        todo.append(("real_ct", "real_ct", EXAMPLE_CT, None))
    if scans:
        from edgeseg.runtime.predict import case_names

        todo += [(name, "given", Path(s), None) for name, s in zip(case_names([Path(s) for s in scans]), scans)]
    for sp in spacings:
        sp = tuple(float(v) for v in sp)
        name = phantom_name(sp)
        log(f"{name}: generating (seed {seed}, z {z_range[0]:g}..{z_range[1]:g} mm) ...")
        todo.append((name, "phantom", make_phantom(work / "phantoms" / name, sp, z_range, seed), list(sp)))
    if not todo:
        raise InputError("nothing to segment", fix="pass scans, keep the real CT, or give --phantom-spacing")
    has_gpu = bool(gpus())
    rows = []
    try:
        for name, source, path, spacing in todo:
            job = {"type": "scan", "engine": str(engine.resolve()), "scan": str(Path(path).resolve()), "name": name,
                   "backend": backend, "precision": precision, "threads": threads, "overlap": overlap,
                   "sw_batch": sw_batch, "reuse_blank": reuse_blank, "out": str(work / "pred" / name)}
            result = run_job(job, work / "jobs", f"scan-{name}", gpu=has_gpu, timeout=timeout)
            row = {"scan": name, "source": source, "path": str(path), "phantom_spacing_mm": spacing,
                   "status": result.get("status", "error"), "reason": result.get("reason")}
            row.update({k: v for k, v in result.items() if k not in ("status", "reason", "traceback")})
            rows.append(row)
            log(_line(row))
            shutil.rmtree(work / "pred" / name, ignore_errors=True)  # the masks are not the point: free the disk
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return {"schema": SCHEMA, "benchmark": "scan", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_tag(), "host": describe(), "libraries": library_versions(),
            "engine": {"folder": str(engine.resolve()), "organs": list(manifest.organs), "cut": manifest.cut,
                       "window": list(manifest.window), "feature_size": manifest.feature_size},
            "settings": {"backend": backend, "precision": precision, "threads": threads, "overlap": overlap,
                         "sw_batch": sw_batch, "reuse_blank": reuse_blank, "z_range_mm": list(z_range), "seed": seed, "timeout_s": timeout},
            "stages": list(STAGES), "rows": rows, "scaling": scaling(rows)}


def _line(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['scan']}: {row['status']}: {row['reason']}"
    stages = ", ".join(f"{k} {v:.2f}" for k, v in row["seconds"].items())
    w = row.get("windows") or {}
    blank = f" + {w['blank']} of pure air (one run)" if w.get("blank") else ""
    return (f"{row['scan']}: {row['voxels'] / 1e6:.1f} Mvoxels, {w.get('run')} windows{blank}, "
            f"{row['total_seconds']:.2f} s ({stages}), peak RSS {row['peak_rss_gib']} GiB")

"""DICOM read time against the NIfTI read of the same scan: a 512 x 512 x 300 CT as a series of 300 files and
as NIfTI (.nii.gz and .nii), read the way `edgeseg predict` reads each.

    .venv/bin/python benchmarks/dicom_read.py          # about 2 minutes on 2 cores, 0.6 GB under /tmp; alone

The scan is the shipped real CT resampled (trilinear) onto the 512 x 512 x 300 grid with seeded noise of
20 HU (so it compresses as a CT does, not as a smooth interpolation), rounded to whole HU, on a grid of
0.78 x 0.78 x 1.5 mm. It is written by edgeseg's own writers: the series by `runtime/dicom/write.py`
(uncompressed int16, RescaleIntercept -1024, one file per slice) and the NIfTI files by nibabel (int16).

Timed, each `--repeats` times after one untimed read (the page cache is warm: the files were just written;
this measures parsing and decoding, not the disk), DICOM and NIfTI interleaved:

* planning, from the headers alone: `find_series` (every file's header, the geometry checks) and the
  NIfTI `scan_geometry`;
* reading: `load_series` (pixels of a found series: per-slice rescale, HU check) and `load_scan`
  (float32 HU, the same checks), and the two together for DICOM (what a case costs from its folder).

The DICOM and NIfTI volumes are checked to be the same voxels on the same grid. Writes
benchmarks/results/<machine>/dicom_read.json (medians, min, max; sizes on disk; repository-relative
paths only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_tag, peak_rss_gib, write_result  # noqa: E402

SPACING = (0.78, 0.78, 1.5)


def synthesize(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The shipped real CT resampled onto `shape` (trilinear), with 20 HU of seeded noise, whole HU as int16; its
    RAS affine (SPACING, the real CT's orientation)."""
    import nibabel as nib
    from scipy.ndimage import zoom

    from edgeseg.assets import EXAMPLE_CT

    img = nib.load(str(EXAMPLE_CT))
    ct = np.asarray(img.get_fdata(dtype=np.float32))
    vol = zoom(ct, [s / n for s, n in zip(shape, ct.shape)], order=1, output=np.float32, grid_mode=True, mode="nearest")
    rng = np.random.default_rng(seed)
    for k in range(vol.shape[2]):  # slice by slice: no float64 copy of the volume
        vol[:, :, k] += 20.0 * rng.standard_normal(vol.shape[:2], dtype=np.float32)
    vol = np.clip(np.round(vol), -1024, 3071).astype(np.int16)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = img.affine[:3, 3]
    return vol, affine


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "runs": [round(v, 4) for v in values]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="512,512,300", help="columns,rows,slices of the scan (default 512,512,300)")
    ap.add_argument("--repeats", type=int, default=5, help="timed reads of each kind (after one untimed)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a new folder under /tmp, "
                                                                "deleted at the end)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results root (default benchmarks/results)")
    ap.add_argument("--name", default="dicom_read", help="result file name (default dicom_read)")
    args = ap.parse_args(argv)

    import nibabel as nib

    from edgeseg.runtime.dicom import find_series, load_series
    from edgeseg.runtime.dicom.write import write_series
    from edgeseg.runtime.host import host_description
    from edgeseg.runtime.manifest import library_versions
    from edgeseg.runtime.nifti import load_scan, scan_geometry

    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 3 or min(shape) < 3 or args.repeats < 1:
        ap.error("--shape needs three sides of at least 3, --repeats at least 1")
    keep = args.workdir is not None
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgeseg-dicom-read-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        vol, affine = synthesize(shape)
        series_dir, nii_gz, nii = work / "series", work / "ct.nii.gz", work / "ct.nii"
        for path in (nii_gz, nii):
            img = nib.Nifti1Image(vol, affine)
            img.header.set_qform(affine, code=1)
            img.header.set_sform(affine, code=1)
            img.header.set_slope_inter(1.0, 0.0)
            nib.save(img, str(path))
        if series_dir.exists():
            shutil.rmtree(series_dir)
        files = write_series(series_dir, vol, affine, series_number=1, description="dicom read benchmark",
                             uid_seed="edgeseg dicom_read benchmark")
        prepare = time.perf_counter() - t
        print(f"wrote {len(files)} DICOM files and the NIfTI files of a {'x'.join(map(str, shape))} scan in "
              f"{prepare:.1f} s", flush=True)

        (series,) = find_series(series_dir).series  # untimed warm-up of every path, and the equality check
        dicom_scan, nifti_scan = load_series(series), load_scan(nii_gz)
        same = bool(np.array_equal(dicom_scan.data, nifti_scan.data)
                    and np.allclose(dicom_scan.affine, nifti_scan.affine, atol=1e-4))
        load_scan(nii)
        del dicom_scan, nifti_scan

        runs: dict[str, list[float]] = {k: [] for k in ("dicom_plan", "dicom_read", "dicom_total", "nifti_gz_plan",
                                                         "nifti_gz_read", "nifti_plan", "nifti_read")}
        for r in range(args.repeats):
            plan = timed(lambda: find_series(series_dir))
            read = timed(lambda: load_series(series))
            runs["dicom_plan"].append(plan)
            runs["dicom_read"].append(read)
            runs["dicom_total"].append(plan + read)
            runs["nifti_gz_plan"].append(timed(lambda: scan_geometry(nii_gz)))
            runs["nifti_gz_read"].append(timed(lambda: load_scan(nii_gz)))
            runs["nifti_plan"].append(timed(lambda: scan_geometry(nii)))
            runs["nifti_read"].append(timed(lambda: load_scan(nii)))
            print(f"repeat {r + 1}/{args.repeats}: DICOM plan {plan:.3f} s + read {read:.3f} s; NIfTI .nii.gz read "
                  f"{runs['nifti_gz_read'][-1]:.3f} s, .nii read {runs['nifti_read'][-1]:.3f} s", flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        result = {
            "benchmark": "dicom_read", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_tag(), "host": host_description(), "libraries": {
                **library_versions(), **{m: _version(m) for m in ("pydicom", "highdicom")}},
            "command": f"python benchmarks/dicom_read.py --shape {args.shape} --repeats {args.repeats}",
            "scan": {"shape": list(shape), "spacing_mm": list(SPACING), "slices": shape[2], "files": len(files),
                     "source": "edgeseg/assets/example_ct_sm.nii.gz resampled (trilinear) + 20 HU seeded noise, int16",
                     "dicom": "uncompressed Explicit VR Little Endian, int16, RescaleIntercept -1024, one file per slice",
                     "bytes": {"dicom_series": int(sum(f.stat().st_size for f in files)),
                               "nifti_gz": nii_gz.stat().st_size, "nifti": nii.stat().st_size}},
            "same_voxels": same, "page_cache": "warm (files just written; one untimed read of each first)",
            "repeats": args.repeats, "seconds": {k: stats(v) for k, v in runs.items()},
            "ratios": {"dicom_read_vs_nifti_gz_read": round(med["dicom_read"] / med["nifti_gz_read"], 3),
                       "dicom_total_vs_nifti_gz_read": round(med["dicom_total"] / med["nifti_gz_read"], 3),
                       "dicom_read_vs_nifti_read": round(med["dicom_read"] / med["nifti_read"], 3)},
            "prepare_seconds": round(prepare, 1), "peak_rss_gib": peak_rss_gib(),
        }
        dest = write_result(args.name, result, root=args.results)
        print(f"DICOM: plan {med['dicom_plan']:.3f} s + read {med['dicom_read']:.3f} s; NIfTI .nii.gz read "
              f"{med['nifti_gz_read']:.3f} s, .nii read {med['nifti_read']:.3f} s (medians of {args.repeats}); "
              f"same voxels: {same}")
        print(f"wrote {dest}")
        return 0 if same else 1
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _version(module: str) -> str | None:
    from edgeseg.runtime.availability import module_version

    return module_version(module)


if __name__ == "__main__":
    sys.exit(main())

"""`edgeseg demo`: the whole pretrain-then-adapt story on the embedded default, in one output folder.

Stages: phantoms (K supports and held-out scans from the TARGET scanner, other patients than the
pretraining's) -> export the shipped phantom SwinUNETR's trunk (pre-decoder1 cut) -> cache the
supports' features for each organ -> adapt a decoder-block adapter per organ with `edgeseg adapt`'s
defaults -> fuse both into one engine -> predict the held-out phantoms and the real CT shipped with the
package -> Dice per organ and phantom, time per stage, peak memory, a preview PNG of the real CT -> the
real CT again as a DICOM series (written here, stable UIDs), segmented by the same engine into a DICOM-SEG
and NIfTI masks that must equal the NIfTI's (stage "dicom", when pydicom and highdicom are installed).

Two organs, the paper's two settings: one the foundation model was pretrained on, here on another
scanner (setting A), and one it never saw labelled (setting B). Everything lands under `out`;
`demo.json` records it.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.errors import InputError

# Setting A (a pretrained class on the other scanner) and setting B (never labelled in pretraining).
DEMO_ORGANS: tuple[str, ...] = ("kidney_left", "inferior_vena_cava")
# The pretraining used dataset seed 0: the demo's patients come from another one.
DEMO_DATA_SEED = 7001
# The DICOM copy of the real CT: its UIDs derive from this, so its case name and SEG path are the same every run.
DICOM_UID_SEED = "edgeseg demo: example_ct_sm as DICOM"


def run_demo(out: str | Path, *, checkpoint: str | Path | None = None, organs: Sequence[str] = DEMO_ORGANS, k: int = 5,
             n_heldout: int = 3, seed: int = 0, backend: str = "auto", threads: int | None = None, force: bool = False,
             log: Callable[[str], None] = print, stage: Callable[[str], None] = lambda name: None) -> dict:
    """Run every stage into `out` (refused if it holds a finished demo, unless `force`); returns the summary."""
    from edgeseg.assets import DEFAULT_MODEL, EXAMPLE_CT
    from edgeseg.features import CacheConfig, build_cache
    from edgeseg.data.phantom import ORGANS, TARGET, write_dataset
    from edgeseg.export.fuse import fuse
    from edgeseg.export.trunk import export_trunk
    from edgeseg.model.checkpoint import file_spec
    from edgeseg.runtime.atomic import write_text_atomic
    from edgeseg.runtime.engine import open_engine
    from edgeseg.runtime.host import host_description, peak_rss_gib
    from edgeseg.runtime.manifest import portable_path
    from edgeseg.runtime.nifti import load_scan
    from edgeseg.runtime.predict import PredictOptions, predict_many
    from edgeseg.train.adapt import AdaptConfig, adapt
    from edgeseg.train.losses import dice_score

    if str(backend).lower() == "torch":  # the predict stage runs the fused engine, which has no torch form
        raise InputError("--backend torch cannot run the demo's last stage: a fused engine has no torch form",
                         fix="use --backend auto, ort or openvino")
    organs = tuple(organs)
    unknown = [o for o in organs if o not in ORGANS]
    if unknown or not organs or len(set(organs)) != len(organs):
        raise InputError(f"organs {list(organs)}: each must be a phantom organ, once", fix=f"choose from {', '.join(ORGANS)}")
    out = Path(out)
    if (out / "demo.json").exists() and not force:
        raise InputError("already holds a finished demo", path=out, fix="pass --force to run it again there, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    model_path = Path(checkpoint or DEFAULT_MODEL)
    known = set(file_spec(model_path).class_names)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str):
        class _T:
            def __enter__(self):
                stage(name)
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                if exc[0] is None:
                    timings[name] = round(time.perf_counter() - self.t, 1)
                    log(f"[{name}] {timings[name]:.1f} s")
        return _T()

    # Scanner "target": another noise level, HU offset, phases and spacing than the model was pretrained on;
    # patients from another dataset seed than the pretraining's.
    with timed("phantoms"):
        support_dir, heldout_dir = out / "phantoms" / "support", out / "phantoms" / "heldout"
        write_dataset(support_dir, k, DEMO_DATA_SEED + seed, TARGET, z_range=(-200.0, 160.0), max_voxels=6_000_000,
                      force=True)
        write_dataset(heldout_dir, n_heldout, DEMO_DATA_SEED + 1000 + seed, TARGET, z_range=(-200.0, 160.0),
                      max_voxels=6_000_000, force=True)
        heldout = sorted(heldout_dir.glob("s*/ct.nii.gz"))
    setting = {o: ("A: pretrained on, other scanner" if o in known else "B: never labelled in pretraining") for o in organs}
    log(f"{k} support and {n_heldout} held-out TARGET phantoms; " + "; ".join(f"{o} ({v})" for o, v in setting.items()))

    with timed("export"):
        export_trunk(model_path, out / "trunk", cut="pre-decoder1", precisions=("fp32",), max_batch=1,
                     threads=threads, force=True, log=log)
    with timed("cache"):
        for organ in organs:
            build_cache(out / "trunk", support_dir, organ, out / "cache" / organ,
                        CacheConfig(k=k, seed=seed, backend=backend, threads=threads, force=True), log=log)
    adapted = {}
    with timed("adapt"):
        for organ in organs:
            config = AdaptConfig(adapter="decoder-block", seed=seed, threads=threads)  # `edgeseg adapt`'s defaults
            adapted[organ] = adapt(out / "cache" / organ, out / "adapter" / organ, config, force=True, log=log)
    with timed("fuse"):
        fuse(out / "trunk", [out / "adapter" / o for o in organs], out / "engine", precisions=("fp32",), force=True,
             threads=threads, log=log)

    with contextlib.ExitStack() as stack:
        with timed("predict"):
            opts = PredictOptions(force=True, preview=True)
            engine = stack.enter_context(open_engine(out / "engine", backend=backend, threads=threads))
            ran = engine.ran
            reports = predict_many(engine, heldout + [EXAMPLE_CT], out / "predictions", opts, log=log)
        dicom = None
        if dicom_available():
            with timed("dicom"):
                dicom = segment_dicom_copy(engine, EXAMPLE_CT, out / "dicom", out / "predictions",
                                           nifti_case=reports[-1]["case"], log=log)
        else:
            log("the DICOM step is skipped: it needs pip install 'edgeseg[dicom]'")
    dice: dict[str, dict[str, float]] = {}
    for organ in organs:
        dice[organ] = {}
        for path, report in zip(heldout, reports):
            ref = load_scan(path.parent / "segmentations" / f"{organ}.nii.gz", label=True).data
            pred = load_scan(out / "predictions" / f"{report['case']}_{organ}.nii.gz", label=True).data
            dice[organ][path.parent.name] = round(dice_score(pred, ref), 4)
    summary = {
        "kind": "demo", "organs": list(organs), "setting": setting, "k": k, "seed": seed,
        "data_seeds": {"support": DEMO_DATA_SEED + seed, "heldout": DEMO_DATA_SEED + 1000 + seed},
        "out": portable_path(out), "model": portable_path(model_path),
        "adapters": {o: {key: a.get(key) for key in ("adapter", "trainable_params", "steps", "kept_step", "wall_seconds",
                                                      "stopped", "heldout")} for o, a in adapted.items()},
        "ran": ran, "dice_heldout": dice,
        "dice_mean": {o: round(float(np.mean(list(d.values()))), 4) for o, d in dice.items()},
        "real_ct": {"report": portable_path(out / "predictions" / "example_ct_sm.json"),
                    "preview": portable_path(out / "predictions" / "example_ct_sm_preview.png"),
                    "volume_ml": reports[-1]["volume_ml"]},
        "real_ct_dicom": None if dicom is None else {
            **{key: portable_path(dicom[key]) for key in ("series", "seg", "report")},
            **{key: dicom[key] for key in ("case", "read_seconds", "volume_ml", "masks_equal_nifti")}},
        "seconds": timings, "total_seconds": round(time.perf_counter() - t_all, 1), "peak_rss_gib": peak_rss_gib(),
        "host": host_description(),
    }
    write_text_atomic(out / "demo.json", json.dumps(summary, indent=2) + "\n", force=True)
    return summary


def dicom_available() -> bool:
    """pydicom and highdicom are importable (the `edgeseg[dicom]` extra)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("pydicom", "highdicom"))


def segment_dicom_copy(engine, ct: Path, dicom_dir: Path, predictions: Path, *, nifti_case: str | None = None,
                       log: Callable[[str], None] = print) -> dict:
    """Write the NIfTI `ct` as a DICOM CT series under `dicom_dir` (UIDs from `DICOM_UID_SEED`: the same case name
    and SEG path every run), segment it with the open `engine` into `predictions` (DICOM-SEG and NIfTI masks) and
    name the SEG. `nifti_case`: the case `predict` made of `ct` itself in `predictions`; the series' masks must
    equal its masks voxel for voxel (recorded as `masks_equal_nifti`). Paths in the result are absolute."""
    import nibabel as nib

    from edgeseg.runtime.dicom import one_series
    from edgeseg.runtime.dicom.write import write_series
    from edgeseg.runtime.nifti import load_scan
    from edgeseg.runtime.predict import PredictOptions, predict_many
    from edgeseg.runtime.predict.plan import case_name

    scan = load_scan(ct)
    name = case_name(Path(ct))
    folder = Path(dicom_dir) / name
    write_series(folder, scan.data, scan.affine, series_number=1, description=name,
                 uid_seed=DICOM_UID_SEED, force=True)
    (report,) = predict_many(engine, [one_series(folder)], predictions,
                             PredictOptions(force=True, format="both"), log=log)
    case = report["case"]
    seg = Path(predictions) / f"{case}_seg.dcm"
    equal = None
    if nifti_case is not None:
        def canonical(c: str, organ: str) -> np.ndarray:
            img = nib.as_closest_canonical(nib.load(str(Path(predictions) / f"{c}_{organ}.nii.gz")))
            return np.asarray(img.dataobj)

        equal = all(np.array_equal(canonical(case, o), canonical(nifti_case, o)) for o in engine.organs)
    log(f"real CT as a DICOM series: {folder} -> DICOM-SEG {seg} (read {report['seconds']['read']:.2f} s"
        + ("" if equal is None else f"; masks {'equal' if equal else 'DIFFER from'} the NIfTI's") + ")")
    return {"series": folder, "seg": seg, "report": Path(predictions) / f"{case}.json", "case": case,
            "read_seconds": report["seconds"]["read"], "volume_ml": report["volume_ml"], "masks_equal_nifti": equal}

"""`edgeseg demo`: the whole pretrain-then-adapt story on the embedded default, in one output folder.

Stages: phantoms (K supports and held-out scans from the TARGET scanner) -> export the shipped phantom
SwinUNETR's trunk (pre-decoder1 cut) -> cache the supports' features (and one held-out scan as the size
prior's query) -> adapt the decoder-block adapter with the size prior to a novel organ -> fuse -> predict
the held-out phantoms and the real CT shipped with the package -> Dice per phantom, time per stage, peak
memory, a preview PNG of the real CT. Everything lands under `out`; `demo.json` records it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgeseg.runtime.errors import InputError

# A novel organ: the shipped model never saw the gallbladder labelled. `--organ spleen` shows a base organ
# under domain shift instead (the model's target-scanner Dice 0.73 before adaptation).
DEMO_ORGAN = "gallbladder"


def run_demo(out: str | Path, *, checkpoint: str | Path | None = None, organ: str = DEMO_ORGAN, k: int = 5, n_heldout: int = 3, seed: int = 0,
             epochs: int = 80, backend: str = "auto", threads: int | None = None, force: bool = False,
             log: Callable[[str], None] = print, stage: Callable[[str], None] = lambda name: None) -> dict:
    """Run every stage into `out` (refused if it holds a finished demo, unless `force`); returns the summary."""
    from edgeseg.assets import DEFAULT_MODEL, EXAMPLE_CT
    from edgeseg.cache import build_cache
    from edgeseg.data.phantom import ORGANS, TARGET, write_dataset
    from edgeseg.export.fuse import fuse
    from edgeseg.export.trunk import export_trunk
    from edgeseg.runtime.atomic import write_text_atomic
    from edgeseg.runtime.engine import open_engine
    from edgeseg.runtime.host import host_description, peak_rss_gib
    from edgeseg.runtime.nifti import load_scan
    from edgeseg.runtime.predict import PredictOptions, predict_many
    from edgeseg.train.adapt import AdaptConfig, adapt
    from edgeseg.train.losses import dice_score
    from edgeseg.train.pretrain import BASE_ORGANS

    if organ not in ORGANS:
        raise InputError(f"organ {organ!r} is not a phantom organ", fix=f"choose one of {', '.join(ORGANS)}")
    out = Path(out)
    if (out / "demo.json").exists() and not force:
        raise InputError("already holds a finished demo", path=out, fix="pass --force to run it again there, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
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

    # Scanner "target": another noise level, HU offset, phases and spacing than the model was pretrained on.
    with timed("phantoms"):
        support_dir, heldout_dir = out / "phantoms" / "support", out / "phantoms" / "heldout"
        write_dataset(support_dir, k, seed, TARGET, z_range=(-200.0, 160.0), max_voxels=6_000_000, force=True)
        write_dataset(heldout_dir, n_heldout, seed + 1, TARGET, z_range=(-200.0, 160.0), max_voxels=6_000_000,
                      force=True)
        heldout = sorted(heldout_dir.glob("s*/ct.nii.gz"))
    novel = organ not in BASE_ORGANS
    log(f"{k} support and {n_heldout} held-out TARGET phantoms; organ {organ} "
        f"({'novel: never labelled in pretraining' if novel else 'a base organ, under domain shift'})")

    with timed("export"):
        export_trunk(checkpoint or DEFAULT_MODEL, out / "trunk", cut="pre-decoder1", precisions=("fp32",), max_batch=1,
                     threads=threads, force=True, log=log)
    with timed("cache"):
        build_cache(out / "trunk", support_dir, organ, out / "cache", k=k, seed=seed, query=[heldout[0]], query_pool=1,
                    backend=backend, threads=threads, force=True, log=log)
    with timed("adapt"):
        config = AdaptConfig(adapter="decoder-block", lr=1e-3, max_epochs=epochs, patience=epochs, crop=32, ti=True,
                             ti_warmup=epochs // 2, seed=seed, threads=threads)
        adapted = adapt(out / "cache", out / "adapter", config, force=True, log=log)
    with timed("fuse"):
        fuse(out / "trunk", [out / "adapter"], out / "engine", precisions=("fp32",), force=True, threads=threads, log=log)

    with timed("predict"):
        opts = PredictOptions(force=True, preview=True)
        with open_engine(out / "engine", backend=backend, threads=threads) as engine:
            ran = engine.ran
            reports = predict_many(engine, heldout + [EXAMPLE_CT], out / "predictions", opts, log=log)
    dice = {}
    for path, report in zip(heldout, reports):
        ref = load_scan(path.parent / "segmentations" / f"{organ}.nii.gz", label=True).data
        pred = load_scan(out / "predictions" / f"{report['case']}_{organ}.nii.gz", label=True).data
        dice[path.parent.name] = round(dice_score(pred, ref), 4)
    summary = {
        "kind": "demo", "organ": organ, "novel": novel, "k": k, "seed": seed, "out": str(out.resolve()),
        "model": str(checkpoint or DEFAULT_MODEL), "adapter": {key: adapted[key] for key in ("adapter", "trainable_params", "epochs",
                                                                                "wall_seconds", "stopped")},
        "size_prior_S_ml": (adapted.get("size_prior") or {}).get("S_ml"),
        "ran": ran, "dice_heldout": dice, "dice_mean": round(float(np.mean(list(dice.values()))), 4),
        "real_ct": {"report": str(out / "predictions" / "example_ct_sm.json"),
                    "preview": str(out / "predictions" / "example_ct_sm_preview.png"),
                    "volume_ml": reports[-1]["volume_ml"]},
        "seconds": timings, "total_seconds": round(time.perf_counter() - t_all, 1), "peak_rss_gib": peak_rss_gib(),
        "host": host_description(),
    }
    write_text_atomic(out / "demo.json", json.dumps(summary, indent=2) + "\n", force=True)
    return summary

"""Few-shot Dice of a fused engine at int8 against fp32, on the demo's held-out TARGET phantoms.

    .venv/bin/python benchmarks/fewshot_int8.py --demo out/demo        # after `make demo` (or `edgeseg demo`)

Reuses what `edgeseg demo` built (edgeseg/demo.py): its pre-decoder1 trunk of the shipped model and its
decoder-block adapters, trained on K TARGET-scanner phantoms. Fuses them again with
`edgeseg.export.fuse.fuse(..., precisions=("fp32", "int8"))`, which parity-checks the int8 graphs through
the trained adapters (the fused adapter's mask flips), then segments each held-out phantom with the
fp32 graph (ONNX Runtime) and the int8 graphs (OpenVINO NNCF IR, ONNX Runtime QDQ), each in the same
predict code as `edgeseg predict`, and scores Dice against the phantoms' labels and against fp32.
Writes benchmarks/results/<machine>/fewshot_int8.json (Dice only: nothing here is timed). About 10 minutes
on 2 cores at the demo's sizes (fusion with both quantizers, then 3 held-out phantoms x 3 runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

RUNS = (("fp32", "ort", "fp32"), ("int8-openvino", "openvino", "int8"), ("int8-ort", "ort", "int8"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, required=True, help="a finished `edgeseg demo` output folder")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results-root", type=Path, default=None, help="another results folder (a smoke test)")
    args = ap.parse_args()

    import numpy as np

    from edgeseg.export.fuse import fuse
    from edgeseg.export.parity import ParityError
    from edgeseg.runtime.engine import open_engine
    from edgeseg.runtime.errors import InputError
    from edgeseg.runtime.manifest import library_versions, portable_path
    from edgeseg.runtime.nifti import load_scan
    from edgeseg.runtime.predict import PredictOptions, predict_many
    from edgeseg.train.losses import dice_score

    demo = args.demo
    if not (demo / "demo.json").is_file():
        raise InputError("holds no finished demo (demo.json)", path=demo, fix="run `edgeseg demo --out DIR` first")
    import json

    summary = json.loads((demo / "demo.json").read_text())
    organs = list(summary["organs"])
    heldout = sorted((demo / "phantoms" / "heldout").glob("s*/ct.nii.gz"))
    engine_dir = demo / "engine-int8"
    kw = {} if args.results_root is None else {"root": args.results_root}
    try:
        manifest = fuse(demo / "trunk", [demo / "adapter" / o for o in organs], engine_dir, precisions=("fp32", "int8"),
                        threads=args.threads, force=True)
    except ParityError as e:  # the product refused an int8 graph of these adapters: that is the result
        reports = {p.name: json.loads(p.read_text()) for p in sorted(engine_dir.glob("*.parity.rejected.json"))}
        result = {"benchmark": "fewshot_int8", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "status": "rejected", "demo": portable_path(demo), "organs": organs, "k": summary.get("k"),
                  "reason": e.message, "rejected_reports": reports, "libraries": library_versions()}
        print(f"int8 fusion rejected by parity: {e.message}")
        print("wrote", write_result("fewshot_int8", result, **kw))
        return 0
    masks: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    ran = {}
    for name, backend, precision in RUNS:
        with open_engine(engine_dir, backend=backend, precision=precision, threads=args.threads) as engine:
            ran[name] = engine.ran
            out = demo / "predictions-int8" / name
            reports = predict_many(engine, heldout, out, PredictOptions(force=True), log=print)
        masks[name] = {r["case"]: {o: load_scan(out / f"{r['case']}_{o}.nii.gz", label=True).data > 0 for o in organs}
                       for r in reports}
    dice: dict[str, dict] = {}
    for name in masks:
        dice[name] = {}
        for organ in organs:
            vs_truth, vs_fp32, flips = [], [], []
            for ct, case in zip(heldout, masks[name]):
                ref = load_scan(ct.parent / "segmentations" / f"{organ}.nii.gz", label=True).data > 0
                m = masks[name][case][organ]
                vs_truth.append(dice_score(m, ref))
                vs_fp32.append(dice_score(m, masks["fp32"][case][organ]))
                flips.append(float(np.mean(m != masks["fp32"][case][organ])))
            dice[name][organ] = {"dice_truth_mean": round(float(np.mean(vs_truth)), 4),
                                 "dice_truth": [round(float(d), 4) for d in vs_truth],
                                 "dice_vs_fp32_mean": round(float(np.mean(vs_fp32)), 4),
                                 "mask_flip_vs_fp32_mean": round(float(np.mean(flips)), 6)}
            print(f"{name:>14} {organ}: Dice {dice[name][organ]['dice_truth_mean']:.4f} "
                  f"(vs fp32 {dice[name][organ]['dice_vs_fp32_mean']:.4f}, flips {100 * np.mean(flips):.4f}%)")
    result = {
        "benchmark": "fewshot_int8", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "ok", "demo": portable_path(demo), "organs": organs, "k": summary.get("k"), "heldout": [portable_path(p) for p in heldout],
        "engine_parity": {p: {"qdq": g.get("parity"), "openvino": (g.get("openvino") or {}).get("parity")}
                          for p, g in manifest["graphs"].items()},
        "calibration": manifest["graphs"]["int8"]["calibration"], "ran": ran, "dice": dice,
        "libraries": library_versions(),
    }
    print("wrote", write_result("fewshot_int8", result, **kw))
    return 0


if __name__ == "__main__":
    sys.exit(main())

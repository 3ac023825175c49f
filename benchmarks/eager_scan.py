"""Whole scans, side by side: PyTorch eager + MONAI's sliding window (the baseline a MONAI user runs)
against the fused engine on a fast backend, with the mask flips between them.

    .venv/bin/python benchmarks/eager_scan.py --engine /tmp/edgeseg-bench-cpu/engine-fs48 \
        --scan /tmp/edgeseg-bench-cpu/scan/phantoms/phantom-0.78x0.78x1.5mm/ct.nii.gz
    .venv/bin/python benchmarks/eager_scan.py --engine /tmp/edgeseg-bench-cpu/engine-fs48-int8 \
        --precision bf16,int8 --name eager_scan_int8 --scan ...     # eager, bf16 and int8 in one run

The engine must be a fused trunk + linear probe whose trunk manifest names its checkpoint (the
`benchmarks/run_cpu.sh` engine is). Both paths read and preprocess with edgeseg's own code (the same
model grid), then:
- eager: the trunk rebuilt from the checkpoint + the adapter (torch, fp32, inference mode), sigmoid,
  through `monai.inferers.sliding_window_inference` (overlap 0.25, Gaussian, sw_batch 1);
- engine: `Engine.probabilities` on the chosen backend and each chosen precision (pure-air windows reused).
Each (path, scan) runs in its own process, so each peak RSS is its own. Flips: voxels where the
masks (probability >= 0.5) differ, over the model grid. Writes benchmarks/results/<machine>/eager_scan.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _prepare(path: Path, spec):
    from edgeseg.runtime.nifti import load_scan
    from edgeseg.runtime.preprocess import preprocess_scan

    t0 = time.perf_counter()
    prepared = preprocess_scan(load_scan(path), spec)
    return prepared, time.perf_counter() - t0


def run_one(mode: str, engine_dir: Path, scan: Path, mask_out: Path, threads: int, backend: str,
            precision: str) -> dict:
    from edgeseg.runtime.artifacts.engine import EngineManifest
    from edgeseg.runtime.host import peak_rss_gib

    manifest = EngineManifest.from_folder(engine_dir)
    spec = manifest.preprocess
    t_load = time.perf_counter()
    if mode == "eager":
        import torch
        from monai.inferers import sliding_window_inference
        from safetensors.torch import load_file

        from edgeseg.adapters import build_adapter
        from edgeseg.model.checkpoint import load_exported_checkpoint
        from edgeseg.model.swinunetr import split
        from edgeseg.runtime.artifacts.adapter import AdapterManifest
        from edgeseg.runtime.artifacts.trunk import TrunkManifest

        torch.set_num_threads(threads)
        trunk_dir = Path(manifest.trunk.folder)
        trunk_manifest = TrunkManifest.from_folder(trunk_dir, verify_files=False)
        model = load_exported_checkpoint(trunk_manifest, trunk_dir, needed_for="the eager baseline rebuilds the trunk")
        trunk, _ = split(model, trunk_manifest.cut)
        (adapter,) = manifest.adapters
        a_dir = Path(adapter.folder)
        a_manifest = AdapterManifest.from_folder(a_dir, verify_files=False)
        head = build_adapter(a_manifest.adapter, feature_size=a_manifest.feature_size)
        head.load_state_dict(load_file(str(a_dir / AdapterManifest.WEIGHTS)))
        trunk.eval(), head.eval()

        def net(x):
            out = trunk(x)
            return head(*(out if isinstance(out, (tuple, list)) else (out,)))

        load_s = time.perf_counter() - t_load
        prepared, prep_s = _prepare(scan, spec)
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(prepared.image[None, None]), spec.window, 1,
                                              net, overlap=0.25, mode="gaussian")
            prob = torch.sigmoid(logits)[0, 0].numpy()
        infer_s = time.perf_counter() - t0
        ran = {"backend": "torch-cpu eager + monai.sliding_window_inference", "precision": "fp32"}
        windows = None
    else:
        from edgeseg.runtime.engine import open_engine

        eng = open_engine(engine_dir, backend=backend, precision=precision, threads=threads)
        load_s = time.perf_counter() - t_load
        prepared, prep_s = _prepare(scan, spec)
        t0 = time.perf_counter()
        stats: dict = {}
        prob = eng.probabilities(prepared.image[None], stats=stats)[0]
        infer_s = time.perf_counter() - t0
        ran = {"backend": eng.ran["backend"], "precision": eng.ran["precision"]}
        windows = {k: stats.get(k) for k in ("windows", "run", "blank")}
        eng.close()
    np.save(mask_out, prob >= 0.5)
    return {"mode": mode, "scan": scan.name if scan.name != "ct.nii.gz" else scan.parent.name,
            "model_grid": list(prob.shape), "ran": ran, "windows": windows, "load_s": round(load_s, 2),
            "read_preprocess_s": round(prep_s, 2), "inference_s": round(infer_s, 2),
            "scan_s": round(prep_s + infer_s, 2), "peak_rss_gib": peak_rss_gib()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=Path("/tmp/edgeseg-bench-cpu/engine-fs48"))
    ap.add_argument("--scan", type=Path, action="append", default=[], help="repeatable; the real CT always runs")
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="bf16", help="comma-separated: each is an engine row beside eager")
    ap.add_argument("--name", default="eager_scan", help="result file name (benchmarks/results/<machine>/NAME.json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=3, metavar=("MODE", "SCAN", "MASK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        mode, scan, mask = args.one
        print(json.dumps(run_one(mode, args.engine, Path(scan), Path(mask), args.threads, args.backend,
                                 args.precision)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_tag, write_result

    from edgeseg.assets import EXAMPLE_CT
    from edgeseg.bench.machine import describe
    from edgeseg.runtime.manifest import library_versions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        for scan in [EXAMPLE_CT, *args.scan]:
            runs = {}  # "eager", then each precision: each in its own process
            for mode, precision in [("eager", precisions[0]), *(("engine", p) for p in precisions)]:
                key = "eager" if mode == "eager" else precision
                mask = Path(tmp) / f"{key}-{len(rows)}.npy"
                cmd = [sys.executable, __file__, "--engine", str(args.engine), "--backend", args.backend,
                       "--precision", precision, "--threads", str(args.threads), "--one", mode, str(scan), str(mask)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                runs[key] = json.loads(out.stdout.strip().splitlines()[-1])
                runs[key]["mask"] = np.load(mask)
                print(json.dumps({k: v for k, v in runs[key].items() if k != "mask"}), flush=True)
            eager = runs["eager"]
            a = eager.pop("mask")
            engines = {}
            for p in precisions:
                b = runs[p].pop("mask")
                engines[p] = {**runs[p], "mask_flips": round(float(np.mean(a != b)), 6),
                              "foreground": round(float(b.mean()), 4),
                              "speedup_scan": round(eager["scan_s"] / runs[p]["scan_s"], 3),
                              "peak_rss_ratio": round(runs[p]["peak_rss_gib"] / eager["peak_rss_gib"], 3)}
                if p != precisions[0]:  # side by side with the first engine row, same run
                    engines[p]["vs_" + precisions[0]] = round(runs[precisions[0]]["scan_s"] / runs[p]["scan_s"], 3)
            first = engines[precisions[0]]
            row = {"scan": eager["scan"], "model_grid": eager["model_grid"], "eager": eager,
                   "engine": runs[precisions[0]], "mask_flips": first["mask_flips"],
                   "foreground_eager": round(float(a.mean()), 4), "foreground_engine": first["foreground"],
                   "speedup_scan": first["speedup_scan"], "peak_rss_ratio": first["peak_rss_ratio"]}
            if len(precisions) > 1:
                row["engines"] = engines
            rows.append(row)
            print(f"{row['scan']}: eager {eager['scan_s']} s, " + ", ".join(
                f"{e['ran']['backend']} {e['ran']['precision']} {e['scan_s']} s ({e['speedup_scan']}x, flips "
                f"{100 * e['mask_flips']:.3f}%, peak RSS {e['peak_rss_gib']} GiB)" for e in engines.values())
                + f"; eager peak RSS {eager['peak_rss_gib']} GiB", flush=True)
    result = {"benchmark": "eager_scan", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_tag(), "host": describe(), "libraries": library_versions(), "threads": args.threads,
              "engine": Path(args.engine).name, "weights": "random, torch.manual_seed(0); untrained LP head (timing only: "
                                                        "the flips of a random head are not the trained model's)",
              "scan_s": "read + preprocess + sliding window (load excluded)", "rows": rows}
    print(f"wrote {write_result(args.name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every CPU backend on the full-size trunk, side by side in one run, against PyTorch fp32 eager.

    .venv/bin/python benchmarks/cpu_backends.py                # feature_size 48, 96^3 (about 10 minutes)
    .venv/bin/python benchmarks/cpu_backends.py --feature-size 12 --window 64 --runs 1   # quick look

1. `edgeseg export` of a seeded random-weight SwinUNETR (cut decoder1, fp32 + mixed fp16): export time,
   file sizes, node counts and the parity report come from the trunk's manifest.
2. Each backend configuration runs in its own process (so its peak RSS is its own) on the real CT
   window that export parity uses: load time, latency per window (after one warm-up), and the
   outputs, which this script compares with PyTorch fp32 eager's (rel L2, max abs, mask flips
   through a seeded random 1x1x1 head).
Writes benchmarks/results/<machine>/cpu_backends.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_tag, peak_rss_gib, write_result  # noqa: E402

# name -> (backend, graph precision file, requested precision, options)
CONFIGS = {
    "torch-fp32": ("torch", None, "fp32", {}),
    "torch-bf16": ("torch", None, "bf16", {}),
    "ort-fp32": ("ort", "fp32", None, {}),
    "ort-fp32-no-arena": ("ort", "fp32", None, {"arena": False}),
    "ort-fp16-graph": ("ort", "fp16", None, {}),
    "openvino-fp32": ("openvino", "fp32", "fp32", {}),
    "openvino-bf16": ("openvino", "fp32", "bf16", {}),
}


def worker(name: str, trunk_dir: Path, checkpoint: Path, x_path: Path, y_path: Path, runs: int, threads: int) -> dict:
    backend_name, graph, precision, options = CONFIGS[name]
    from edgeseg.runtime.backends import open_backend

    if backend_name == "torch":
        import torch

        from edgeseg.model.checkpoint import load_checkpoint
        from edgeseg.model.swinunetr import split

        torch.set_num_threads(threads)
        model, _, _ = load_checkpoint(checkpoint)
        model_arg = split(model, "decoder1")[0]
    else:
        model_arg = trunk_dir / f"trunk.{graph}.onnx"
    kwargs = {"threads": threads, **options}
    if precision:
        kwargs["precision"] = precision
    backend = open_backend(backend_name, model_arg, **kwargs)
    x = np.load(x_path)
    t0 = time.perf_counter()
    backend.activate()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = backend.predict(x)[0]
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.predict(x)
        times.append(time.perf_counter() - t0)
    np.save(y_path, y)
    return {"config": name, "ran": backend.describe().to_dict(), "load_s": round(load_s, 2), "first_s": round(first_s, 2),
            "latency_s": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3),
            "peak_rss_gib": peak_rss_gib()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feature-size", type=int, default=48)
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--io", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        trunk_dir, checkpoint, x_path, y_path, result = map(Path, args.io)
        result.write_text(json.dumps(worker(args.worker, trunk_dir, checkpoint, x_path, y_path, args.runs, args.threads)))
        return 0

    import torch

    from edgeseg.export.parity import rel_l2
    from edgeseg.export.trunk import export_trunk, parity_inputs
    from edgeseg.model.checkpoint import save_checkpoint
    from edgeseg.model.spec import ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr
    from edgeseg.runtime.manifest import host_description, library_versions
    from edgeseg.runtime.preprocess import PreprocessSpec

    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgeseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(feature_size=args.feature_size, out_channels=1, class_names=("organ",),
                     preprocess=PreprocessSpec(window=(args.window,) * 3))
    torch.manual_seed(0)
    checkpoint = work / "random.safetensors"
    save_checkpoint(build_swinunetr(spec), spec, checkpoint, force=True)
    t0 = time.perf_counter()
    manifest = export_trunk(checkpoint, work / "trunk", threads=args.threads, force=True, log=print)
    export_wall = time.perf_counter() - t0
    x = parity_inputs(spec)["real_ct"]
    np.save(work / "x.npy", x)

    rows = {}
    for name in args.configs.split(","):
        y_path, r_path = work / f"y.{name}.npy", work / f"r.{name}.json"
        cmd = [sys.executable, __file__, "--worker", name, "--runs", str(args.runs), "--threads", str(args.threads),
               "--io", str(work / "trunk"), str(checkpoint), str(work / "x.npy"), str(y_path), str(r_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows[name] = {"config": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
        else:
            rows[name] = json.loads(r_path.read_text())
        print(json.dumps(rows[name]), flush=True)

    torch.manual_seed(1)
    head = torch.nn.Conv3d(spec.feature_size, 1, 1)  # fixed random head: flips measure what a mask would see
    ref = np.load(work / "y.torch-fp32.npy")
    with torch.inference_mode():
        ref_mask = (head(torch.from_numpy(ref)) > 0).numpy()
    base = rows["torch-fp32"].get("median_s")
    for name, row in rows.items():
        if "error" in row:
            continue
        y = np.load(work / f"y.{name}.npy")
        with torch.inference_mode():
            mask = (head(torch.from_numpy(y)) > 0).numpy()
        row.update(rel_l2_vs_torch_fp32=rel_l2(ref, y), max_abs=float(np.max(np.abs(ref - y))),
                   mask_flip=float(np.mean(mask != ref_mask)),
                   speedup_vs_torch_fp32=round(base / row["median_s"], 2) if base else None)

    out = {
        "benchmark": "cpu_backends", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_tag(), "host": host_description(), "libraries": library_versions(), "threads": args.threads,
        "model": {"feature_size": args.feature_size, "window": [args.window] * 3, "cut": "decoder1",
                  "weights": "random, torch.manual_seed(0)", "input": "real CT window (parity input 'real_ct')"},
        "export": {"wall_s": round(export_wall, 1), "timings_s": manifest["timings_seconds"],
                   "files": {k: v["bytes"] for k, v in manifest["files"].items()},
                   "nodes": {p: g["export"].get("n_nodes", g["export"].get("nodes_by_dtype")) for p, g in manifest["graphs"].items()},
                   "parity": {p: g["parity"] for p, g in manifest["graphs"].items()}},
        "backends": rows,
    }
    dest = write_result(f"cpu_backends{'' if args.feature_size == 48 else f'_fs{args.feature_size}'}", out)
    print(f"\n{'config':<20}{'ran':<28}{'s/window':>10}{'vs torch':>10}{'rel L2':>10}{'flips %':>9}{'RSS GiB':>9}")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<20}ERROR {row['error']}")
            continue
        ran = f"{row['ran']['backend']} {row['ran']['precision']}"[:27]
        print(f"{name:<20}{ran:<28}{row['median_s']:>10.2f}{row['speedup_vs_torch_fp32']:>9.2f}x"
              f"{row['rel_l2_vs_torch_fp32']:>10.1e}{100 * row['mask_flip']:>9.4f}{row['peak_rss_gib']:>9.2f}")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

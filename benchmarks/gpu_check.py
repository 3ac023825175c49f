"""GPU check: everything GPU-specific, timed and checked for parity, in one run that writes one JSON.

Runs the real-size trunk (SwinUNETR feature_size 48, 96^3, cut decoder1, seeded random weights) on
a window of the shipped real CT through the torch backend on CUDA: fp32, fp16 and bf16 autocast,
torch.compile, CUDA graphs, at batch 1 and 4; and through ONNX Runtime CUDA / TensorRT when those
are installed (they are not on the lent machine unless wheels are placed beside the script). The
CPU fp32 reference is computed in the same run on the GPU machine's CPU (170 MB of features per
window at feature_size 48 is too big to ship in the repo); mask flips go through a seeded random
1x1x1 head. Peak GPU memory per configuration comes from torch.cuda.max_memory_allocated.

    python benchmarks/gpu_check.py --out $OUT            # on a GPU machine
    python benchmarks/gpu_check.py --out /tmp/x --smoke  # tiny model on CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def _timed(fn, warmup: int, runs: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny model, 64^3, on CPU: test the script, not the GPU")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()

    import torch

    from edgeseg.export.parity import rel_l2
    from edgeseg.export.trunk import parity_inputs
    from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr, split
    from edgeseg.runtime.availability import probe_backends
    from edgeseg.runtime.backends import open_backend
    from edgeseg.runtime.manifest import host_description, library_versions
    from edgeseg.runtime.preprocess import PreprocessSpec

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device visible: nothing to check (use --smoke to test the script on CPU)", file=sys.stderr)
        return 2
    spec = (ModelSpec(**TINY_TEST_SPEC, out_channels=1, class_names=("organ",), preprocess=PreprocessSpec(window=(64,) * 3))
            if args.smoke else ModelSpec(out_channels=1, class_names=("organ",)))
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    model = build_swinunetr(spec).eval()
    trunk, head = split(model, "decoder1")
    x1 = parity_inputs(spec)["real_ct"]
    rng = np.random.default_rng(0)
    x4 = np.concatenate([x1] + [np.clip(x1 + rng.normal(0, 0.01, x1.shape).astype(np.float32), 0, 1) for _ in range(3)])

    result: dict = {"host": host_description(), "libraries": library_versions(), "python": platform.python_version(),
                    "smoke": args.smoke, "feature_size": spec.feature_size, "window": list(spec.window),
                    "backends": [b.to_dict() for b in probe_backends()], "runs": []}
    if cuda:
        p = torch.cuda.get_device_properties(0)
        result["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                         "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                         "cudnn": torch.backends.cudnn.version()}

    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = {1: trunk(torch.from_numpy(x1)).numpy(), 4: trunk(torch.from_numpy(x4)).numpy()}
        ref_mask = {b: (head(torch.from_numpy(r)) > 0).numpy() for b, r in ref.items()}
    result["cpu_reference_seconds"] = round(time.perf_counter() - t0, 2)
    import copy

    cpu_head = copy.deepcopy(head)  # masks are computed on the CPU; the trunk moves to the GPU
    model.to(device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    configs = [("fp32", False, False), ("fp16", False, False), ("bf16", False, False),
               ("fp16", True, False), ("fp16", False, True), ("fp32", False, True)]
    if not cuda:
        configs = [("fp32", False, False), ("bf16", False, False)]
    for precision, compiled, graphs in configs:
        for batch in (1, 4):
            x = x1 if batch == 1 else x4
            row = {"backend": "torch", "precision": precision, "compile": compiled, "cuda_graphs": graphs, "batch": batch}
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                backend = open_backend("torch", trunk, precision=precision, device=device, compile=compiled,
                                       cuda_graphs=graphs)
                t0 = time.perf_counter()
                backend.activate()
                out = backend.predict(x)[0]  # first call: compile / capture
                row["first_call_seconds"] = round(time.perf_counter() - t0, 3)
                times = _timed(lambda: backend.predict(x), args.warmup, args.runs, sync)
                with torch.inference_mode():
                    mask = (cpu_head(torch.from_numpy(out)) > 0).numpy()
                row.update(
                    median_ms=round(1000 * statistics.median(times), 2), min_ms=round(1000 * min(times), 2),
                    windows_per_s=round(batch / statistics.median(times), 2),
                    rel_l2_vs_cpu_fp32=rel_l2(ref[batch], out), mask_flip=float(np.mean(mask != ref_mask[batch])),
                    ran=backend.describe().to_dict(),
                )
                if cuda:
                    row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                backend.deactivate()
            except Exception as e:  # record and go on: one failing configuration must not hide the others
                row["error"] = f"{type(e).__name__}: {e}"
                row["traceback"] = traceback.format_exc(limit=5)
            result["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("ran", "traceback")}), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

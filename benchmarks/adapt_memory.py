"""Adaptation cost: time per step and peak memory of each adapter on cached features, beside the paper's
way (frozen trunk recomputed every step under no_grad) and full fine-tuning, for K = 1, 5, 10 supports.

    .venv/bin/python benchmarks/adapt_memory.py                       # feature_size 48, 96^3 crops
    .venv/bin/python benchmarks/adapt_memory.py --feature-size 12 --crop 64 --steps 2   # quick look

The measurement is `edgeseg.bench.adapt` (also `edgeseg bench adapt`, which adds the Markdown table
and the plot): every configuration runs in its own process, so each peak RSS is its own (it includes
the pages of the memory-mapped cache that the crops touched: file-backed, reclaimable by the OS). The
cached supports are synthetic fp16 feature files of a realistic organ region (K files of C x 128^3,
memory-mapped as the real cache is); the crops, the adapter, the loss and the optimiser are the ones
`edgeseg adapt` uses. For the paper's way and full fine-tuning the input is a 96^3 CT window (the
trunk cannot be skipped there, and K changes nothing per step; they run at K = 1). On a GPU, peak
memory is torch.cuda.max_memory_allocated.
Writes benchmarks/results/<machine>/adapt_memory.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from edgeseg.bench.adapt import ADAPTERS, MODES, REGION, run_adapt_bench  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feature-size", type=int, default=48)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--ks", default="1,5,10")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--adapters", default=",".join(ADAPTERS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--region", type=int, default=REGION)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    out = run_adapt_bench(feature_size=args.feature_size, crop=args.crop, steps=args.steps,
                          ks=[int(v) for v in args.ks.split(",")], modes=args.modes.split(","),
                          adapters=args.adapters.split(","), device=args.device, threads=args.threads,
                          region=args.region, workdir=args.workdir, log=print)
    name = "adapt_memory" + ("" if args.feature_size == 48 else f"_fs{args.feature_size}") \
        + ("" if args.device == "cpu" else f"_{args.device}")
    dest = write_result(name, out, machine=out["machine"])
    print(f"\n{'mode':<16}{'adapter':<15}{'K':>3}{'params':>12}{'s/step':>9}{'RSS GiB':>9}")
    for r in out["rows"]:
        if "error" in r:
            print(f"{r['mode']:<16}{r['adapter']:<15}{r['k']:>3}  ERROR {r['error']}")
        else:
            print(f"{r['mode']:<16}{r['adapter']:<15}{r['k']:>3}{r['trainable_params']:>12,}{r['seconds_per_step']:>9.2f}"
                  f"{r['peak_rss_gib']:>9.2f}")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Adaptation cost: time per step and peak memory of each adapter on cached features, beside the paper's
way (frozen trunk recomputed every step under no_grad) and full fine-tuning, for K = 1, 5, 10 supports.

    .venv/bin/python benchmarks/adapt_memory.py                       # feature_size 48, 96^3 crops
    .venv/bin/python benchmarks/adapt_memory.py --feature-size 12 --crop 64 --steps 2   # quick look

Every configuration runs in its own process, so each peak RSS is its own (it includes the pages of
the memory-mapped cache that the crops touched: file-backed, reclaimable by the OS). The cached supports are
synthetic fp16 feature files of a realistic organ region (K files of C x 128^3, memory-mapped as the
real cache is); the crops, the adapter, the loss and the optimiser are the ones `edgeseg adapt` uses
(edgeseg.train.adapt.CropSampler, edgeseg.adapters.build_adapter, AdamW, Dice). For the paper's way
and full fine-tuning the input is a 96^3 CT window (the trunk cannot be skipped there, and K changes
nothing per step; they run at K = 1). On a GPU, peak memory is torch.cuda.max_memory_allocated.
Writes benchmarks/results/<machine>/adapt_memory.json.
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
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_tag, peak_rss_gib  # noqa: E402

ADAPTERS = ("lp", "spatial", "decoder-block")
REGION = 128  # side of a cached organ region (voxels at 1.5 mm: 19 cm, a liver)


def make_supports(folder: Path, k: int, channels: int, cut: str) -> list:
    """K synthetic cached regions on disk (fp16 features, uint8 labels with a central organ), memory-mapped."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(k):
        names = ["features"] if cut == "decoder1" else ["enc0", "dec0"]
        feats = []
        for name in names:
            side = REGION if name != "dec0" else REGION // 2
            path = folder / f"{i}.{name}.npy"
            if not path.exists():
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(channels, side, side, side))
                for c in range(channels):
                    arr[c] = rng.standard_normal((side, side, side)).astype(np.float16)
                arr.flush()
                del arr
            feats.append(np.load(path, mmap_mode="r"))
        label_path = folder / f"{i}.label.npy"
        if not label_path.exists():
            z = np.indices((REGION,) * 3) - REGION / 2
            np.save(label_path, ((z**2).sum(0) < (REGION / 4) ** 2).astype(np.uint8))
        label = np.load(label_path, mmap_mode="r")
        entries.append(SimpleNamespace(features=tuple(feats), label=label, role="positive", case_id=str(i), voxel_ml=0.003375))
    return entries


def worker(mode: str, adapter_kind: str, k: int, fs: int, crop: int, steps: int, device: str, folder: Path) -> dict:
    import torch

    from edgeseg.adapters import CUT_OF, LR, build_adapter, count_trainable
    from edgeseg.model.spec import ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr, split
    from edgeseg.runtime.preprocess import PreprocessSpec
    from edgeseg.train.adapt import CropSampler
    from edgeseg.train.losses import segmentation_loss

    torch.manual_seed(0)
    cut = CUT_OF[adapter_kind]
    adapter = build_adapter(adapter_kind, feature_size=fs).to(device)
    params = count_trainable(adapter)
    rng = np.random.default_rng(0)
    if mode == "cached":
        sampler = CropSampler(make_supports(folder / cut, k, fs, cut), crop, rng, align=2 if cut == "pre-decoder1" else 1)

        def batch():
            feats, label = sampler.sample(positive=True)
            return [torch.from_numpy(f[None]).to(device) for f in feats], torch.from_numpy(label[None, None]).to(device)

        trainable = list(adapter.parameters())
        forward = adapter
    else:
        spec = ModelSpec(feature_size=fs, out_channels=1, class_names=("organ",), preprocess=PreprocessSpec(window=(crop,) * 3))
        model = build_swinunetr(spec).to(device)
        trunk, _ = split(model, cut)
        x = torch.rand(1, 1, crop, crop, crop, device=device)
        y = (torch.rand(1, 1, crop, crop, crop, device=device) > 0.7).float()
        if mode == "full-finetune":
            trainable = list(model.parameters()) + list(adapter.parameters())
            params = sum(p.numel() for p in trainable)

            def forward(*_):
                out = trunk(x)
                return adapter(*(out if isinstance(out, tuple) else (out,)))
        else:  # the paper's way: the frozen trunk recomputed every step
            trunk.eval()
            trainable = list(adapter.parameters())

            def forward(*_):
                with torch.no_grad():
                    out = trunk(x)
                return adapter(*(out if isinstance(out, tuple) else (out,)))

        def batch():
            return [], y

    opt = torch.optim.AdamW(trainable, lr=LR[adapter_kind], weight_decay=0.0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and is not timed
        t0 = time.perf_counter()
        feats, target = batch()
        loss = segmentation_loss(forward(*feats), target, "dice")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    row = {"mode": mode, "adapter": adapter_kind, "k": k, "trainable_params": params, "crop": crop,
           "seconds_per_step": round(statistics.median(times[1:]), 3), "peak_rss_gib": peak_rss_gib()}
    if device == "cuda":
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feature-size", type=int, default=48)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--ks", default="1,5,10")
    ap.add_argument("--modes", default="cached,trunk-per-step,full-finetune")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgeseg-adapt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        mode, kind, k = args.worker
        row = worker(mode, kind, int(k), args.feature_size, args.crop, args.steps, args.device, work)
        print("RESULT " + json.dumps(row))
        return 0
    ks = [int(v) for v in args.ks.split(",")]
    if "cached" in args.modes:  # written here, so that no worker's RSS counts the writing of the files
        for cut in ("decoder1", "pre-decoder1"):
            make_supports(work / cut, max(ks), args.feature_size, cut)
    rows = []
    for mode in args.modes.split(","):
        for kind in ADAPTERS:
            for k in (ks if mode == "cached" else [1]):
                if mode == "full-finetune" and kind != "lp":
                    continue  # full fine-tuning trains the whole model: the adapter on top changes little
                cmd = [sys.executable, __file__, "--worker", mode, kind, str(k), "--feature-size", str(args.feature_size),
                       "--crop", str(args.crop), "--steps", str(args.steps), "--device", args.device,
                       "--threads", str(args.threads), "--workdir", str(work)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                row = json.loads(line[-1][7:]) if line else {"mode": mode, "adapter": kind, "k": k,
                                                              "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    from edgeseg.runtime.manifest import host_description, library_versions

    out = {"benchmark": "adapt_memory", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_tag() if args.device == "cpu" else f"{machine_tag()}-{args.device}",
           "host": host_description(), "libraries": library_versions(), "threads": args.threads,
           "feature_size": args.feature_size, "crop": args.crop, "device": args.device,
           "cached_region": [REGION] * 3, "rows": rows}
    dest = RESULTS / out["machine"] / f"adapt_memory{'' if args.feature_size == 48 else f'_fs{args.feature_size}'}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'mode':<16}{'adapter':<15}{'K':>3}{'params':>12}{'s/step':>9}{'RSS GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:<16}{r['adapter']:<15}{r['k']:>3}  ERROR {r['error']}")
        else:
            print(f"{r['mode']:<16}{r['adapter']:<15}{r['k']:>3}{r['trainable_params']:>12,}{r['seconds_per_step']:>9.2f}"
                  f"{r['peak_rss_gib']:>9.2f}")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

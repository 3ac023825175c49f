"""`edgeseg bench adapt` (and benchmarks/adapt_memory.py): adaptation cost per step and peak memory.

Each adapter trained on cached features (K = 1, 5, 10 supports), beside the paper's way (the frozen
trunk recomputed every step under no_grad) and full fine-tuning. Every configuration runs in its own
process (`edgeseg.bench.runner`), so each peak RSS is its own (it includes the pages of the
memory-mapped cache that the crops touched: file-backed, reclaimable by the OS). The cached supports
are synthetic fp16 feature files of a realistic organ region (K files of C x region^3, memory-mapped
as the real cache is); the crops, the adapter, the loss and the optimiser are the ones `edgeseg adapt`
uses (edgeseg.train.adapt.CropSampler, edgeseg.adapters.build_adapter, AdamW, Dice). For the paper's
way and full fine-tuning the input is a crop^3 CT window (the trunk cannot be skipped there, and K
changes nothing per step; they run at K = 1). On a GPU, peak memory is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeseg.runtime.errors import InputError

ADAPTERS = ("lp", "spatial", "decoder-block")
MODES = ("cached", "trunk-per-step", "full-finetune")
REGION = 128  # side of a cached organ region (voxels at 1.5 mm: 19 cm, a liver)
SCHEMA = "edgeseg.bench.adapt/1"


def make_supports(folder: Path, k: int, channels: int, cut: str, region: int = REGION) -> list:
    """K synthetic cached regions on disk (fp16 features, uint8 labels with a central organ), memory-mapped
    as `edgeseg.features.open_cache` maps a cache's regions."""
    from edgeseg.features.reader import CacheEntry, map_array

    voxel_ml = 1.5**3 / 1000.0
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(k):
        names = ["features"] if cut == "decoder1" else ["enc0", "dec0"]
        feats = []
        for name in names:
            side = region if name != "dec0" else region // 2
            path = folder / f"{i}.{name}.npy"
            if not path.exists():
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(channels, side, side, side))
                for c in range(channels):
                    arr[c] = rng.standard_normal((side, side, side)).astype(np.float16)
                arr.flush()
                del arr
            feats.append(map_array(path))
        label_path = folder / f"{i}.label.npy"
        if not label_path.exists():
            z = np.indices((region,) * 3) - region / 2
            np.save(label_path, ((z**2).sum(0) < (region / 4) ** 2).astype(np.uint8))
        label = map_array(label_path)
        entries.append(CacheEntry(case_id=str(i), name="positive", role="positive", box=((0, region),) * 3,
                                  voxel_ml=voxel_ml, organ_ml=int(np.count_nonzero(label)) * voxel_ml,
                                  spacing_mm=(1.5,) * 3, features=tuple(feats), label=label))
    return entries


def measure(mode: str, adapter_kind: str, k: int, fs: int, crop: int, steps: int, device: str, folder: Path, *,
            threads: int | None = None, region: int = REGION) -> dict:
    """Time `steps` optimiser steps (after one untimed warm-up step) of one configuration, in this process."""
    import torch

    from edgeseg.adapters import CUT_OF, LR, build_adapter, count_trainable
    from edgeseg.model.spec import ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr, split
    from edgeseg.runtime.host import peak_rss_gib
    from edgeseg.runtime.preprocess import PreprocessSpec
    from edgeseg.train.adapt import CropSampler
    from edgeseg.train.losses import segmentation_loss

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    cut = CUT_OF[adapter_kind]
    adapter = build_adapter(adapter_kind, feature_size=fs).to(device)
    params = count_trainable(adapter)
    rng = np.random.default_rng(0)
    if mode == "cached":
        sampler = CropSampler(make_supports(folder / cut, k, fs, cut, region), crop, rng,
                              align=2 if cut == "pre-decoder1" else 1)

        def batch():
            feats, label = sampler.sample("positive")
            return [torch.from_numpy(f[None]).to(device) for f in feats], torch.from_numpy(label[None, None]).to(device)

        trainable = list(adapter.parameters())
        forward = adapter
    elif mode in ("trunk-per-step", "full-finetune"):
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
    else:
        raise InputError(f"unknown mode {mode!r}", fix=f"use one of {', '.join(MODES)}")

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
        row["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)  # what the allocator held
    return row


def plan_runs(modes: Sequence[str], ks: Sequence[int], adapters: Sequence[str] = ADAPTERS) -> list[tuple[str, str, int]]:
    """(mode, adapter, K) in run order: cached at every K, the others at K = 1; full fine-tuning once (lp on top)."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise InputError(f"unknown mode(s) {', '.join(bad)}", fix=f"use some of {', '.join(MODES)}")
    bad = [a for a in adapters if a not in ADAPTERS]
    if bad:
        raise InputError(f"unknown adapter(s) {', '.join(bad)}", fix=f"use some of {', '.join(ADAPTERS)}")
    if not ks or min(ks) < 1:
        raise InputError(f"K values {list(ks)} must be >= 1", fix="e.g. --ks 1,5,10")
    runs = []
    for mode in modes:
        for kind in adapters:
            if mode == "full-finetune" and kind != "lp":
                continue  # full fine-tuning trains the whole model: the adapter on top changes little
            for k in (ks if mode == "cached" else [1]):
                runs.append((mode, kind, int(k)))
    return runs


def run_adapt_bench(*, feature_size: int = 48, crop: int = 96, steps: int = 3, ks: Sequence[int] = (1, 5, 10),
                    modes: Sequence[str] = MODES, adapters: Sequence[str] = ADAPTERS, device: str = "cpu",
                    threads: int | None = 2, region: int = REGION, workdir: str | Path | None = None,
                    timeout: float | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Every (mode, adapter, K) in its own process; the result dict (rows as benchmarks/results/*/adapt_memory.json)."""
    from edgeseg.bench.machine import describe, machine_tag
    from edgeseg.bench.runner import run_job
    from edgeseg.runtime.manifest import library_versions

    if steps < 1:
        raise InputError(f"--steps {steps} must be >= 1", fix="e.g. --steps 3")
    if crop > region:
        raise InputError(f"--crop {crop} is larger than the cached region {region}", fix="use a smaller --crop")
    runs = plan_runs(modes, ks, adapters)
    if any(m != "cached" for m, _, _ in runs) and (crop % 32 or crop < 64):
        raise InputError(f"--crop {crop}: the trunk runs on crop^3 windows in modes {', '.join(m for m in modes if m != 'cached')}, "
                         "which SwinUNETR takes in multiples of 32, at least 64",
                         fix="use --crop 64 or 96, or --modes cached")
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgeseg-adapt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(m == "cached" for m, _, _ in runs):  # written here, so that no worker's RSS counts the writing of the files
        cuts = {"lp": "decoder1", "spatial": "decoder1", "decoder-block": "pre-decoder1"}
        for cut in sorted({cuts[a] for m, a, _ in runs if m == "cached"}):
            make_supports(work / cut, max(k for m, _, k in runs if m == "cached"), feature_size, cut, region)
    rows = []
    for mode, kind, k in runs:
        job = {"type": "adapt", "mode": mode, "adapter": kind, "k": k, "feature_size": feature_size, "crop": crop,
               "steps": steps, "device": device, "threads": threads, "folder": str(work), "region": region}
        result = run_job(job, work / "jobs", f"{mode}-{kind}-k{k}", timeout=timeout)
        if result.get("status") == "ok":
            row = {key: v for key, v in result.items() if key not in ("status", "worker_wall_s", "notes")}
        else:
            row = {"mode": mode, "adapter": kind, "k": k, "error": result.get("reason") or "failed"}
        rows.append(row)
        log(_line(row))
    return {"schema": SCHEMA, "benchmark": "adapt_memory",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_tag(), "host": describe(), "libraries": library_versions(), "threads": threads,
            "feature_size": feature_size, "crop": crop, "steps": steps, "device": device,
            "cached_region": [region] * 3, "rows": rows}


def _line(r: dict) -> str:
    if "error" in r:
        return f"{r['mode']} {r['adapter']} K={r['k']}: ERROR {r['error']}"
    gpu = f", GPU {r['peak_gpu_gib']} GiB" if r.get("peak_gpu_gib") is not None else ""
    return (f"{r['mode']} {r['adapter']} K={r['k']}: {r['seconds_per_step']:.3f} s/step, {r['trainable_params']:,} "
            f"trainable, peak RSS {r['peak_rss_gib']} GiB{gpu}")

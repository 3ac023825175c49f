"""One measurement in its own process: ``python -m edgeseg.bench.worker JOB.json``.

The job (written by `edgeseg.bench.runner.run_job`) says what to measure; the result goes to the
path in ``job["result"]`` as JSON with a "status": "ok", "skipped" (the backend could not start
here: BackendUnavailable, with its reason) or "error". Job types:

- "window": open a trunk or engine on one configuration, time `warmup` + `runs` calls on a batch of
  windows, record load time and peak RSS, then (after the peak is read) compare the outputs with the
  fp32 reference's, or save them when this run is the reference.
- "scan": segment one scan end to end with an engine (`edgeseg.runtime.predict.predict_scan`).
- "adapt": time adaptation steps (`edgeseg.bench.adapt.measure`).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HEAD_SEED = 1  # the fixed random 1x1x1 head mask flips of decoder1 features go through


def _open(kind: str, folder: Path, config, threads: int | None, cache_dir: str | None):
    if kind == "trunk":
        from edgeseg.runtime.trunk import open_trunk as opener
    else:
        from edgeseg.runtime.engine import open_engine as opener
    device = config.device if config.backend in ("ort", "torch") else None
    kwargs = {"cache_dir": cache_dir} if cache_dir and config.device == "tensorrt" else {}
    art = opener(folder, backend=config.backend, precision=config.precision, threads=threads, device=device, **kwargs)
    if config.options:  # torch.compile / CUDA graphs: the same module, rebuilt into a backend with those options
        from edgeseg.runtime.backends import open_backend

        module = art.backend.module
        art.backend.deactivate()
        art.backend = open_backend("torch", module, precision=config.precision, device=config.device,
                                   threads=threads, **config.options).activate()
    return art


def _torch_cuda_peak_gib() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    except Exception:
        pass
    return None


def rel_l2(ref: np.ndarray, got: np.ndarray) -> float:
    """||got - ref|| / ||ref||, accumulated in float64 one channel at a time (no full-size float64 copy)."""
    num = den = 0.0
    for r, g in zip(ref.reshape(-1, *ref.shape[2:]) if ref.ndim > 2 else [ref],
                    got.reshape(-1, *got.shape[2:]) if got.ndim > 2 else [got]):
        r64, g64 = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
        num += float(np.sum((g64 - r64) ** 2))
        den += float(np.sum(r64**2))
    return float(np.sqrt(num) / max(np.sqrt(den), 1e-30))


def head_weights(c: int, seed: int = HEAD_SEED) -> tuple[np.ndarray, np.float32]:
    """The fixed random 1x1x1 head over `c` channels: (weights (c,), bias), torch Conv3d's default init range."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(c)
    w = rng.uniform(-bound, bound, c).astype(np.float32)
    return w, np.float32(rng.uniform(-bound, bound))


def head_mask(features: np.ndarray, seed: int = HEAD_SEED) -> np.ndarray:
    """Masks of (N, C, ...) features through a fixed random 1x1x1 head (`head_weights`)."""
    c = features.shape[1]
    w, b = head_weights(c, seed)
    logits = np.zeros((features.shape[0], *features.shape[2:]), dtype=np.float32)
    for i in range(c):
        logits += w[i] * np.asarray(features[:, i], dtype=np.float32)
    return logits + b > 0


def compare(outs, ref_dir: Path, *, kind: str, cut: str | None, batch: int) -> dict:
    """rel L2 and max abs (worst output) and mask flips of `outs` against the saved reference outputs."""
    refs = [np.load(ref_dir / f"out{i}.npy", mmap_mode="r") for i in range(len(outs))]
    if len(refs) != len(outs) or any(r.shape[1:] != o.shape[1:] or r.shape[0] < batch for r, o in zip(refs, outs)):
        raise RuntimeError(f"outputs {[o.shape for o in outs]} do not match the reference's {[r.shape for r in refs]}")
    refs = [r[:batch] for r in refs]
    rel = max(rel_l2(r, o) for r, o in zip(refs, outs))
    max_abs = max(float(max(np.max(np.abs(np.asarray(r[i], dtype=np.float32) - o[i])) for i in range(batch)))
                  for r, o in zip(refs, outs))
    if kind == "engine":  # probabilities: the masks themselves
        flips = float(np.mean([np.mean((np.asarray(r) >= 0.5) != (o >= 0.5)) for r, o in zip(refs, outs)]))
        how = "probability >= 0.5 per organ"
    elif cut == "decoder1":
        flips = float(np.mean(head_mask(refs[0]) != head_mask(outs[0])))
        how = f"through a fixed random 1x1x1 head (seed {HEAD_SEED})"
    else:
        flips, how = None, "no head at this cut"
    return {"rel_l2": rel, "max_abs": max_abs, "mask_flip": flips, "mask": how}


def window_job(job: dict) -> dict:
    from edgeseg.bench.configs import BenchConfig
    from edgeseg.bench.stats import summarize
    from edgeseg.runtime.host import peak_rss_gib

    config = BenchConfig.from_dict(job["config"])
    kind, folder, batch = job["kind"], Path(job["folder"]), int(job["batch"])
    warmup, runs = int(job.get("warmup", 0)), int(job.get("runs", 1))
    x = np.ascontiguousarray(np.load(job["input"])[:batch])
    t0 = time.perf_counter()
    art = _open(kind, folder, config, job.get("threads"), job.get("cache_dir"))
    try:
        open_s = time.perf_counter() - t0
        info = art.backend.describe()
        t0 = time.perf_counter()
        outs = art.backend.predict(x)
        first = time.perf_counter() - t0
        for _ in range(warmup):
            art.backend.predict(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            art.backend.predict(x)
            times.append(time.perf_counter() - t0)
        row = {"status": "ok", "ran": art.ran, "batch": batch, "times_s": [round(t, 6) for t in times],
               "latency_ms": summarize(times, per=batch) if times else None,
               "open_s": round(open_s, 3), "load_s": None if info.load_seconds is None else round(info.load_seconds, 3),
               "first_call_s": round(first, 3), "peak_rss_gib": peak_rss_gib(), "notes": []}
        if config.backend == "torch" and config.device == "cuda":
            row["peak_gpu_allocated_gib"] = _torch_cuda_peak_gib()
    finally:
        art.close()
    # Everything below happens after the peak was read: the reference's pages do not count.
    if job.get("save_output"):
        out_dir = Path(job["save_output"])
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, o in enumerate(outs):
            np.save(out_dir / f"out{i}.npy", np.asarray(o, dtype=np.float32))
    if job.get("reference"):
        row["parity"] = compare(outs, Path(job["reference"]), kind=kind, cut=job.get("cut"), batch=batch)
        row["parity"]["reference"] = job.get("reference_name")
    return row


def scan_job(job: dict) -> dict:
    from edgeseg.bench.scan import measure_scan

    return measure_scan(job)


def adapt_job(job: dict) -> dict:
    from edgeseg.bench.adapt import measure

    row = measure(job["mode"], job["adapter"], int(job["k"]), int(job["feature_size"]), int(job["crop"]),
                  int(job["steps"]), job.get("device", "cpu"), Path(job["folder"]), threads=job.get("threads"),
                  region=int(job.get("region", 128)))
    return {"status": "ok", **row}


def peak_job(job: dict) -> dict:
    from edgeseg.bench.peak import measure_peaks

    return {"status": "ok", "peaks": measure_peaks(job.get("device", "cpu"), threads=job.get("threads"),
                                                   seconds=float(job.get("seconds", 2.0)))}


JOBS = {"window": window_job, "scan": scan_job, "adapt": adapt_job, "peak": peak_job}


def run(job: dict) -> dict:
    """The job's result; edgeseg errors become skipped/error rows with their message, anything else an error."""
    from edgeseg.runtime.errors import BackendUnavailable, EdgesegError

    try:
        return JOBS[job["type"]](job)
    except BackendUnavailable as e:
        return {"status": "skipped", "reason": e.problem + (f" (to enable: {e.fix})" if e.fix else "")}
    except EdgesegError as e:
        return {"status": "error", "reason": e.message.replace("\n  fix:", "; fix:")}
    except Exception as e:  # a measurement that breaks is a row that says so, not a lost run
        return {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m edgeseg.bench.worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    result = run(job)
    from edgeseg.runtime.atomic import write_text_atomic

    write_text_atomic(Path(job["result"]), json.dumps(result, indent=2, default=str), force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

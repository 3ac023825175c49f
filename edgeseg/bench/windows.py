"""`edgeseg bench trunk|engine`: every backend and precision usable here on the same windows, in one run.

For an exported trunk (`edgeseg export`) or a fused engine (`edgeseg fuse`), each (configuration,
batch) runs in its own worker process (`edgeseg.bench.runner`), so peak host RSS and peak GPU memory
are its own: load time, first call, `warmup` untimed calls, then `runs` timed calls on the same input
windows (real-CT windows from the shipped example scan, through the artifact's own preprocessing).
Per row: latency per window (min, median, p90, p95, p99, max), windows per second, achieved TFLOP/s
(FLOPs counted from the graph, `edgeseg.bench.flops`), parity against the fp32 reference (PyTorch
fp32 eager for a trunk, ONNX Runtime CPU fp32 for an engine; rel L2, max abs, mask flips) and ratios
to the baseline at the same batch. Configurations that cannot run here are rows with the reason
(`edgeseg.bench.configs.plan`); a worker that fails is a row with its error.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from edgeseg.bench.configs import BASELINE, BenchConfig, PlannedRow, plan, reference_candidates, select_configs
from edgeseg.bench.stats import ratio, throughput, tflops
from edgeseg.runtime.errors import InputError

if TYPE_CHECKING:
    from edgeseg.runtime.artifacts.graphs import GraphFolderManifest

SCHEMA = "edgeseg.bench.windows/1"
Log = Callable[[str], None]


def read_artifact(folder: Path, kind: str) -> GraphFolderManifest:
    from edgeseg.runtime.artifacts.engine import EngineManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest

    classes = {"trunk": TrunkManifest, "engine": EngineManifest}
    if kind not in classes:
        raise InputError(f"unknown artifact kind {kind!r}", fix="use trunk or engine")
    return classes[kind].from_folder(folder)


def artifact_summary(folder: Path, kind: str, manifest: GraphFolderManifest) -> dict:
    return {"folder": str(folder.resolve()), "kind": kind, "cut": manifest.cut, "window": [int(w) for w in manifest.window],
            "feature_size": manifest.feature_size, "in_channels": manifest.in_channels,
            "organs": list(getattr(manifest, "organs", None) or []) or None,
            "graphs": {p: g.get("file") for p, g in sorted(manifest.graphs.items())},
            "engines": sorted(manifest.engines),
            "max_batch": manifest.max_batch,
            "manifest_sha256": manifest.record.get("manifest_sha256")}


def make_windows(preprocess: dict, n: int, channels: int = 1) -> tuple[np.ndarray, str]:
    """`n` windows (n, C, D, H, W) float32 of the shipped real CT, preprocessed as the artifact does:
    the first centred on the volume, the others shifted by a quarter window along the axes in turn."""
    from edgeseg.assets import EXAMPLE_CT
    from edgeseg.runtime.preprocess import PreprocessSpec, crop_window, preprocess as run_preprocess

    spec = PreprocessSpec.from_dict(preprocess)
    volume = run_preprocess(EXAMPLE_CT, spec).image
    window = tuple(int(w) for w in spec.window)
    centre = np.array([s // 2 for s in volume.shape])
    steps = [np.zeros(3, dtype=int)] + [sign * np.eye(3, dtype=int)[axis] for sign in (1, -1) for axis in range(3)]
    out = np.empty((n, channels, *window), dtype=np.float32)
    for i in range(n):
        shift = steps[i % len(steps)] * (np.array(window) // 4) * (1 + i // len(steps))
        out[i] = crop_window(volume, tuple(int(c) for c in centre + shift), window)[None]
    return out, f"{n} window(s) of {EXAMPLE_CT.name} (the shipped real CT), preprocessed with the artifact's spec"


def empty_row(planned: PlannedRow) -> dict:
    c = planned.config
    return {"config": c.name, "label": c.label, "backend": c.backend, "device": c.device, "precision": c.precision,
            "batch": planned.batch, "status": "skipped" if planned.skip else "pending", "reason": planned.skip,
            "ran": None, "latency_ms": None, "windows_per_s": None, "tflops": None, "open_s": None, "load_s": None,
            "first_call_s": None, "peak_rss_gib": None, "peak_gpu_gib": None, "parity": None, "vs_baseline": None,
            "notes": []}


def fill_row(row: dict, result: dict, flops_per_window: int | None) -> dict:
    """A planned row completed with a worker's result (ok, skipped or error)."""
    row = dict(row)
    row["status"] = result.get("status", "error")
    row["reason"] = result.get("reason")
    for key in ("ran", "latency_ms", "open_s", "load_s", "first_call_s", "peak_rss_gib", "peak_gpu_gib",
                "peak_gpu_allocated_gib", "parity", "times_s"):
        if key in result:
            row[key] = result[key]
    row["notes"] = list(row.get("notes") or []) + list(result.get("notes") or [])
    lat = row.get("latency_ms")
    if row["status"] == "ok" and lat:
        row["windows_per_s"] = round(throughput(lat["median"]), 4)
        t = tflops(flops_per_window, row["windows_per_s"])
        row["tflops"] = None if t is None else round(t, 4)
    return row


def add_ratios(rows: list[dict], baseline: str) -> None:
    """Speed-up (baseline median latency per window / the row's) and peak-RSS ratio, against the
    baseline at the same batch (else at batch 1, else at any batch it ran)."""
    base = {r["batch"]: r for r in rows if r["config"] == baseline and r["status"] == "ok" and r.get("latency_ms")}
    for r in rows:
        if r["status"] != "ok" or not r.get("latency_ms"):
            continue
        b = base.get(r["batch"]) or base.get(1) or next(iter(base.values()), None)
        if b is None:
            continue
        speed = ratio(b["latency_ms"]["median"], r["latency_ms"]["median"])
        rss = ratio(r.get("peak_rss_gib"), b.get("peak_rss_gib"))
        r["vs_baseline"] = {"config": baseline, "batch": b["batch"],
                            "speedup": None if speed is None else round(speed, 3),
                            "peak_rss": None if rss is None else round(rss, 3)}
    add_bf16_ratios(rows)


def add_bf16_ratios(rows: list[dict]) -> None:
    """An int8 row's speed-up against bf16 in the same run (`vs_bf16`): the same backend's bf16 row at the same
    batch, else the fastest bf16 row at that batch. INT8 is the step after bf16, so this is its ratio that matters."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("latency_ms")]
    for r in (r for r in ok if r["precision"] == "int8"):
        bf16 = [b for b in ok if b["precision"] == "bf16" and b["batch"] == r["batch"]]
        same = [b for b in bf16 if b["backend"] == r["backend"]]
        b = (same or sorted(bf16, key=lambda b: b["latency_ms"]["median"]) or [None])[0]
        speed = None if b is None else ratio(b["latency_ms"]["median"], r["latency_ms"]["median"])
        if speed is not None:
            r["vs_bf16"] = {"config": b["config"], "batch": b["batch"], "speedup": round(speed, 3)}
            r.setdefault("notes", []).append(f"{speed:.2f}x vs {b['config']}")


def count_flops(folder: Path, manifest: GraphFolderManifest) -> tuple[dict | None, list[str]]:
    from edgeseg.bench.flops import count_onnx_flops

    graphs = manifest.graphs
    name = "fp32" if "fp32" in graphs else next(iter(sorted(graphs)), None)
    if name is None:
        return None, ["FLOPs not counted: the folder holds no ONNX graph"]
    path = folder / graphs[name]["file"]
    try:
        fc = count_onnx_flops(path, batch=1)
    except Exception as e:  # a graph shape inference cannot follow: say so, measure the rest
        return None, [f"FLOPs not counted ({type(e).__name__}: {e})"]
    notes = [f"{len(fc.unknown)} counted node(s) with unknown shapes left out of the FLOPs"] if fc.unknown else []
    return {"per_window": fc.total, "gflops_per_window": round(fc.gflops, 3), "by_op": fc.by_op,
            "counted_from": path.name, "ops": "Conv, ConvTranspose, MatMul, Gemm (2 x MACs)"}, notes


def bench_windows(folder: str | Path, kind: str = "trunk", *, backends: str | Sequence[str] | None = "all",
                  batches: Sequence[int] = (1, 4), warmup: int = 3, runs: int = 10, threads: int | None = None,
                  workdir: str | Path | None = None, timeout: float | None = None, log: Log = lambda m: None,
                  statuses: dict | None = None, baseline: str | None = None, peaks: bool = True) -> dict:
    """Run the benchmark on the trunk or engine in `folder`; returns the result (schema `SCHEMA`).

    peaks: also measure this machine's matmul and bandwidth peaks (`edgeseg.bench.peak`, in a worker of
    its own per device, before any row) and give every row its physical floor and the fraction of it
    reached.

    baseline: the configuration ratios are taken to (default: PyTorch fp32 eager on the CPU for a trunk,
    ONNX Runtime CPU fp32 for an engine; e.g. torch-cuda-fp32 on a GPU machine).
    """
    from edgeseg.bench.runner import run_job

    folder = Path(folder)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"--batch {batches}: batch sizes must be >= 1", fix="e.g. --batch 1,4")
    if warmup < 0 or runs < 1:
        raise InputError(f"--warmup {warmup} --runs {runs}: need warmup >= 0 and runs >= 1", fix="e.g. --warmup 3 --runs 10")
    from edgeseg.bench.configs import BY_NAME

    if baseline is not None and baseline not in BY_NAME:
        raise InputError(f"--baseline {baseline!r} is not a benchmark configuration",
                         fix=f"use one of: {', '.join(BY_NAME)}")
    manifest = read_artifact(folder, kind)
    summary = artifact_summary(folder, kind, manifest)
    configs = select_configs(backends)
    if statuses is None:
        from edgeseg.runtime.availability import probe_backends

        statuses = {s.name: s for s in probe_backends()}
    rows_plan = plan(kind, manifest, configs, statuses, batches, folder=folder)
    flops, notes = count_flops(folder, manifest)
    per_window = flops["per_window"] if flops else None

    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="edgeseg-bench-")) if own_workdir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        x, input_desc = make_windows(manifest.preprocess.to_dict(), max(batches), summary["in_channels"])
        np.save(work / "input.npy", x)
        base_job = {"type": "window", "kind": kind, "folder": str(folder.resolve()), "cut": manifest.cut,
                    "input": str(work / "input.npy"), "threads": threads, "cache_dir": str(work / "trt-cache")}

        rows = {(p.config.name, p.batch): empty_row(p) for p in rows_plan}
        measured_peaks: dict[str, dict] = {}
        if peaks:
            devices = sorted({"cuda" if p.config.device != "cpu" else "cpu" for p in rows_plan if not p.skip})
            for dev in devices:
                res = run_job({"type": "peak", "device": dev, "threads": threads}, work / "jobs", f"peak-{dev}",
                              gpu=dev != "cpu", timeout=timeout)
                if res.get("status") == "ok":
                    measured_peaks[dev] = res["peaks"]
                    log(f"measured peaks on {dev}: {res['peaks']['tflops']} TFLOP/s, "
                        f"{res['peaks']['bandwidth_gbs']} GB/s")
                else:
                    notes.append(f"peaks on {dev} not measured: {res.get('reason')}")

        def execute(config: BenchConfig, batch: int, **extra) -> dict:
            job = dict(base_job, config=config.to_dict(), batch=batch, **extra)
            return run_job(job, work / "jobs", f"{config.name}-b{batch}", gpu=config.device != "cpu", timeout=timeout)

        # 1. the fp32 reference, first: its outputs are what every other row is compared with. The first
        #    candidate that runs at some batch is the reference; one that fails everywhere hands over to the next.
        ref_dirs: dict[int, Path] = {}
        ref: BenchConfig | None = None
        reference: dict = {"config": None, "runs": {}, "tried": []}
        for cand in reference_candidates(kind, statuses, manifest, folder):
            reference["tried"].append(cand.name)
            max_batch = summary["max_batch"] if cand.backend != "torch" else max(batches)
            runs_of: dict[str, dict] = {}
            for b in batches:
                if b > max_batch:
                    continue
                key = (cand.name, b)
                timed = key in rows and rows[key]["status"] == "pending"
                out_dir = work / f"reference-{cand.name}-b{b}"
                result = execute(cand, b, save_output=str(out_dir), warmup=warmup if timed else 0,
                                 runs=runs if timed else 1)
                if result.get("status") == "ok":
                    ref_dirs[b] = out_dir
                    result["parity"] = {"reference": cand.name, "rel_l2": 0.0, "max_abs": 0.0,
                                        "mask_flip": 0.0 if kind == "engine" or manifest.cut == "decoder1" else None,
                                        "self": True}
                runs_of[str(b)] = {"status": result.get("status"), "reason": result.get("reason"), "timed_row": timed}
                if timed:
                    rows[key] = fill_row(rows[key], result, per_window)
                    log(_line(rows[key]))
                elif result.get("status") != "ok":
                    notes.append(f"the reference {cand.name} failed at batch {b}: {result.get('reason')}")
            reference["runs"][cand.name] = runs_of
            if ref_dirs:
                ref = cand
                reference["config"] = cand.name
                break
        if ref is None:
            notes.append("no fp32 reference ran here: parity not measured")

        # 2. every other runnable row, in configuration order
        for p in rows_plan:
            key = (p.config.name, p.batch)
            if rows[key]["status"] == "skipped":
                continue  # listed with its reason in the "not run here" table
            if rows[key]["status"] != "pending":
                continue  # the reference's own rows ran above
            ref_dir = ref_dirs.get(p.batch) or next((d for b, d in sorted(ref_dirs.items()) if b >= p.batch), None)
            extra = {"warmup": warmup, "runs": runs}
            if ref_dir is not None:
                extra.update(reference=str(ref_dir), reference_name=ref.name if ref else None)
            result = execute(p.config, p.batch, **extra)
            rows[key] = fill_row(rows[key], result, per_window)
            if ref_dir is None and rows[key]["status"] == "ok":
                rows[key]["notes"].append("parity not measured: no reference output at this batch")
            log(_line(rows[key]))
    finally:
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)

    ordered = [rows[(p.config.name, p.batch)] for p in rows_plan]
    if measured_peaks:
        add_floors(ordered, flops, graph_io_bytes(folder, manifest), measured_peaks)
    result = build_result(kind, summary, flops, ordered, statuses=statuses, configs=configs, batches=batches,
                          warmup=warmup, runs=runs, threads=threads, timeout=timeout, input_desc=input_desc,
                          reference=reference, notes=notes, baseline=baseline)
    result["peaks"] = measured_peaks or None
    return result


def graph_io_bytes(folder: Path, manifest: GraphFolderManifest) -> dict | None:
    """Lower-bound bytes per window (weights, input, outputs) of the folder's fp32 graph, or None."""
    from edgeseg.bench.peak import graph_bytes

    graphs = manifest.graphs
    if "fp32" not in graphs:
        return None
    try:
        return graph_bytes(folder / graphs["fp32"]["file"])
    except Exception:  # an unreadable graph: no memory floor, the compute floor still stands
        return None


def add_floors(rows: list[dict], flops: dict | None, nbytes: dict | None, peaks: dict[str, dict]) -> None:
    """Each ok row's physical floor per window (`edgeseg.bench.peak.floor`) and the fraction of it reached.

    Weights count at 2 bytes where the products run in fp16/bf16 (the backend converts them once)."""
    from edgeseg.bench.peak import COMPUTE_PRECISION, floor, fraction_of_floor

    for r in rows:
        if r["status"] != "ok" or not r.get("latency_ms"):
            continue
        dev = "cpu" if r["device"] == "cpu" else "cuda"
        compute = COMPUTE_PRECISION.get(r["device"], COMPUTE_PRECISION["cpu"]).get(r["precision"], "fp32")
        b = None
        if nbytes:
            b = nbytes["io_per_window"] + nbytes["weights"] * (0.5 if compute in ("fp16", "bf16") else 1.0) / r["batch"]
        f = floor(flops["per_window"] if flops else None, b, peaks.get(dev), r["device"], r["precision"])
        r["floor"] = f
        r["fraction_of_floor"] = fraction_of_floor(f, r["latency_ms"]["median"] / 1000.0)


def build_result(kind: str, artifact: dict, flops: dict | None, rows: list[dict], *, statuses: dict,
                 configs: Sequence[BenchConfig], batches: Sequence[int], warmup: int, runs: int, threads: int | None,
                 timeout: float | None, input_desc: str, reference: dict, notes: list[str],
                 baseline: str | None = None) -> dict:
    """The result document (schema `SCHEMA`) from completed rows: ratios to the baseline added here."""
    from edgeseg.bench.machine import describe, machine_tag
    from edgeseg.runtime.manifest import library_versions

    notes = list(notes)
    baseline = baseline or BASELINE[kind]
    add_ratios(rows, baseline)
    if not any(r["config"] == baseline and r["status"] == "ok" for r in rows):
        notes.append(f"the baseline {baseline} did not run (not selected, or not usable here): no ratios")
    return {
        "schema": SCHEMA, "benchmark": kind, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_tag(), "host": describe(), "libraries": library_versions(),
        "artifact": artifact, "flops": flops,
        "settings": {"backends": [c.name for c in configs], "batches": list(batches), "warmup": warmup, "runs": runs,
                     "threads": threads, "timeout_s": timeout, "input": input_desc},
        "baseline": baseline, "reference": reference,
        "probe": [s.to_dict() if hasattr(s, "to_dict") else dict(vars(s)) for s in statuses.values()],
        "rows": rows, "notes": notes,
    }


def _line(row: dict) -> str:
    head = f"{row['config']} batch {row['batch']}: "
    if row["status"] != "ok":
        return head + f"{row['status']}: {row['reason']}"
    lat = row.get("latency_ms") or {}
    return head + f"median {lat.get('median', float('nan')):.1f} ms/window, {row.get('windows_per_s') or 0:.2f} windows/s, " \
                  f"peak RSS {row.get('peak_rss_gib')} GiB"

"""GPU check: everything GPU-specific, timed and checked for parity, in one run inside a fixed budget.

    python benchmarks/gpu_check.py --out OUTDIR [--budget 420]     # on a GPU machine (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --out OUTDIR --smoke             # every step on the CPU at tiny sizes

Steps, in this order (the cheap and essential first; each in its own process with a time limit, the
smaller of its share and what is left of --budget; a step that cannot start is recorded as skipped
with the reason, one killed at its limit keeps the rows it finished):

- peaks: the machine's measured dense-matmul TFLOP/s (fp32, bf16, fp16; 8192^2 on a GPU) and copy
  bandwidth (`edgeseg.bench.peak.measure_peaks`); the GPU's properties.
- reference: the full-size trunk (SwinUNETR feature_size 48, 96^3 windows of the shipped real CT, cut
  decoder1, torch.manual_seed(0) weights: the timing does not depend on the weights) on the CPU in fp32,
  the parity reference of every GPU row; FLOPs per window (`edgeseg.bench.flops.count_module_flops`).
- trunk: the torch backend on CUDA, eager fp32 / fp16 / bf16 autocast and CUDA graphs (fp16), at batch
  1, 2 and 4: latency through `predict` (numpy in and out, what the sliding window pays) and on the
  device alone (`TorchBackend.forward`, input already there), TFLOP/s and the fraction of the measured
  peak of its compute precision and of the fp16 peak, peak GPU memory (torch.cuda.max_memory_allocated
  and max_memory_reserved), rel L2 against the CPU fp32 reference and mask flips through a fixed
  random 1x1x1 head (`edgeseg.bench.worker.head_weights`). torch's defaults stand: cuDNN convolutions
  of the fp32 rows run in TF32 (the peaks step records both TF32 switches).
- adapt: the adapters' training step on the same cached features (`edgeseg.bench.adapt.measure`, each
  in its own process) on the GPU and on this machine's CPU: seconds per step, peak GPU and host memory.
- scan: the shipped real CT end to end (read, preprocess, sliding window, post-process, write:
  `edgeseg.runtime.predict.predict_scan`, the code of `edgeseg predict`) with the shipped phantom model
  (feature_size 12; zero-shot linear probes for liver and left kidney, `bench.artifacts.shipped_engine`)
  on the torch backend on CUDA, against `edgeseg predict` itself on the same engine (the CLI picks its
  backend: ONNX Runtime CPU where no GPU runtime is installed): time per stage and voxels that differ.
  `edgeseg predict` runs fused graphs only; the torch rows rebuild the engine's modules
  (`edgeseg.export.fuse.torch_engine`).
- compile: torch.compile (fp16 autocast) at batch 1, 2 and 4: compile time and the same measurements.

Writes OUTDIR/gpu_check.json after every step (repository-relative paths only) and prints a table.
--smoke runs every step on the CPU (feature_size 12, 64^3 windows, batch 1, one run): CUDA-only rows
(fp16 autocast, CUDA graphs, GPU memory) and torch.compile are recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "edgeseg.gpu_check/1"
# (step, seconds it may take at most on the GPU run): the order is the priority
STEPS: tuple[tuple[str, int], ...] = (("peaks", 40), ("reference", 90), ("trunk", 150), ("adapt", 110), ("scan", 120),
                                      ("compile", 200))
SMOKE_SHARE = 300  # the smoke's steps export and fuse a small engine on a shared 2-core CPU: minutes, not seconds
MIN_START = {"compile": 60}  # a step with less time left than this is skipped, not started (default 20 s)
TRUNK_CONFIGS = ("torch-cuda-fp32", "torch-cuda-fp16", "torch-cuda-bf16", "torch-cuda-fp16-graphs")
COMPILE_CONFIGS = ("torch-cuda-fp16-compile",)
ADAPTERS = ("lp", "spatial", "decoder-block")
SCAN_ORGANS = ("liver", "kidney_left")
RESULT = "gpu_check.json"


def _sizes(smoke: bool) -> dict:
    """What each step runs at: the real sizes, or the smoke's tiny ones."""
    if smoke:
        return {"feature_size": 12, "window": 64, "batches": [1], "warmup": 0, "runs": 1, "adapt_crop": 16,
                "adapt_region": 32, "adapt_steps": {"device": 1, "cpu": 1}, "adapters": ["lp"], "peak_seconds": 0.05}
    return {"feature_size": 48, "window": 96, "batches": [1, 2, 4], "warmup": 3, "runs": 10, "adapt_crop": 96,
            "adapt_region": 128, "adapt_steps": {"device": 10, "cpu": 3}, "adapters": list(ADAPTERS),
            "peak_seconds": 1.0}


# --- the parent: steps under the budget, the JSON after each -------------------------------------------------


# an absolute path inside a message or traceback (not after a word, a dot, a colon or another slash: no URLs)
_PATH_IN_TEXT = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"():,/]+/)*[^\s'\"():,/]*")


def _portable_text(obj, work: Path):
    """`obj` with the absolute paths inside its strings made portable too (`portable_paths` takes only strings that
    are a path): the scratch folder as WORK, installed packages from site-packages/, the rest as
    `runtime.manifest.portable_path` makes them (repository-relative, else the file name)."""
    from edgeseg.runtime.manifest import portable_path

    def one(m: re.Match) -> str:
        tok = m.group(0)
        if tok == "/":
            return tok
        if tok.startswith(str(work)):
            return "WORK" + tok[len(str(work)):]
        if "/site-packages/" in tok:
            return "site-packages/" + tok.split("/site-packages/", 1)[1]
        return portable_path(tok, ROOT)

    if isinstance(obj, dict):
        return {k: _portable_text(v, work) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_portable_text(v, work) for v in obj]
    if isinstance(obj, str) and "/" in obj:
        return _PATH_IN_TEXT.sub(one, obj)
    return obj


def _write(out: Path, result: dict, work: Path) -> None:
    from edgeseg.runtime.atomic import write_text_atomic
    from edgeseg.runtime.manifest import portable_paths

    text = json.dumps(_portable_text(portable_paths(result, ROOT), work), indent=2, default=str)
    write_text_atomic(out / RESULT, text + "\n", force=True)


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return rows


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def run_step(name: str, limit: float, args, work: Path) -> dict:
    """Run one step in a child process for at most `limit` seconds; its result, or what it left when killed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--work", str(work),
           "--deadline", f"{time.time() + limit:.1f}", "--out", str(args.out)]
    if args.smoke:
        cmd.append("--smoke")
    if args.engine:
        cmd += ["--engine", str(args.engine)]
    rows_path, result_path, log = work / f"{name}.rows.jsonl", work / f"{name}.result.json", work / f"{name}.stderr.txt"
    for p in (rows_path, result_path):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stderr=err)  # stdout: the step's progress lines, live
        try:
            rc = proc.wait(timeout=limit + 15)  # the child keeps its own deadline; this is the backstop
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        except BaseException:  # a kill of this process: never leave the child running on the GPU
            proc.kill()
            proc.wait()
            raise
    wall = round(time.perf_counter() - t0, 1)
    rows = _read_rows(rows_path)
    if result_path.exists():
        result = json.loads(result_path.read_text())
    elif rc is None:
        result = {"status": "partial" if rows else "error",
                  "reason": f"killed at its time limit ({limit:.0f} s); the rows it finished are kept"}
    else:
        tail = _tail(log)
        result = {"status": "partial" if rows else "error",
                  "reason": f"the step's process exited with code {rc}" + (f": {tail.splitlines()[-1]}" if tail else ""),
                  "stderr_tail": tail}
    if rows:
        result["rows"] = rows
    result["seconds"] = wall
    result["limit_s"] = round(limit, 1)
    return result


def parent(args) -> int:
    from edgeseg.bench.machine import describe, machine_tag
    from edgeseg.runtime.manifest import library_versions

    out: Path = args.out
    earlier = None
    if (out / RESULT).exists():
        if not args.force:
            from edgeseg.runtime.errors import InputError

            raise InputError(f"already holds {RESULT}", path=out, fix="pass --force to replace it, or choose another --out")
        try:
            earlier = json.loads((out / RESULT).read_text())
        except (OSError, json.JSONDecodeError):
            earlier = None
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edgeseg-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    deadline = t_start + args.budget
    selected = [s for s in (args.steps.split(",") if args.steps else [n for n, _ in STEPS]) if s]
    unknown = [s for s in selected if s not in dict(STEPS)]
    if unknown:
        from edgeseg.runtime.errors import InputError

        raise InputError(f"--steps {','.join(unknown)}: no such step", fix=f"choose from {', '.join(n for n, _ in STEPS)}")
    if {"trunk", "compile"} & set(selected) and not (work / "reference.json").exists():
        selected += ["peaks", "reference"]  # they compare with the reference and the peaks of this machine, this run
    result = {"schema": SCHEMA, "benchmark": "gpu_check",
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/gpu_check.py " + " ".join(shlex.quote(a) for a in _public_argv(args.argv)),
              "smoke": args.smoke, "machine": machine_tag(), "host": describe(), "libraries": library_versions(),
              "budget_s": args.budget, "sizes": _sizes(args.smoke), "steps": {}}
    cuda = _cuda_visible()
    result["cuda_visible"] = cuda
    if not cuda and not args.smoke:
        result["error"] = "no CUDA device visible to torch: nothing to check (use --smoke to test the script on the CPU)"
        _write(out, result, work)
        print(result["error"], file=sys.stderr)
        return 2
    _write(out, result, work)
    for name, share in STEPS:
        if name not in selected:
            before = (earlier or {}).get("steps", {}).get(name)
            if before and not str(before.get("reason", "")).startswith("not selected"):  # a rerun of some steps
                result["steps"][name] = {**before, "from_earlier_run": earlier.get("date")}
            else:
                result["steps"][name] = {"status": "skipped", "reason": f"not selected (--steps {args.steps})"}
            continue
        left = deadline - time.time()
        share = SMOKE_SHARE if args.smoke else share
        limit = min(share, left)
        if left < MIN_START.get(name, 20):
            result["steps"][name] = {"status": "skipped",
                                     "reason": f"the budget was spent: {max(left, 0):.0f} s of {args.budget:.0f} s left, "
                                               f"the step needs at least {MIN_START.get(name, 20)} s"}
        else:
            print(f"== {name} (at most {limit:.0f} s; {left:.0f} s of the budget left)", flush=True)
            try:
                result["steps"][name] = run_step(name, limit, args, work)
            except KeyboardInterrupt:  # gpu_check.sh's backstop (SIGINT) or Ctrl-C: keep what this step finished
                rows = _read_rows(work / f"{name}.rows.jsonl")
                result["steps"][name] = {"status": "partial" if rows else "error", "rows": rows,
                                         "reason": "interrupted (SIGINT: the script's time limit, or Ctrl-C)"}
                result["total_s"] = round(time.time() - t_start, 1)
                _write(out, result, work)
                print(f"interrupted in step {name}; wrote {out / RESULT}", file=sys.stderr)
                return 130
            print(f"== {name}: {result['steps'][name]['status']} in {result['steps'][name]['seconds']} s"
                  + (f" ({result['steps'][name].get('reason')})" if result["steps"][name].get("reason") else ""),
                  flush=True)
        result["total_s"] = round(time.time() - t_start, 1)
        _write(out, result, work)  # after every step: a kill still leaves what finished
    summary = summarize(result)
    result["summary"] = summary
    _write(out, result, work)
    print_table(result)
    print(f"wrote {out / RESULT} ({result['total_s']} s)")
    return 0


def _public_argv(given: list[str]) -> list[str]:
    """This command's arguments without the machine's own paths (what the JSON records)."""
    argv, skip = [], False
    for a in given:
        if skip:
            argv.append("DIR")
            skip = False
            continue
        argv.append(a)
        skip = a in ("--out", "--work", "--engine")
    return argv


def _cuda_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def summarize(result: dict) -> dict:
    """The numbers a reader looks for first, from the step rows (None where a step did not give them)."""
    steps = result["steps"]
    rows = [r for s in ("trunk", "compile") for r in steps.get(s, {}).get("rows", []) if r.get("status") == "ok"]
    best = min(rows, key=lambda r: r["device_ms_per_window"], default=None)
    fp32 = {r["batch"]: r for r in rows if r["config"] == "torch-cuda-fp32"}
    return {"fastest": None if best is None else {
                k: best.get(k) for k in ("config", "batch", "device_ms_per_window", "predict_ms_per_window",
                                         "tflops", "of_fp16_peak", "rel_l2", "mask_flip", "peak_allocated_mib")},
            "speedup_vs_fp32_same_batch": None if best is None or best["batch"] not in fp32 else round(
                fp32[best["batch"]]["device_ms_per_window"] / best["device_ms_per_window"], 2),
            "statuses": {k: v.get("status") for k, v in steps.items()}}


def print_table(result: dict) -> None:
    rows = [r for s in ("trunk", "compile") for r in result["steps"].get(s, {}).get("rows", [])]
    print(f"\n{'config':<26}{'b':>2} {'device ms/w':>11} {'predict ms/w':>12} {'TFLOP/s':>8} {'of fp16':>7} "
          f"{'rel L2':>8} {'flips':>7} {'alloc MiB':>9}")
    for r in rows:
        if r.get("status") != "ok":
            print(f"{r.get('config', '?'):<26}{r.get('batch', ''):>2} {r.get('status')}: {r.get('reason', '')[:80]}")
            continue

        def f(key, fmt):
            v = r.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) else "-"

        print(f"{r['config']:<26}{r['batch']:>2} {f('device_ms_per_window', '11.2f')} {f('predict_ms_per_window', '12.2f')} "
              f"{f('tflops', '8.1f')} {f('of_fp16_peak', '7.1%')} {f('rel_l2', '8.1e')} {f('mask_flip', '7.3%')} "
              f"{f('peak_allocated_mib', '9.0f')}")
    for r in result["steps"].get("adapt", {}).get("rows", []):
        gpu = r.get("peak_gpu_gib")
        gpu = f", GPU {gpu} GiB allocated ({r.get('peak_gpu_reserved_gib')} reserved)" if isinstance(gpu, float) else ""
        print(f"adapt {r.get('adapter')} on {r.get('device')} ({r.get('side')}): " + (
            f"{r['seconds_per_step']} s/step{gpu}, peak RSS {r.get('peak_rss_gib')} GiB"
            if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason')}"))
    for r in result["steps"].get("scan", {}).get("rows", []):
        print(f"scan {r.get('name')}: " + (f"{r.get('total_seconds')} s ({r.get('ran', {}).get('backend')} "
                                           f"{r.get('ran', {}).get('precision')}), flips vs CLI {r.get('mask_flip_vs_cli')}"
                                           if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason')}"))
    for name, step in result["steps"].items():
        if step.get("status") != "ok":
            print(f"step {name}: {step.get('status')} ({step.get('reason')})")


# --- the children: one step each ---------------------------------------------------------------------------


class Step:
    """One step in its child process: its deadline, its rows (appended to a JSONL file as they finish)."""

    def __init__(self, name: str, work: Path, deadline: float, smoke: bool, engine: Path | None):
        self.name, self.work, self.deadline, self.smoke, self.engine = name, work, deadline, smoke, engine
        self.sizes = _sizes(smoke)
        self.device = "cpu" if smoke else "cuda"
        self.rows_path = work / f"{name}.rows.jsonl"

    def left(self) -> float:
        return self.deadline - time.time()

    def row(self, row: dict) -> dict:
        with open(self.rows_path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        brief = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
        print("  " + json.dumps(brief, default=str), flush=True)
        return row


def child(args) -> int:
    step = Step(args.step, Path(args.work), float(args.deadline), args.smoke, args.engine)
    try:
        extra = STEP_FUNCS[args.step](step) or {}
        result = {"status": "ok", **extra}
        statuses = {r.get("status") for r in _read_rows(step.rows_path)}
        if statuses == {"skipped"}:
            result.update(status="skipped", reason="every row was skipped (each says why)")
        elif statuses == {"error"}:
            result.update(status="error", reason="every row failed (each says why)")
        elif "error" in statuses:
            result.update(status="partial", reason="some rows failed (each says why)")
    except Exception as e:  # recorded, not raised: the parent goes on with the next step
        result = {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
    from edgeseg.runtime.atomic import write_text_atomic

    write_text_atomic(step.work / f"{args.step}.result.json", json.dumps(result, indent=2, default=str), force=True)
    return 0


def step_peaks(step: Step) -> dict:
    from edgeseg.bench.peak import measure_peaks

    if step.smoke:
        peaks = measure_peaks("cpu", seconds=step.sizes["peak_seconds"], precisions=("fp32",))
        peaks["notes"].append("smoke: the CPU's fp32 peak only (no fp16 matrix units on the CPU)")
        gpu = {"skipped": "no CUDA device (smoke on the CPU)"}
    else:
        import torch

        peaks = measure_peaks("cuda", seconds=step.sizes["peak_seconds"])
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
               "multiprocessors": p.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
               "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    (step.work / "peaks.json").write_text(json.dumps(peaks))
    return {"peaks": peaks, "gpu": gpu}


def _spec(step: Step):
    from edgeseg.model.spec import TINY_TEST_SPEC, ModelSpec
    from edgeseg.runtime.preprocess import PreprocessSpec

    window = PreprocessSpec(window=(step.sizes["window"],) * 3)
    if step.smoke:
        return ModelSpec(**TINY_TEST_SPEC, out_channels=1, class_names=("organ",), preprocess=window)
    return ModelSpec(feature_size=48, out_channels=1, class_names=("organ",), preprocess=window)


def _trunk(step: Step):
    """The seeded trunk (the same weights in every step's process: checked by a checksum of its parameters)."""
    import torch

    from edgeseg.model.swinunetr import build_swinunetr, split

    torch.manual_seed(0)
    trunk, _ = split(build_swinunetr(_spec(step)), "decoder1")
    checksum = float(sum(p.detach().double().abs().sum() for p in trunk.parameters()))
    return trunk.eval(), checksum


def step_reference(step: Step) -> dict:
    import torch

    from edgeseg.bench.flops import count_module_flops
    from edgeseg.export.trunk import parity_inputs

    spec = _spec(step)
    trunk, checksum = _trunk(step)
    x1 = parity_inputs(spec)["real_ct"]
    rng = np.random.default_rng(0)
    b = max(step.sizes["batches"])  # the other windows: the same real CT window with a little noise
    x = np.concatenate([x1] + [np.clip(x1 + rng.normal(0, 0.01, x1.shape).astype(np.float32), 0, 1)
                               for _ in range(b - 1)])
    flops = count_module_flops(trunk, (1, *x.shape[1:]))
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = trunk(torch.from_numpy(x)).numpy()
    seconds = time.perf_counter() - t0
    np.save(step.work / "x.npy", x)
    np.save(step.work / "ref.npy", ref)
    info = {"feature_size": spec.feature_size, "window": list(spec.window), "cut": "decoder1", "batch": b,
            "weights": "torch.manual_seed(0)", "parameter_checksum": checksum,
            "input": "the shipped real CT's centre window (export.trunk.parity_inputs), the other windows it plus "
                     "N(0, 0.01) noise", "output_shape": list(ref.shape), "flops_per_window": flops,
            "gflops_per_window": round(flops / 1e9, 2), "cpu_fp32_seconds": round(seconds, 2),
            "cpu_fp32_seconds_per_window": round(seconds / b, 3), "cpu_threads": torch.get_num_threads()}
    (step.work / "reference.json").write_text(json.dumps(info))
    return info


def _load_reference(step: Step) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    path = step.work / "reference.json"
    if not path.exists():
        raise RuntimeError("the reference step did not finish: no CPU fp32 reference to compare with")
    peaks_path = step.work / "peaks.json"
    peaks = json.loads(peaks_path.read_text()) if peaks_path.exists() else {}
    return json.loads(path.read_text()), np.load(step.work / "x.npy"), np.load(step.work / "ref.npy", mmap_mode="r"), peaks


def _parity(torch, out: np.ndarray, ref: np.ndarray, device: str) -> dict:
    """rel L2 (float64) and max |diff| against the reference, mask flips through the fixed random head; on `device`."""
    from edgeseg.bench.worker import HEAD_SEED, head_weights

    o = torch.from_numpy(np.ascontiguousarray(out)).to(device, torch.float64)
    r = torch.from_numpy(np.ascontiguousarray(ref)).to(device, torch.float64)
    w, b = head_weights(o.shape[1], HEAD_SEED)
    w = torch.from_numpy(w).to(device, torch.float64).view(1, -1, 1, 1, 1)
    mask_o, mask_r = (o * w).sum(1) + float(b) > 0, (r * w).sum(1) + float(b) > 0
    result = {"rel_l2": float(torch.linalg.vector_norm(o - r) / torch.linalg.vector_norm(r)),
              "max_abs": float((o - r).abs().max()), "mask_flip": float((mask_o != mask_r).double().mean()),
              "finite": bool(torch.isfinite(o).all())}
    del o, r
    return result


def _timed(fn, runs: int, sync) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _configs(step: Step, names) -> list[dict]:
    from edgeseg.bench.configs import BY_NAME

    out = []
    for name in names:
        c = BY_NAME[name]
        out.append({"config": name, "label": c.label, "precision": c.precision,
                    "compile": bool(c.options.get("compile")), "cuda_graphs": bool(c.options.get("cuda_graphs"))})
    return out


def _smoke_skip(step: Step, c: dict) -> str | None:
    if not step.smoke:
        return None
    if c["compile"]:
        return "torch.compile is measured on the GPU only: inductor on this CPU takes minutes (smoke)"
    if c["cuda_graphs"]:
        return "CUDA graphs need a CUDA device (smoke on the CPU)"
    if c["precision"] == "fp16":
        return "fp16 autocast runs on CUDA only (smoke on the CPU)"
    return None


def measure_configs(step: Step, names) -> dict:
    """Each configuration at each batch: first call, predict and device-only latency, TFLOP/s, memory, parity."""
    import torch

    from edgeseg.bench.peak import COMPUTE_PRECISION
    from edgeseg.bench.stats import summarize
    from edgeseg.runtime.backends import open_backend

    configs = _configs(step, names)
    if all(_smoke_skip(step, c) for c in configs):  # nothing runs here: no model, no reference needed
        for c in configs:
            for batch in step.sizes["batches"]:
                step.row({**c, "batch": batch, "device": step.device, "status": "skipped", "reason": _smoke_skip(step, c)})
        return {}
    ref_info, x_all, ref_all, peaks = _load_reference(step)
    trunk, checksum = _trunk(step)
    if checksum != ref_info["parameter_checksum"]:
        raise RuntimeError(f"the trunk rebuilt here has parameter checksum {checksum}, the reference's was "
                           f"{ref_info['parameter_checksum']}: not the same weights")
    device, cuda = step.device, step.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tflops_peak = peaks.get("tflops") or {}
    flops = ref_info["flops_per_window"]
    last_row_s = 0.0
    for c in configs:
        for batch in step.sizes["batches"]:
            row = {**c, "batch": batch, "device": device}
            why = _smoke_skip(step, c)
            if why is None and step.left() < max(10.0, 1.5 * last_row_s):
                why = (f"the step's time limit: {step.left():.0f} s left, the last row took {last_row_s:.0f} s")
            if why is not None:
                step.row({**row, "status": "skipped", "reason": why})
                continue
            t_row = time.perf_counter()
            backend = None
            try:
                x = np.ascontiguousarray(x_all[:batch])
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                backend = open_backend("torch", trunk, precision=c["precision"], device=device, compile=c["compile"],
                                       cuda_graphs=c["cuda_graphs"])
                backend.activate()
                t0 = time.perf_counter()
                out = backend.predict(x)[0]  # first call: compile or capture
                row["first_call_s"] = round(time.perf_counter() - t0, 3)
                for _ in range(step.sizes["warmup"]):
                    backend.predict(x)
                predict = _timed(lambda: backend.predict(x), step.sizes["runs"], sync)
                xd = torch.from_numpy(x).to(device)
                for _ in range(step.sizes["warmup"]):
                    backend.forward(xd)
                sync()
                dev = _timed(lambda: backend.forward(xd), step.sizes["runs"], sync)
                row["ran"] = backend.describe().to_dict()
                row["predict_ms"] = summarize(predict, per=batch)
                row["device_ms"] = summarize(dev, per=batch)
                row["predict_ms_per_window"] = row["predict_ms"]["median"]
                row["device_ms_per_window"] = row["device_ms"]["median"]
                row["windows_per_s"] = round(1000.0 / row["device_ms_per_window"], 2)
                row["tflops"] = round(flops / (row["device_ms_per_window"] / 1000.0) / 1e12, 3)
                compute = COMPUTE_PRECISION["cuda" if cuda else "cpu"].get(c["precision"], "fp32")
                row["compute_precision"] = compute
                row["of_peak"] = (round(row["tflops"] / tflops_peak[compute], 4) if tflops_peak.get(compute) else None)
                row["of_fp16_peak"] = round(row["tflops"] / tflops_peak["fp16"], 4) if tflops_peak.get("fp16") else None
                if cuda:
                    row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
                else:
                    row["peak_gpu_memory"] = "not measured: no CUDA device (smoke on the CPU)"
                backend.deactivate()
                backend = None
                # after the peak was read: the reference goes to the device only now
                row.update(_parity(torch, out, ref_all[:batch], device))
                row["status"] = "ok" if row["finite"] else "error"
                if not row["finite"]:
                    row["reason"] = "the output holds NaN or Inf"
            except Exception as e:  # one configuration that breaks must not hide the others
                row.update(status="error", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6))
            finally:
                if backend is not None:
                    backend.deactivate()
                if cuda:
                    torch.cuda.empty_cache()
            last_row_s = time.perf_counter() - t_row
            row["row_s"] = round(last_row_s, 1)
            step.row(row)
    return {"reference": {k: ref_info[k] for k in ("feature_size", "window", "gflops_per_window")}}


def step_trunk(step: Step) -> dict:
    return measure_configs(step, TRUNK_CONFIGS)


def step_compile(step: Step) -> dict:
    return measure_configs(step, COMPILE_CONFIGS)


def step_adapt(step: Step) -> dict:
    """Each adapter's training step on the same cached features, on the device and on the CPU, each in its own process."""
    from edgeseg.adapters import CUT_OF
    from edgeseg.bench.adapt import make_supports
    from edgeseg.bench.runner import run_job

    s = step.sizes
    fs = s["feature_size"]
    folder = step.work / "adapt"
    for cut in sorted({CUT_OF[a] for a in s["adapters"]}):  # written once: both devices read the same files
        make_supports(folder / cut, 1, fs, cut, s["adapt_region"])
    sides = [("device", step.device), ("cpu", "cpu")]
    for adapter in s["adapters"]:
        for side, device in sides:
            row = {"adapter": adapter, "side": side, "device": device, "k": 1, "feature_size": fs,
                   "crop": s["adapt_crop"], "steps": s["adapt_steps"][side]}
            left = step.left()
            if left < 15:
                step.row({**row, "status": "skipped", "reason": f"the step's time limit: {left:.0f} s left"})
                continue
            job = {"type": "adapt", "mode": "cached", "adapter": adapter, "k": 1, "feature_size": fs,
                   "crop": s["adapt_crop"], "steps": s["adapt_steps"][side], "device": device,
                   "threads": (os.cpu_count() or 1) if device == "cpu" else None, "folder": str(folder),
                   "region": s["adapt_region"]}
            # the GPU peaks are torch's allocator's (measure records allocated and reserved), not nvidia-smi's
            res = run_job(job, folder / "jobs", f"{adapter}-{side}", timeout=min(90.0, left - 5))
            status = res.pop("status", "error")
            res.pop("mode", None)
            if status == "ok" and step.smoke:
                res["peak_gpu_gib"] = "not measured: no CUDA device (smoke on the CPU)"
            step.row({**row, **res, "status": status})
    rows = _read_rows(step.rows_path)
    ratios = {}
    for adapter in s["adapters"]:
        got = {r["side"]: r for r in rows if r["adapter"] == adapter and r.get("status") == "ok"}
        if "device" in got and "cpu" in got and got["device"]["seconds_per_step"] > 0:
            ratios[adapter] = round(got["cpu"]["seconds_per_step"] / got["device"]["seconds_per_step"], 2)
    return {"cpu_over_device_seconds_per_step": ratios,
            "cached": f"K = 1 synthetic fp16 feature region of {s['adapt_region']}^3 (edgeseg.bench.adapt.make_supports)"}


def step_scan(step: Step) -> dict:
    """The real CT end to end: `edgeseg predict` (its own backend choice) and the torch backend on the device."""
    import torch

    from edgeseg.assets import EXAMPLE_CT
    from edgeseg.bench.artifacts import shipped_engine
    from edgeseg.export.fuse import torch_engine
    from edgeseg.runtime.backends import open_backend
    from edgeseg.runtime.engine import Engine
    from edgeseg.runtime.nifti import load_scan
    from edgeseg.runtime.predict import PredictOptions, predict_scan

    built = None
    engine_dir = step.engine
    if engine_dir is None:
        t0 = time.perf_counter()
        engine_dir = shipped_engine(step.work / "engine", organs=SCAN_ORGANS, threads=os.cpu_count(),
                                    log=lambda m: None)
        built = round(time.perf_counter() - t0, 1)
    out = step.work / "scan"
    cli_out = out / "cli"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeseg", "predict", str(EXAMPLE_CT), "--engine", str(engine_dir),
                           "--out", str(cli_out), "--force", "--json"], capture_output=True, text=True,
                          timeout=max(10.0, step.left() - 5))
    cli_wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"edgeseg predict exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    parsed = json.loads(proc.stdout)
    cli_report = parsed[0] if isinstance(parsed, list) else parsed
    case = cli_report["case"]
    organs = cli_report["organs"]
    step.row({"name": "edgeseg predict (CLI)", "status": "ok", "ran": cli_report["ran"],
              "command_wall_s": round(cli_wall, 2), "seconds": cli_report["seconds"],
              "total_seconds": cli_report["total_seconds"], "windows": cli_report["windows"],
              "volume_ml": cli_report["volume_ml"], "model_grid": cli_report["model_grid"], "mask_flip_vs_cli": 0.0})
    cli_masks = {o: load_scan(cli_out / f"{case}_{o}.nii.gz", label=True).data for o in organs}

    from edgeseg.runtime.artifacts.engine import EngineManifest

    manifest = EngineManifest.from_folder(engine_dir, verify_files=False)
    cuda = step.device == "cuda"
    runs = [("fp32", 1), ("fp16", 1), ("fp16", 4)] if cuda else [("fp32", 1)]  # the smoke: the code path, once
    runs = list(dict.fromkeys((p, min(b, manifest.max_batch)) for p, b in runs))  # an engine exported for fewer
    for precision, sw_batch in runs:
        name = f"torch-{step.device} {precision} sw-batch {sw_batch}"
        left = step.left()
        if left < 10:
            step.row({"name": name, "status": "skipped", "reason": f"the step's time limit: {left:.0f} s left"})
            continue
        eng = None
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            backend = open_backend("torch", torch_engine(engine_dir), precision=precision, device=step.device)
            eng = Engine(engine_dir, EngineManifest.from_folder(engine_dir), backend, precision="fp32",
                         reason="the engine's torch form (benchmarks/gpu_check.py)")
            open_s = time.perf_counter() - t0
            sub = out / name.replace(" ", "-")
            report = predict_scan(eng, EXAMPLE_CT, sub, PredictOptions(force=True, sw_batch=sw_batch), case=case)
            masks = {o: load_scan(sub / f"{case}_{o}.nii.gz", label=True).data for o in organs}
            flips = {o: float(np.mean(masks[o] != cli_masks[o])) for o in organs}
            row = {"name": name, "status": "ok", "ran": report["ran"], "open_s": round(open_s, 2),
                   "seconds": report["seconds"], "total_seconds": report["total_seconds"],
                   "windows": report["windows"], "volume_ml": report["volume_ml"],
                   "mask_flip_vs_cli": round(max(flips.values()), 6), "mask_flip_vs_cli_per_organ": flips}
            if cuda:
                row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
            step.row(row)
        except Exception as e:
            step.row({"name": name, "status": "error", "reason": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=6)})
        finally:
            if eng is not None:
                eng.close()
    m = manifest
    return {"engine": {"built_here_s": built, "organs": list(m.organs), "feature_size": m.model_spec.get("feature_size"),
                       "window": list(m.window), "spacing_mm": list(m.preprocess.spacing),
                       "weights": "the shipped phantom model; zero-shot heads (the pretrained head's rows)"
                       if built is not None else "given with --engine"},
            "scan": "the shipped real CT (edgeseg/assets/example_ct_sm.nii.gz)"}


STEP_FUNCS = {"peaks": step_peaks, "reference": step_reference, "trunk": step_trunk, "adapt": step_adapt,
              "scan": step_scan, "compile": step_compile}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    ap.add_argument("--smoke", action="store_true", help="every step on the CPU at tiny sizes: tests the script, not a GPU")
    ap.add_argument("--budget", type=float, default=400.0, help="seconds for all steps together (default 400)")
    ap.add_argument("--steps", default=None, help=f"some steps only, comma-separated: {', '.join(n for n, _ in STEPS)}")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--engine", type=Path, default=None,
                    help="an engine folder for the scan step (default: built from the shipped model in the run)")
    ap.add_argument("--force", action="store_true", help="replace an existing OUTDIR/gpu_check.json")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.step:
        return child(args)
    from edgeseg.runtime.errors import EdgesegError

    try:
        return parent(args)
    except EdgesegError as e:
        print(e.message, file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

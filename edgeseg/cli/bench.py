"""`edgeseg bench trunk|engine|scan|adapt`: the measurements behind benchmarks/results (library: edgeseg.bench).

A Typer sub-app, mounted as `bench` by `edgeseg.cli`. Each command runs its benchmark in worker
processes, prints its table, and writes <name>.json/.md/.png under --out (--json PATH also writes the
result JSON there, '-' for stdout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import console, printer, user_errors
from edgeseg.cli.parse import int_list, names
from edgeseg.runtime.support import BackendChoice, Precision

app = typer.Typer(help="Benchmarks: trunk/engine per backend, end-to-end scans, adaptation cost.", no_args_is_help=True)

BENCH_JSON_OPT = typer.Option(None, "--json", help="Also write the result JSON to PATH ('-': stdout, errors as JSON).")
BENCH_OUT_OPT = typer.Option(None, "--out", help="Folder for <name>.json, <name>.md and <name>.png (e.g. benchmarks/results/<machine>).")
BENCH_NAME_OPT = typer.Option(None, "--name", help="File stem in --out (default e.g. bench_trunk_fs48_decoder1).")
BENCH_WORKDIR_OPT = typer.Option(None, "--workdir", help="Keep the worker jobs, logs and outputs here (default: a temporary folder).")
BENCH_TIMEOUT_OPT = typer.Option(None, "--timeout", help="Seconds one worker process may run before it becomes an error row.")
BENCH_BASELINE_OPT = typer.Option(None, "--baseline", help="Configuration the ratios are to (default: torch-cpu-fp32 for a trunk, ort-cpu-fp32 for an engine).")
# bench trunk and bench engine: the same windows, the same knobs
BENCH_BATCH_OPT = typer.Option("1,4", "--batch", help="Batch sizes, comma-separated.")
BENCH_WARMUP_OPT = typer.Option(3, "--warmup", min=0, help="Untimed calls after the first.")
BENCH_RUNS_OPT = typer.Option(10, "--runs", min=1, help="Timed calls per configuration and batch.")
BENCH_THREADS_OPT = typer.Option(None, "--threads", min=1, help="CPU threads per backend (default: all cores).")


def _bench_run(json_path: Optional[Path], out: Optional[Path], name: Optional[str], run) -> None:
    """Run a benchmark (`run(log)` returns the result), print its table, write its files."""
    as_json = json_path is not None and str(json_path) == "-"
    with user_errors(as_json):
        from edgeseg.bench.report import emit

        con = console(stderr=as_json)
        result = run(printer(con))
        emit(result, con, out=out, json_path=json_path, stem=name)


def _bench_windows(kind: str, folder: Path, backends: str, batch: str, warmup: int, runs: int, threads: Optional[int],
                   timeout: Optional[float], workdir: Optional[Path], out: Optional[Path], name: Optional[str],
                   json_path: Optional[Path], baseline: Optional[str]) -> None:
    def run(log):
        from edgeseg.bench.windows import bench_windows

        return bench_windows(folder, kind, backends=backends, batches=int_list(batch, "--batch"), warmup=warmup,
                             runs=runs, threads=threads, workdir=workdir, timeout=timeout, log=log, baseline=baseline)

    _bench_run(json_path, out, name, run)


@app.command("trunk")
def bench_trunk(
    folder: Path = typer.Argument(..., help="An exported trunk folder (edgeseg export)."),
    backends: str = typer.Option("all", "--backends", help="all, or names/prefixes: torch, ort, openvino, tensorrt, ort-cpu, torch-cuda-fp16, ..."),
    batch: str = BENCH_BATCH_OPT, warmup: int = BENCH_WARMUP_OPT, runs: int = BENCH_RUNS_OPT,
    threads: Optional[int] = BENCH_THREADS_OPT,
    timeout: Optional[float] = BENCH_TIMEOUT_OPT, workdir: Optional[Path] = BENCH_WORKDIR_OPT,
    out: Optional[Path] = BENCH_OUT_OPT, name: Optional[str] = BENCH_NAME_OPT, json_path: Optional[Path] = BENCH_JSON_OPT,
    baseline: Optional[str] = BENCH_BASELINE_OPT,
) -> None:
    """Every backend and precision usable here on the same windows: latency, throughput, TFLOP/s, memory, parity."""
    _bench_windows("trunk", folder, backends, batch, warmup, runs, threads, timeout, workdir, out, name, json_path,
                   baseline)


@app.command("engine")
def bench_engine(
    folder: Path = typer.Argument(..., help="A fused engine folder (edgeseg fuse)."),
    backends: str = typer.Option("all", "--backends", help="all, or names/prefixes: ort, openvino, tensorrt, ort-cpu, ..."),
    batch: str = BENCH_BATCH_OPT, warmup: int = BENCH_WARMUP_OPT, runs: int = BENCH_RUNS_OPT,
    threads: Optional[int] = BENCH_THREADS_OPT,
    timeout: Optional[float] = BENCH_TIMEOUT_OPT, workdir: Optional[Path] = BENCH_WORKDIR_OPT,
    out: Optional[Path] = BENCH_OUT_OPT, name: Optional[str] = BENCH_NAME_OPT, json_path: Optional[Path] = BENCH_JSON_OPT,
    baseline: Optional[str] = BENCH_BASELINE_OPT,
) -> None:
    """The fused engine (trunk + adapters) per backend: as `bench trunk`, against ONNX Runtime CPU fp32."""
    _bench_windows("engine", folder, backends, batch, warmup, runs, threads, timeout, workdir, out, name, json_path,
                   baseline)


@app.command("scan")
def bench_scan(
    engine: Path = typer.Argument(..., help="A fused engine folder (edgeseg fuse)."),
    scans: Optional[list[Path]] = typer.Argument(None, help="NIfTI scans to add (the shipped real CT and phantoms run anyway)."),
    real_ct: bool = typer.Option(True, "--real-ct/--no-real-ct", help="Include the shipped real CT."),
    phantoms: bool = typer.Option(True, "--phantoms/--no-phantoms", help="Include phantoms at several sizes (the scaling curve)."),
    phantom_spacing: list[str] = typer.Option([], "--phantom-spacing", help="Phantom voxel spacing in mm, '2' or '0.78,0.78,1.5'; repeatable (default: 3, 2, 1.5 and 0.78x0.78x1.5)."),
    z_range: str = typer.Option("-300,150", "--z-range", help="Phantom extent along z, mm (bottom,top)."),
    backend: BackendChoice = typer.Option(BackendChoice.AUTO, "--backend", case_sensitive=False,
                                          help="auto, or ort, openvino or tensorrt (a fused engine has no torch form)."),
    precision: Optional[Precision] = typer.Option(None, "--precision", case_sensitive=False,
                                                  help="fp32, fp16, bf16 or int8 (default: the backend's)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    overlap: float = typer.Option(0.25, "--overlap", min=0.0, max=0.95),
    sw_batch: int = typer.Option(1, "--sw-batch", min=1),
    reuse_blank: bool = typer.Option(True, "--reuse-blank/--run-every-window",
                                     help="One run for all pure-air windows (edgeseg predict's default), or run each."),
    timeout: Optional[float] = BENCH_TIMEOUT_OPT, workdir: Optional[Path] = BENCH_WORKDIR_OPT,
    out: Optional[Path] = BENCH_OUT_OPT, name: Optional[str] = BENCH_NAME_OPT, json_path: Optional[Path] = BENCH_JSON_OPT,
) -> None:
    """End to end per scan, stage by stage, and time and peak memory against the number of voxels."""
    def run(log):
        from edgeseg.bench.scan import DEFAULT_SPACINGS, bench_scan as run_scan, parse_spacing
        from edgeseg.runtime.errors import InputError

        try:
            zr = tuple(float(v) for v in z_range.split(","))
        except ValueError:
            zr = ()
        if len(zr) != 2 or zr[0] >= zr[1]:
            raise InputError(f"--z-range {z_range!r} is not 'bottom,top' in mm", fix="e.g. --z-range=-300,150")
        spacings = [parse_spacing(s) for s in phantom_spacing] or list(DEFAULT_SPACINGS)
        return run_scan(engine, scans or [], real_ct=real_ct, spacings=spacings if phantoms else [], z_range=zr,
                        backend=backend.value, precision=None if precision is None else precision.value,
                        threads=threads, overlap=overlap, sw_batch=sw_batch, reuse_blank=reuse_blank, workdir=workdir, timeout=timeout, log=log)

    _bench_run(json_path, out, name, run)


@app.command("adapt")
def bench_adapt(
    feature_size: int = typer.Option(48, "--feature-size", help="SwinUNETR feature size (48: the full-size model)."),
    crop: int = typer.Option(96, "--crop", help="Training crop side, voxels."),
    steps: int = typer.Option(3, "--steps", min=1, help="Timed optimiser steps (after one untimed warm-up step)."),
    ks: str = typer.Option("1,5,10", "--ks", help="Support counts K for the cached runs, comma-separated."),
    modes: str = typer.Option("cached,trunk-per-step,full-finetune", "--modes", help="cached, trunk-per-step (the paper's way), full-finetune."),
    adapters: str = typer.Option("lp,spatial,decoder-block", "--adapters", help="Adapters, comma-separated."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(2, "--threads", min=1),
    region: int = typer.Option(128, "--region", help="Side of each synthetic cached organ region, voxels."),
    timeout: Optional[float] = BENCH_TIMEOUT_OPT, workdir: Optional[Path] = BENCH_WORKDIR_OPT,
    out: Optional[Path] = BENCH_OUT_OPT, name: Optional[str] = BENCH_NAME_OPT, json_path: Optional[Path] = BENCH_JSON_OPT,
) -> None:
    """Time per step and peak memory of each adapter on cached features vs the trunk per step vs full fine-tuning."""
    def run(log):
        from edgeseg.bench.adapt import run_adapt_bench

        return run_adapt_bench(feature_size=feature_size, crop=crop, steps=steps, ks=int_list(ks, "--ks"),
                               modes=list(names(modes)), adapters=list(names(adapters)), device=device,
                               threads=threads, region=region, workdir=workdir, timeout=timeout, log=log)

    _bench_run(json_path, out, name, run)

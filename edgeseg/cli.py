"""The `edgeseg` command line.

Heavy modules (torch, monai, onnxruntime, scipy) are imported inside the commands so that
`edgeseg --help` answers at once. Every command maps a user error to exit code 2 and an internal
error to 1; with `--json`, errors are printed as JSON too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer

# OpenMP threads that wait for work sleep instead of spinning: on a machine where another job holds a
# core, spinning threads turned 45 s of adapter training into 460-650 s. Set before torch loads its
# OpenMP runtime (the commands import torch lazily); a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(
    name="edgeseg",
    help="Few-shot CT organ segmentation at the clinical edge: export, adapt, fuse, predict, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


@contextlib.contextmanager
def _user_errors(as_json: bool) -> Iterator[None]:
    """Turn edgeseg errors into a clear message and the right exit code; never a traceback for bad input."""
    from edgeseg.runtime.errors import EdgesegError, internal_errors

    try:
        with internal_errors():  # a bug exits 1 with one clean message (JSON too), Ctrl-C 130, disk full 2
            yield
    except EdgesegError as e:
        if as_json:
            print(json.dumps(e.to_dict()))
        else:
            from rich.markup import escape

            _console(stderr=True).print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        from edgeseg.runtime.errors import Terminated

        _console(stderr=True).print("[yellow]terminated[/]" if isinstance(e, Terminated) else "[yellow]interrupted[/]")
        raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None


def _parse_spacing(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    from edgeseg.runtime.errors import InputError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) <= 0:
        raise InputError(f"--spacing {text!r} is not one or three positive numbers", fix="e.g. --spacing 3 or --spacing 0.8,0.8,3")
    return tuple(values)  # type: ignore[return-value]


@app.command()
def info(as_json: bool = JSON_OPT) -> None:
    """Versions, devices, and which backends are usable here (and why the others are not)."""
    from edgeseg.info import environment_report

    with _user_errors(as_json):
        report = environment_report()
        if as_json:
            print(json.dumps(report, indent=2))
            return
        from rich.markup import escape
        from rich.table import Table

        con = _console()
        cpu = report["cpu"]
        con.print(f"[bold]edgeseg {report['edgeseg']}[/]  python {report['python']}  {report['platform']}")
        con.print(f"CPU: {cpu['model']}, {cpu['cores']} cores, {cpu['memory_gib']} GiB RAM")
        libs = "  ".join(f"{k} {v}" for k, v in report["libraries"].items() if v)
        con.print(f"libraries: {escape(libs)}", highlight=False)
        table = Table(title="backends")
        for col in ("backend", "usable", "detail", "to enable"):
            table.add_column(col)
        for b in report["backends"]:
            table.add_row(b["name"], "[green]yes[/]" if b["usable"] else "[red]no[/]", escape(b["detail"]),
                          "" if b["usable"] else escape(b["install_hint"]))
        con.print(table)


class DomainName(str, Enum):
    source = "source"
    target = "target"


@app.command()
def phantom(
    out: Path = typer.Option(..., "--out", help="Output folder (TotalSegmentator layout: sXXXX/ct.nii.gz, sXXXX/segmentations/)."),
    n: int = typer.Option(20, "--n", min=1, help="Number of phantom scans."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed: same seed, same scans, bit for bit."),
    domain: DomainName = typer.Option(DomainName.source, "--domain", help="Scanner domain: source (pretraining) or target (domain shift)."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="Fixed voxel spacing in mm, '3' or '0.8,0.8,3' (default: drawn per scan)."),
    preview: bool = typer.Option(False, "--preview", help="Also write sXXXX/preview.png (three slices with organ contours)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing cases."),
    as_json: bool = JSON_OPT,
) -> None:
    """Generate seeded synthetic abdominal CT scans with organ labels."""
    from rich.progress import Progress

    with _user_errors(as_json):
        fixed = _parse_spacing(spacing)
        from edgeseg.data import phantom as ph

        dom = ph.SOURCE if domain is DomainName.source else ph.TARGET
        with Progress(transient=True, disable=as_json) as bar:
            task = bar.add_task(f"phantoms ({dom.name})", total=n)
            cases = ph.write_dataset(out, n, seed, dom, spacing=fixed, force=force,
                                     progress=lambda i, total: bar.update(task, completed=i))
        previews = [_write_phantom_preview(case_dir, force=force) for case_dir in cases] if preview else []
        summary = {"out": str(out), "n": len(cases), "seed": seed, "domain": dom.name,
                   "cases": [str(c) for c in cases], "previews": [str(p) for p in previews]}
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            _console().print(f"wrote {len(cases)} phantom scans ({dom.name} domain, seed {seed}) to [bold]{out}[/]")


def _write_phantom_preview(case_dir: Path, *, force: bool) -> Path:
    from edgeseg.runtime.atomic import unlink_own
    from edgeseg.runtime.nifti import load_scan
    from edgeseg.runtime.png import preview, write_png

    ct = load_scan(case_dir / "ct.nii.gz")
    masks = {p.name.split(".")[0]: load_scan(p, label=True).data > 0 for p in sorted((case_dir / "segmentations").glob("*.nii.gz"))}
    target = case_dir / "preview.png"
    if target.exists() and force:
        unlink_own(target)
    return write_png(target, preview(ct.data, ct.affine, masks))


class Cut(str, Enum):
    decoder1 = "decoder1"
    pre_decoder1 = "pre-decoder1"


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="SwinUNETR checkpoint (.pt/.pth/.safetensors), any public layout."),
    out: Path = typer.Option(..., "--out", help="Folder for trunk.fp32.onnx, trunk.fp16.onnx, [plan] and manifest.json."),
    cut: Cut = typer.Option(Cut.decoder1, "--cut", help="decoder1: 48-ch full-res features (LP, spatial adapter); pre-decoder1: decoder1's inputs (decoder-block adapter, FT-Last)."),
    precision: str = typer.Option("fp32,fp16", "--precision", help="Graphs to write: fp32, fp16 (mixed: precision in the graph, for strongly typed TensorRT)."),
    batch: int = typer.Option(4, "--batch", min=1, help="Largest batch of windows (batch axis dynamic 1..B; the spatial window is fixed)."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="Also build a TensorRT engine for this GPU (needs edgeseg[trt] and a GPU)."),
    feature_size: Optional[int] = typer.Option(None, "--feature-size", help="Override the feature size read from the checkpoint."),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="Model spec JSON (overrides what the checkpoint tells)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Accept a checkpoint with missing trunk tensors."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the parity runs."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Export the frozen trunk to ONNX fp32 / mixed fp16 (and TensorRT), with mandatory parity against PyTorch."""
    with _user_errors(as_json):
        import dataclasses

        from edgeseg.export.trunk import export_trunk
        from edgeseg.model.checkpoint import file_spec
        from edgeseg.model.spec import ModelSpec

        spec = ModelSpec.from_json(spec_file) if spec_file else None
        if feature_size is not None:
            spec = dataclasses.replace(spec or file_spec(checkpoint), feature_size=feature_size)
        con = _console(stderr=as_json)
        from rich.markup import escape

        with con.status("exporting ...") as status:
            def log(msg: str) -> None:
                con.print(escape(msg), highlight=False)
                status.update(escape(msg.splitlines()[0][:100]))

            manifest = export_trunk(checkpoint, out, cut=cut.value, precisions=[p.strip() for p in precision.split(",")],
                                    max_batch=batch, tensorrt=tensorrt, spec=spec, allow_partial=allow_partial,
                                    threads=threads, force=force, log=log)
        if as_json:
            print(json.dumps(manifest, indent=2))
            return
        sizes = ", ".join(f"{name} {entry['bytes'] / 1e6:.1f} MB" for name, entry in manifest["files"].items())
        con.print(f"[green]exported[/] {escape(str(out))}: {escape(sizes)}; parity passed for "
                  f"{', '.join(manifest['graphs'])}{' and TensorRT' if manifest['engines'] else ''}", highlight=False)


@app.command()
def pretrain(
    out: Path = typer.Option(..., "--out", help="Folder for the weights (fp16 safetensors), pretrain.json, MODEL_CARD.md and the resumable state."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimiser steps (fixed, so a seed reproduces the run)."),
    n_train: int = typer.Option(48, "--n-train", min=1, help="SOURCE-domain training phantoms."),
    n_val: int = typer.Option(6, "--n-val", min=1, help="Held-out phantoms per domain (SOURCE and TARGET) for validation Dice."),
    feature_size: int = typer.Option(12, "--feature-size", help="SwinUNETR feature size (multiple of 12)."),
    swin_window: int = typer.Option(4, "--swin-window", min=2, help="Attention window of the Swin stages (4 is cheap on a CPU)."),
    spacing: float = typer.Option(3.0, "--spacing", help="Model grid spacing, mm."),
    window: int = typer.Option(64, "--window", help="Crop and sliding-window side, voxels (multiple of 32)."),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and the crop draw."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed of the phantom dataset."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="Validate every N steps as well as at the end."),
    save_every: int = typer.Option(100, "--save-every", min=1, help="Save the resumable training state every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the training state in --out (same options)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.0,
                                                help="Stop this run at the first state save after N minutes of training; continue with --resume."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    force: bool = typer.Option(False, "--force", help="Replace existing weights or an unfinished state in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Pretrain a small SwinUNETR on phantom CT (the embedded default foundation model); resumable."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with _user_errors(as_json):
        from edgeseg.train.pretrain import PretrainConfig
        from edgeseg.train.pretrain import pretrain as run_pretrain

        config = PretrainConfig(steps=steps, n_train=n_train, n_val=n_val, feature_size=feature_size,
                                swin_window=swin_window, spacing=spacing, window=window, lr=lr, seed=seed,
                                data_seed=data_seed, eval_every=eval_every, save_every=save_every, threads=threads)
        con = _console(stderr=as_json)
        columns = (TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
        tasks: dict[str, int] = {}
        with Progress(*columns, console=con) as bar:
            def progress(stage: str, done: int, total: int, loss: float | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total, loss="-", completed=done)
                bar.update(tasks[stage], completed=done, loss="-" if loss is None else f"{loss:.4f}")

            report = run_pretrain(out, config, force=force, resume=resume, max_minutes=max_minutes, progress=progress,
                                  log=lambda msg: con.print(escape(msg), highlight=False))
        if as_json:
            print(json.dumps({k: v for k, v in report.items() if k != "loss_curve"}, indent=2))
        elif not report["finished"]:
            con.print(f"[yellow]paused[/] at step {report['step']} of {report['steps']}: continue with "
                      f"`edgeseg pretrain --out {escape(str(out))} --resume` and the same options", highlight=False)
        else:
            val = report["validation_dice"]
            con.print(f"[green]pretrained[/] {escape(str(out))}: mean validation Dice "
                      + ", ".join(f"{d} {v['mean']:.3f}" for d, v in val.items())
                      + f"; {report['total_wall_seconds'] / 60:.1f} min over {len(report['runs'])} run(s)", highlight=False)


@app.command()
def cache(
    trunk: Path = typer.Option(..., "--trunk", help="An exported trunk folder (edgeseg export)."),
    data: Path = typer.Option(..., "--data", help="Support dataset: TotalSegmentator folder, nnU-Net/MSD folder or CSV."),
    organ: str = typer.Option(..., "--organ", help="The structure to adapt to, as the dataset names it."),
    out: Path = typer.Option(..., "--out", help="Cache folder (memory-mapped fp16 features, labels, manifest)."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Number of support scans drawn from the dataset (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the support draw and the negative windows."),
    query: list[Path] = typer.Option([], "--query", help="Unlabelled scan(s) for the size prior (--ti); repeatable."),
    backend: str = typer.Option("auto", "--backend", help="auto, ort, openvino, torch or tensorrt (auto prints which ran)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the trunk."),
    force: bool = typer.Option(False, "--force", help="Replace an existing cache in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the trunk over the support (and query) scans once and cache what adaptation will sample."""
    from rich.markup import escape
    from rich.progress import Progress

    with _user_errors(as_json):
        from edgeseg.features import CacheConfig, build_cache

        con = _console(stderr=as_json)
        with Progress(console=con, transient=True) as bar:
            task = bar.add_task("caching features", total=None)
            config = CacheConfig(k=k, seed=seed, query=tuple(query), backend=backend, threads=threads, force=force)
            manifest = build_cache(trunk, data, organ, out, config,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total),
                                   log=lambda msg: con.print(escape(msg), highlight=False))
        if as_json:
            print(json.dumps(manifest, indent=2))
        else:
            con.print(f"[green]cached[/] {escape(str(out))}", highlight=False)


class AdapterKind(str, Enum):
    lp = "lp"
    spatial = "spatial"
    decoder_block = "decoder-block"
    ft_last = "ft-last"


@app.command()
def adapt(
    cache_dir: Path = typer.Option(..., "--cache", help="A feature cache folder (edgeseg cache)."),
    adapter: AdapterKind = typer.Option(..., "--adapter", help="lp (49 params), spatial (124K), decoder-block (210K, pre-decoder1 cut), ft-last."),
    out: Path = typer.Option(..., "--out", help="Adapter folder: adapter.safetensors, adapter.onnx, manifest.json."),
    ti: bool = typer.Option(False, "--ti", help="Transductive size prior on the cached query scan (band |S_hat - (1 -/+ gamma) S|, S in mL)."),
    ti_gamma: float = typer.Option(0.3, "--ti-gamma", help="Size-prior band half-width (the release's margin, 0.3)."),
    ti_lambda: float = typer.Option(0.1, "--ti-lambda", help="Size-prior weight (the release's 0.1)."),
    ti_warmup: Optional[int] = typer.Option(None, "--ti-warmup", min=0, help="Steps before the size prior starts (default: half the steps)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Step budget (default: the CPU recipe, e.g. decoder-block 500)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: the CPU recipe: LP 1e-2, spatial 1e-3, decoder-block 3e-3, FT-Last 1e-3)."),
    crop: Optional[int] = typer.Option(None, "--crop", min=8, help="Training crop side in voxels (default 32)."),
    batch_size: int = typer.Option(2, "--batch-size", min=1),
    loss: str = typer.Option("dice+bce", "--loss", help="dice or dice+bce."),
    holdout: bool = typer.Option(True, "--holdout/--no-holdout", help="With K >= 5, leave one support out to pick the kept state and stop early."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after N minutes at the best state so far (and say so)."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: the cores idle now)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing adapter in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Train a few-shot adapter on cached features (the trunk never runs: low memory, minutes on a CPU)."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with _user_errors(as_json):
        from edgeseg.train.adapt import AdaptConfig
        from edgeseg.runtime.lock import output_lock
        from edgeseg.train.adapt import adapt as run_adapt

        config = AdaptConfig(adapter=adapter.value, steps=steps, lr=lr, crop=crop, batch_size=batch_size, loss=loss,
                             holdout=holdout, max_minutes=max_minutes, ti=ti, ti_gamma=ti_gamma, ti_lambda=ti_lambda,
                             ti_warmup=ti_warmup, seed=seed, threads=threads)
        config.check()
        con = _console(stderr=as_json)
        columns = (TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("loss {task.fields[loss]}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with output_lock(out, "edgeseg adapt"), Progress(*columns, console=con, transient=True) as bar:
            task = bar.add_task("adapt", total=config.resolved().steps, loss="-")
            manifest = run_adapt(cache_dir, out, config, force=force,
                                 progress=lambda e, total, value: bar.update(task, completed=e, loss=f"{value:.4f}"),
                                 log=lambda msg: con.print(escape(msg), highlight=False))
        if as_json:
            print(json.dumps(manifest, indent=2))
        else:
            held = manifest.get("heldout")
            con.print(f"[green]adapter[/] {escape(str(out))}: {manifest['adapter']} for {manifest['organ']}, "
                      f"{manifest['steps']} steps (kept step {manifest['kept_step']}"
                      + (f", held-out Dice {held['dice']:.3f}" if held else "") + f"), {manifest['wall_seconds']} s on "
                      f"{manifest['threads']} thread(s), peak RSS {manifest['peak_rss_gib']} GiB; stop: "
                      f"{escape(manifest['stopped'])}", highlight=False)


@app.command()
def fuse(
    trunk: Path = typer.Option(..., "--trunk", help="The exported trunk folder the adapters were trained on."),
    adapter: list[Path] = typer.Option(..., "--adapter", help="Adapter folder(s); several give one graph with one head per organ."),
    out: Path = typer.Option(..., "--out", help="Engine folder: fused.fp32.onnx, fused.fp16.onnx, [plan], manifest.json."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="Also build a TensorRT engine (reuses the trunk's timing cache)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing engine in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Merge the trunk graph with adapter graph(s) into one engine: CT window -> organ probabilities (parity-checked)."""
    from rich.markup import escape

    with _user_errors(as_json):
        from edgeseg.export.fuse import fuse as run_fuse

        con = _console(stderr=as_json)
        manifest = run_fuse(trunk, list(adapter), out, tensorrt=tensorrt, force=force,
                            log=lambda msg: con.print(escape(msg), highlight=False))
        if as_json:
            print(json.dumps(manifest, indent=2))
        else:
            con.print(f"[green]engine[/] {escape(str(out))}: organs {', '.join(manifest['organs'])}", highlight=False)


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="NIfTI scans, folders of them, or text files listing them."),
    engine: Path = typer.Option(..., "--engine", help="An engine folder (edgeseg fuse); it holds one head per organ."),
    out: Path = typer.Option(..., "--out", help="Output folder: <case>_<organ>.nii.gz, <case>.json, ..."),
    backend: str = typer.Option("auto", "--backend", help="auto, ort, openvino, torch or tensorrt (auto prints which ran)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Graph to run: fp32 (default) or fp16."),
    overlap: float = typer.Option(0.25, "--overlap", min=0.0, max=0.95, help="Sliding-window overlap."),
    sw_batch: int = typer.Option(1, "--sw-batch", min=1, help="Windows per inference batch."),
    reuse_blank: bool = typer.Option(
        True, "--reuse-blank/--run-every-window",
        help="Run the graph once for all windows of pure air (exact: they all get the same input)."),
    prefetch: str = typer.Option(
        "auto", "--prefetch", help="Read and preprocess the next scan during this one's inference: auto (on when the "
                                   "engine runs on a GPU; a CPU backend already uses every core), on, off."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0),
    lcc: bool = typer.Option(False, "--lcc", help="Keep each organ's largest connected component."),
    save_prob: bool = typer.Option(False, "--save-prob", help="Also write <case>_<organ>_prob.nii.gz."),
    preview: bool = typer.Option(False, "--preview", help="Also write <case>_preview.png (three slices, contours)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    volume: Optional[int] = typer.Option(None, "--volume", min=0, help="For 4D series: which volume to segment (0-based)."),
    max_memory: Optional[float] = typer.Option(
        None, "--max-memory", help="Memory budget in GiB for the whole run (default: what is available now); "
                                   "a scan that needs more is refused with the number needed, before it is read."),
    hu_check: bool = typer.Option(True, "--hu-check/--no-hu-check",
                                  help="Refuse scans whose intensities cannot be Hounsfield units (no air, 0..255, a mask); "
                                       "--no-hu-check for a scan you know is HU (a tight crop without air)."),
    force: bool = typer.Option(False, "--force", help="Redo cases that have a report and overwrite existing outputs."),
    as_json: bool = JSON_OPT,
) -> None:
    """Segment new scans: NIfTI in, mask NIfTI out in each scan's own space, one report per scan."""
    from rich.markup import escape
    from rich.progress import Progress

    with _user_errors(as_json):
        from edgeseg.runtime.engine import open_engine
        from edgeseg.runtime.predict import PredictOptions, predict_many

        opts = PredictOptions(overlap=overlap, sw_batch=sw_batch, threshold=threshold, lcc=lcc, save_prob=save_prob,
                              preview=preview, force=force, volume=volume, max_memory_gib=max_memory,
                              reuse_blank=reuse_blank, prefetch=prefetch, hu_check=hu_check)
        from edgeseg.runtime.lock import output_lock
        from edgeseg.runtime.predict import check_out_folder, collect_inputs

        con = _console(stderr=as_json)
        scans = collect_inputs(inputs)  # the inputs, the output folder and its lock before the engine loads (seconds)
        check_out_folder(out, inputs, scans)
        with output_lock(out, "edgeseg predict"), \
                open_engine(engine, backend=backend, precision=precision, threads=threads) as eng:
            con.print(escape(f"engine {engine}: {', '.join(eng.organs)} on {eng.ran['backend']} {eng.ran['precision']} "
                             f"({eng.ran['device']})"), highlight=False)
            with Progress(console=con, transient=True) as bar:
                task = bar.add_task("segmenting", total=None)
                reports = predict_many(eng, scans, out, opts, locked=True,
                                       progress=lambda done, total: bar.update(task, completed=done, total=total),
                                       log=lambda msg: con.print(escape(msg), highlight=False))
        if as_json:
            print(json.dumps(reports, indent=2))


def _int_list(text: str, name: str) -> tuple[int, ...]:
    from edgeseg.runtime.errors import InputError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise InputError(f"{name} {text!r} is not a comma-separated list of integers", fix=f"e.g. {name} 1,5,10")
    return values


@app.command()
def fewshot(
    out: Path = typer.Option(..., "--out", help="Folder for features/, runs.jsonl (resumable), results.json, table.md, dsc_vs_k.png."),
    checkpoint_path: Optional[Path] = typer.Option(None, "--checkpoint", help="Pretrained SwinUNETR with a head (default: the shipped phantom model)."),
    organs: str = typer.Option("liver,kidney_left,pancreas,gallbladder,inferior_vena_cava,esophagus", "--organs",
                               help="Organs, comma-separated: those the model's head knows are setting A (other scanner), the others setting B (novel)."),
    ks: str = typer.Option("1,5,10", "--k", help="Support counts K, comma-separated."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds (each draws other supports), comma-separated."),
    methods: str = typer.Option("generalization,ft-last,lp,spatial,decoder-block,decoder-block+ti", "--methods",
                                help="Methods, comma-separated; scratch and ft (whole model) are off by default: a real budget costs a pretraining per run on a CPU."),
    n_cases: int = typer.Option(22, "--n-cases", min=2, help="Target-domain phantoms (queries + support pool)."),
    n_query: int = typer.Option(5, "--n-query", min=1, help="Query scans per organ (the same for every run)."),
    model_steps: int = typer.Option(300, "--model-steps", min=1, help="Steps for scratch and ft (adapters use `edgeseg adapt`'s defaults)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    as_json: bool = JSON_OPT,
) -> None:
    """The paper's few-shot protocol on target-domain phantoms: DSC per method, K and organ (resumable)."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with _user_errors(as_json):
        from edgeseg.assets import DEFAULT_MODEL
        from edgeseg.fewshot import FewshotConfig, run_protocol

        config = FewshotConfig(organs=tuple(o.strip() for o in organs.split(",") if o.strip()),
                               ks=_int_list(ks, "--k"), seeds=_int_list(seeds, "--seeds"),
                               methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                               n_cases=n_cases, n_query=n_query, model_steps=model_steps, threads=threads)
        con = _console(stderr=as_json)
        columns = (TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        tasks: dict[str, int] = {}
        with Progress(*columns, console=con) as bar:
            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            summary = run_protocol(checkpoint_path or DEFAULT_MODEL, out, config, progress=progress,
                                   log=lambda msg: con.print(escape(msg), highlight=False))
        if as_json:
            print(json.dumps({k: v for k, v in summary.items() if k != "records"}, indent=2))
        else:
            con.print((out / "table.md").read_text(), highlight=False, markup=False)
            con.print(f"[green]results[/] {escape(str(out))}", highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", help="The one folder every artifact lands in."),
    organs: str = typer.Option("kidney_left,inferior_vena_cava", "--organs",
                               help="Organs, comma-separated (default: kidney_left, a pretrained class on another scanner; inferior_vena_cava, never labelled in pretraining)."),
    k: int = typer.Option(5, "--k", min=1, help="Support phantoms."),
    seed: int = typer.Option(0, "--seed"),
    backend: str = typer.Option("auto", "--backend", help="auto, ort, openvino, torch (auto prints which ran)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    force: bool = typer.Option(False, "--force", help="Run again into an --out that holds a finished demo."),
    as_json: bool = JSON_OPT,
) -> None:
    """Phantoms -> export the shipped model -> cache -> adapt (decoder-block, two organs) -> fuse -> predict."""
    from rich.markup import escape

    with _user_errors(as_json):
        from edgeseg.demo import run_demo

        con = _console(stderr=as_json)
        with con.status("demo") as status:
            summary = run_demo(out, organs=[o.strip() for o in organs.split(",") if o.strip()], k=k, seed=seed,
                               backend=backend, threads=threads,
                               force=force, log=lambda msg: con.print(escape(msg), highlight=False),
                               stage=lambda name: status.update(f"demo: {name}"))
        if as_json:
            print(json.dumps(summary, indent=2))
            return
        for organ, by_case in summary["dice_heldout"].items():
            con.print(f"\n[bold]Dice on held-out phantoms, {organ} (setting {summary['setting'][organ]}), "
                      f"K={summary['k']}:[/] " + ", ".join(f"{c} {d:.3f}" for c, d in by_case.items())
                      + f"; mean {summary['dice_mean'][organ]:.3f}", highlight=False)
        con.print("time per stage: " + ", ".join(f"{s} {v:.0f} s" for s, v in summary["seconds"].items())
                  + f"; total {summary['total_seconds'] / 60:.1f} min; peak RSS {summary['peak_rss_gib']:.2f} GiB", highlight=False)
        con.print(f"ran: {summary['ran']}", highlight=False)
        con.print(f"real CT: {escape(summary['real_ct']['preview'])}", highlight=False)
        con.print(f"[green]everything is in[/] {escape(summary['out'])}", highlight=False)


@app.command()
def checkpoint(
    path: Path = typer.Argument(..., help="A SwinUNETR checkpoint (.pt/.pth/.safetensors) in any public layout."),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="Model spec JSON (default: the file's own, else inferred from the tensors)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Accept a trunk with missing tensors (e.g. encoder-only SSL weights)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Load a checkpoint safely (weights only) and report its layout, spec and what was loaded."""
    with _user_errors(as_json):
        from edgeseg.model.checkpoint import load_checkpoint, sha256_file
        from edgeseg.model.spec import ModelSpec

        spec = ModelSpec.from_json(spec_file) if spec_file else None
        model, spec, report = load_checkpoint(path, spec, allow_partial=allow_partial)
        params = sum(p.numel() for p in model.parameters())
        if as_json:
            print(json.dumps({"report": report.to_dict(), "spec": spec.to_dict(), "parameters": params,
                              "sha256": sha256_file(path)}, indent=2))
            return
        from rich.markup import escape

        con = _console()
        con.print(escape(report.summary()), highlight=False)
        con.print(f"model: SwinUNETR feature_size {spec.feature_size}, depths {spec.depths}, "
                  f"{spec.out_channels} classes, {params:,} parameters", highlight=False)


@app.command()
def dataset(
    path: Path = typer.Argument(..., help="A TotalSegmentator folder, an nnU-Net/MSD folder (dataset.json) or a CSV of image,label[,organ]."),
    organ: str = typer.Option(..., "--organ", help="The structure to segment, as the dataset names it."),
    check: bool = typer.Option(False, "--check", help="Also read every mask: grids match, values valid, organ present."),
    as_json: bool = JSON_OPT,
) -> None:
    """Say what a dataset holds for one organ: its layout, usable cases, and the cases that lack it."""
    with _user_errors(as_json):
        from edgeseg.data.datasets import open_dataset
        from edgeseg.runtime.errors import InputError

        reader = open_dataset(path, organ, require=False)
        inv = reader.inventory()
        problems = [{"case": s.case_id, "path": str(s.path), "reason": s.reason} for s in inv.lacking]
        usable = []
        for case in inv.usable:
            if check:
                try:
                    case.load_mask()
                except InputError as e:
                    problems.append({"case": case.case_id, "path": e.path, "reason": e.problem})
                    continue
            usable.append(case.case_id)
        result = {"path": str(path), "layout": reader.layout, "organ": reader.organ, "organs": reader.organs(),
                  "usable": usable, "problems": problems, "checked_masks": check}
        if as_json:
            print(json.dumps(result, indent=2))
            return
        from rich.markup import escape

        con = _console()
        con.print(f"{escape(str(path))}: {reader.layout} layout, organ {reader.organ!r}: "
                  f"{len(usable)} usable case(s){' (masks read)' if check else ''}", highlight=False)
        for prob in problems:
            con.print(f"  [yellow]{escape(prob['case'])}[/]: {escape(prob['reason'])}", highlight=False)


# --- edgeseg bench: the measurements behind benchmarks/results (library: edgeseg.bench) -----------
bench_app = typer.Typer(help="Benchmarks: trunk/engine per backend, end-to-end scans, adaptation cost.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

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
    with _user_errors(as_json):
        from rich.markup import escape

        from edgeseg.bench.report import emit

        con = _console(stderr=as_json)
        result = run(lambda msg: con.print(escape(msg), highlight=False))
        emit(result, con, out=out, json_path=json_path, stem=name)


def _bench_windows(kind: str, folder: Path, backends: str, batch: str, warmup: int, runs: int, threads: Optional[int],
                   timeout: Optional[float], workdir: Optional[Path], out: Optional[Path], name: Optional[str],
                   json_path: Optional[Path], baseline: Optional[str]) -> None:
    def run(log):
        from edgeseg.bench.windows import bench_windows

        return bench_windows(folder, kind, backends=backends, batches=_int_list(batch, "--batch"), warmup=warmup,
                             runs=runs, threads=threads, workdir=workdir, timeout=timeout, log=log, baseline=baseline)

    _bench_run(json_path, out, name, run)


@bench_app.command("trunk")
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


@bench_app.command("engine")
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


@bench_app.command("scan")
def bench_scan(
    engine: Path = typer.Argument(..., help="A fused engine folder (edgeseg fuse)."),
    scans: Optional[list[Path]] = typer.Argument(None, help="NIfTI scans to add (the shipped real CT and phantoms run anyway)."),
    real_ct: bool = typer.Option(True, "--real-ct/--no-real-ct", help="Include the shipped real CT."),
    phantoms: bool = typer.Option(True, "--phantoms/--no-phantoms", help="Include phantoms at several sizes (the scaling curve)."),
    phantom_spacing: list[str] = typer.Option([], "--phantom-spacing", help="Phantom voxel spacing in mm, '2' or '0.78,0.78,1.5'; repeatable (default: 3, 2, 1.5 and 0.78x0.78x1.5)."),
    z_range: str = typer.Option("-300,150", "--z-range", help="Phantom extent along z, mm (bottom,top)."),
    backend: str = typer.Option("auto", "--backend", help="auto, ort, openvino or tensorrt."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or bf16 (default: the backend's)."),
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
                        backend=backend, precision=precision, threads=threads, overlap=overlap, sw_batch=sw_batch,
                        reuse_blank=reuse_blank, workdir=workdir, timeout=timeout, log=log)

    _bench_run(json_path, out, name, run)


@bench_app.command("adapt")
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

        return run_adapt_bench(feature_size=feature_size, crop=crop, steps=steps, ks=_int_list(ks, "--ks"),
                               modes=[m.strip() for m in modes.split(",") if m.strip()],
                               adapters=[a.strip() for a in adapters.split(",") if a.strip()], device=device,
                               threads=threads, region=region, workdir=workdir, timeout=timeout, log=log)

    _bench_run(json_path, out, name, run)


def main() -> None:
    import logging
    import signal
    import warnings

    from edgeseg.runtime.errors import Terminated

    def _terminate(signum, frame):  # SIGTERM (kill, a scheduler's timeout) stops a run as Ctrl-C does: cleanup, exit 143
        raise Terminated()

    signal.signal(signal.SIGTERM, _terminate)
    if not os.environ.get("EDGESEG_DEBUG"):  # libraries' warnings are for their developers, not for a user's terminal
        warnings.filterwarnings("ignore")
        logging.getLogger("nibabel").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    sys.exit(main())

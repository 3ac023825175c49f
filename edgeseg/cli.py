"""The `edgeseg` command line.

Heavy modules (torch, monai, onnxruntime, scipy) are imported inside the commands so that
`edgeseg --help` answers at once. Every command maps a user error to exit code 2 and an internal
error to 1; with `--json`, errors are printed as JSON too.
"""

from __future__ import annotations

import contextlib
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer

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
    from edgeseg.runtime.errors import EdgesegError

    try:
        yield
    except EdgesegError as e:
        if as_json:
            print(json.dumps(e.to_dict()))
        else:
            from rich.markup import escape

            _console(stderr=True).print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _console(stderr=True).print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


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
    from edgeseg.runtime.nifti import load_scan
    from edgeseg.runtime.png import preview, write_png

    ct = load_scan(case_dir / "ct.nii.gz")
    masks = {p.name.split(".")[0]: load_scan(p, label=True).data > 0 for p in sorted((case_dir / "segmentations").glob("*.nii.gz"))}
    target = case_dir / "preview.png"
    if target.exists() and force:
        target.unlink()
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
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the parity runs."),
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
def cache(
    trunk: Path = typer.Option(..., "--trunk", help="An exported trunk folder (edgeseg export)."),
    data: Path = typer.Option(..., "--data", help="Support dataset: TotalSegmentator folder, nnU-Net/MSD folder or CSV."),
    organ: str = typer.Option(..., "--organ", help="The structure to adapt to, as the dataset names it."),
    out: Path = typer.Option(..., "--out", help="Cache folder (memory-mapped fp16 features, labels, manifest)."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Number of support scans drawn from the dataset (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the support draw and the negative windows."),
    query: list[Path] = typer.Option([], "--query", help="Unlabelled scan(s) for the size prior (--ti); repeatable."),
    backend: str = typer.Option("auto", "--backend", help="auto, ort, openvino, torch or tensorrt (auto prints which ran)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the trunk."),
    force: bool = typer.Option(False, "--force", help="Replace an existing cache in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the trunk over the support (and query) scans once and cache what adaptation will sample."""
    from rich.markup import escape
    from rich.progress import Progress

    with _user_errors(as_json):
        from edgeseg.cache import build_cache

        con = _console(stderr=as_json)
        with Progress(console=con, transient=True) as bar:
            task = bar.add_task("caching features", total=None)
            manifest = build_cache(trunk, data, organ, out, k=k, seed=seed, query=tuple(query), backend=backend,
                                   threads=threads, force=force,
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
    ti_warmup: int = typer.Option(50, "--ti-warmup", help="Epochs before the size prior starts (the release's 50)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: LP 1e-2, adapters 1e-4, as the code release)."),
    max_epochs: int = typer.Option(200, "--max-epochs", min=1, help="At most this many epochs (early stop on a loss plateau, patience 20)."),
    crop: int = typer.Option(64, "--crop", min=8, help="Training crop side in voxels."),
    batch_size: int = typer.Option(2, "--batch-size", min=1),
    loss: str = typer.Option("dice", "--loss", help="dice or dice+bce."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    force: bool = typer.Option(False, "--force", help="Replace an existing adapter in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Train a few-shot adapter on cached features (the trunk never runs: low memory)."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with _user_errors(as_json):
        from edgeseg.train.adapt import AdaptConfig
        from edgeseg.train.adapt import adapt as run_adapt

        config = AdaptConfig(adapter=adapter.value, lr=lr, max_epochs=max_epochs, crop=crop, batch_size=batch_size,
                             loss=loss, ti=ti, ti_gamma=ti_gamma, ti_lambda=ti_lambda, ti_warmup=ti_warmup, seed=seed,
                             threads=threads)
        con = _console(stderr=as_json)
        columns = (TextColumn("epoch"), MofNCompleteColumn(), BarColumn(), TextColumn("loss {task.fields[loss]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=con, transient=True) as bar:
            task = bar.add_task("adapt", total=max_epochs, loss="-")
            manifest = run_adapt(cache_dir, out, config, force=force,
                                 progress=lambda e, total, value: bar.update(task, completed=e, loss=f"{value:.4f}"),
                                 log=lambda msg: con.print(escape(msg), highlight=False))
        if as_json:
            print(json.dumps(manifest, indent=2))
        else:
            con.print(f"[green]adapter[/] {escape(str(out))}: {manifest['adapter']} for {manifest['organ']}, "
                      f"{manifest['epochs']} epochs, {manifest['wall_seconds']} s, peak RSS {manifest['peak_rss_gib']} GiB",
                      highlight=False)


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
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0),
    lcc: bool = typer.Option(False, "--lcc", help="Keep each organ's largest connected component."),
    save_prob: bool = typer.Option(False, "--save-prob", help="Also write <case>_<organ>_prob.nii.gz."),
    preview: bool = typer.Option(False, "--preview", help="Also write <case>_preview.png (three slices, contours)."),
    threads: Optional[int] = typer.Option(None, "--threads"),
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
                              preview=preview, force=force)
        con = _console(stderr=as_json)
        with open_engine(engine, backend=backend, precision=precision, threads=threads) as eng:
            con.print(escape(f"engine {engine}: {', '.join(eng.organs)} on {eng.ran['backend']} {eng.ran['precision']} "
                             f"({eng.ran['device']})"), highlight=False)
            with Progress(console=con, transient=True) as bar:
                task = bar.add_task("segmenting", total=None)
                reports = predict_many(eng, inputs, out, opts,
                                       progress=lambda done, total: bar.update(task, completed=done, total=total),
                                       log=lambda msg: con.print(escape(msg), highlight=False))
        if as_json:
            print(json.dumps(reports, indent=2))


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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

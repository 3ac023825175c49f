"""`edgeseg adapt`: train a few-shot adapter on a feature cache."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import JSON_OPT, console, printer, show, user_errors


class AdapterKind(str, Enum):
    lp = "lp"
    spatial = "spatial"
    decoder_block = "decoder-block"
    ft_last = "ft-last"


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
    crop: Optional[int] = typer.Option(None, "--crop", min=8, help="Training crop side in voxels (default 32; the "
                                       "decoder block on trunks of feature size <= 12: 48)."),
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

    with user_errors(as_json):
        from edgeseg.train.adapt import AdaptConfig
        from edgeseg.runtime.lock import output_lock
        from edgeseg.train.adapt import adapt as run_adapt

        config = AdaptConfig(adapter=adapter.value, steps=steps, lr=lr, crop=crop, batch_size=batch_size, loss=loss,
                             holdout=holdout, max_minutes=max_minutes, ti=ti, ti_gamma=ti_gamma, ti_lambda=ti_lambda,
                             ti_warmup=ti_warmup, seed=seed, threads=threads)
        config.check()
        con = console(stderr=as_json)
        columns = (TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("loss {task.fields[loss]}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with output_lock(out, "edgeseg adapt"), Progress(*columns, console=con, transient=True) as bar:
            task = bar.add_task("adapt", total=None, loss="-")  # the step budget is known once the trunk is read
            manifest = run_adapt(cache_dir, out, config, force=force,
                                 progress=lambda e, total, value: bar.update(task, completed=e, total=total,
                                                                             loss=f"{value:.4f}"),
                                 log=printer(con))

        def text() -> None:
            held = manifest.get("heldout")
            con.print(f"[green]adapter[/] {escape(str(out))}: {manifest['adapter']} for {manifest['organ']}, "
                      f"{manifest['steps']} steps (kept step {manifest['kept_step']}"
                      + (f", held-out Dice {held['dice']:.3f}" if held else "") + f"), {manifest['wall_seconds']} s on "
                      f"{manifest['threads']} thread(s), peak RSS {manifest['peak_rss_gib']} GiB; stop: "
                      f"{escape(manifest['stopped'])}", highlight=False)

        show(manifest, as_json, text)

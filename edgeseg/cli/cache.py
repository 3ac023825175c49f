"""`edgeseg cache`: run the trunk once over the support scans and keep what adaptation samples."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import JSON_OPT, console, printer, show, user_errors
from edgeseg.runtime.support import BackendChoice


def cache(
    trunk: Path = typer.Option(..., "--trunk", help="An exported trunk folder (edgeseg export)."),
    data: Path = typer.Option(..., "--data", help="Support dataset: TotalSegmentator folder, nnU-Net/MSD folder or CSV (whose images may be DICOM series and labels DICOM-SEG)."),
    organ: str = typer.Option(..., "--organ", help="The structure to adapt to, as the dataset names it."),
    out: Path = typer.Option(..., "--out", help="Cache folder (memory-mapped fp16 features, labels, manifest)."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Number of support scans drawn from the dataset (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the support draw and the negative windows."),
    query: list[Path] = typer.Option([], "--query", help="Unlabelled scan(s) for the size prior (--ti); repeatable."),
    backend: BackendChoice = typer.Option(BackendChoice.AUTO, "--backend", case_sensitive=False,
                                          help="The trunk's backend (auto prints which ran)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the trunk."),
    force: bool = typer.Option(False, "--force", help="Replace an existing cache in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the trunk over the support (and query) scans once and cache what adaptation will sample."""
    from rich.markup import escape
    from rich.progress import Progress

    with user_errors(as_json):
        from edgeseg.features import CacheConfig, build_cache

        con = console(stderr=as_json)
        with Progress(console=con, transient=True) as bar:
            task = bar.add_task("caching features", total=None)
            config = CacheConfig(k=k, seed=seed, query=tuple(query), backend=backend.value, threads=threads, force=force)
            manifest = build_cache(trunk, data, organ, out, config,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total),
                                   log=printer(con))
        show(manifest, as_json, lambda: con.print(f"[green]cached[/] {escape(str(out))}", highlight=False))

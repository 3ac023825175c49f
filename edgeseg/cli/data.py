"""`edgeseg phantom` and `edgeseg dataset`: the scans that go in (synthetic, or a dataset on disk)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import JSON_OPT, console, show, user_errors
from edgeseg.cli.parse import parse_spacing


class DomainName(str, Enum):
    source = "source"
    target = "target"


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

    with user_errors(as_json):
        fixed = parse_spacing(spacing)
        from edgeseg.data import phantom as ph

        dom = ph.SOURCE if domain is DomainName.source else ph.TARGET
        with Progress(transient=True, disable=as_json) as bar:
            task = bar.add_task(f"phantoms ({dom.name})", total=n)
            cases = ph.write_dataset(out, n, seed, dom, spacing=fixed, force=force,
                                     progress=lambda i, total: bar.update(task, completed=i))
        previews = [_write_phantom_preview(case_dir, force=force) for case_dir in cases] if preview else []
        summary = {"out": str(out), "n": len(cases), "seed": seed, "domain": dom.name,
                   "cases": [str(c) for c in cases], "previews": [str(p) for p in previews]}
        show(summary, as_json,
             lambda: console().print(f"wrote {len(cases)} phantom scans ({dom.name} domain, seed {seed}) to [bold]{out}[/]"))


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


def dataset(
    path: Path = typer.Argument(..., help="A TotalSegmentator folder, an nnU-Net/MSD folder (dataset.json) or a CSV of image,label[,organ]."),
    organ: str = typer.Option(..., "--organ", help="The structure to segment, as the dataset names it."),
    check: bool = typer.Option(False, "--check", help="Also read every mask: grids match, values valid, organ present."),
    as_json: bool = JSON_OPT,
) -> None:
    """Say what a dataset holds for one organ: its layout, usable cases, and the cases that lack it."""
    with user_errors(as_json):
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

        def text() -> None:
            from rich.markup import escape

            con = console()
            con.print(f"{escape(str(path))}: {reader.layout} layout, organ {reader.organ!r}: "
                      f"{len(usable)} usable case(s){' (masks read)' if check else ''}", highlight=False)
            for prob in problems:
                con.print(f"  [yellow]{escape(prob['case'])}[/]: {escape(prob['reason'])}", highlight=False)

        show(result, as_json, text)

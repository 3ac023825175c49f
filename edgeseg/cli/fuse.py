"""`edgeseg fuse`: the trunk and adapters in one graph, an engine folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import JSON_OPT, console, printer, show, user_errors


def fuse(
    trunk: Path = typer.Option(..., "--trunk", help="The exported trunk folder the adapters were trained on."),
    adapter: list[Path] = typer.Option(..., "--adapter", help="Adapter folder(s); several give one graph with one head per organ."),
    out: Path = typer.Option(..., "--out", help="Engine folder: fused.fp32.onnx, fused.fp16.onnx, [plan], manifest.json."),
    precision: str = typer.Option("fp32,fp16", "--precision", help="Fused graphs to write: fp32, fp16, int8 (quantized from the fused fp32 graph: QDQ ONNX + OpenVINO IR; needs edgeseg[int8])."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="int8: NIfTI CTs to calibrate on, comma-separated (default: the shipped CT and a phantom of each scanner domain)."),
    calibration_windows: Optional[int] = typer.Option(None, "--calibration-windows", min=1, help="int8: calibration windows (default 12)."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="Also build a TensorRT engine (reuses the trunk's timing cache)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing engine in --out."),
    as_json: bool = JSON_OPT,
) -> None:
    """Merge the trunk graph with adapter graph(s) into one engine: CT window -> organ probabilities (parity-checked)."""
    from rich.markup import escape

    with user_errors(as_json):
        from edgeseg.cli.export import paths
        from edgeseg.export.fuse import fuse as run_fuse

        con = console(stderr=as_json)
        manifest = run_fuse(trunk, list(adapter), out, precisions=[p.strip() for p in precision.split(",")],
                            tensorrt=tensorrt, force=force, calibration=paths(calibration),
                            calibration_windows=calibration_windows, log=printer(con))
        show(manifest, as_json,
             lambda: con.print(f"[green]engine[/] {escape(str(out))}: organs {', '.join(manifest['organs'])}", highlight=False))

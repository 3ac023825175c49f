"""`edgeseg export` and `edgeseg checkpoint`: from a SwinUNETR checkpoint to a trunk folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import JSON_OPT, console, show, user_errors


class Cut(str, Enum):
    decoder1 = "decoder1"
    pre_decoder1 = "pre-decoder1"


def export(
    checkpoint: Path = typer.Argument(..., help="SwinUNETR checkpoint (.pt/.pth/.safetensors), any public layout."),
    out: Path = typer.Option(..., "--out", help="Folder for trunk.fp32.onnx, trunk.fp16.onnx, [trunk.int8.onnx/.xml], [plan] and manifest.json."),
    cut: Cut = typer.Option(Cut.decoder1, "--cut", help="decoder1: 48-ch full-res features (LP, spatial adapter); pre-decoder1: decoder1's inputs (decoder-block adapter, FT-Last)."),
    precision: str = typer.Option("fp32,fp16", "--precision", help="Graphs to write: fp32, fp16 (mixed: precision in the graph, for strongly typed TensorRT), int8 (post-training quantized: QDQ ONNX + OpenVINO IR; needs edgeseg[int8])."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="int8: NIfTI CTs to calibrate on, comma-separated (default: the shipped CT and a phantom of each scanner domain)."),
    calibration_windows: Optional[int] = typer.Option(None, "--calibration-windows", min=1, help="int8: calibration windows, spread over the CTs (default 12)."),
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
    with user_errors(as_json):
        import dataclasses

        from edgeseg.export.trunk import export_trunk
        from edgeseg.model.checkpoint import file_spec
        from edgeseg.model.spec import ModelSpec

        spec = ModelSpec.from_json(spec_file) if spec_file else None
        if feature_size is not None:
            spec = dataclasses.replace(spec or file_spec(checkpoint), feature_size=feature_size)
        con = console(stderr=as_json)
        from rich.markup import escape

        with con.status("exporting ...") as status:
            def log(msg: str) -> None:
                con.print(escape(msg), highlight=False)
                status.update(escape(msg.splitlines()[0][:100]))

            manifest = export_trunk(checkpoint, out, cut=cut.value, precisions=[p.strip() for p in precision.split(",")],
                                    max_batch=batch, tensorrt=tensorrt, spec=spec, allow_partial=allow_partial,
                                    threads=threads, force=force, calibration=paths(calibration),
                                    calibration_windows=calibration_windows, log=log)

        def text() -> None:
            sizes = ", ".join(f"{name} {entry['bytes'] / 1e6:.1f} MB" for name, entry in manifest["files"].items())
            con.print(f"[green]exported[/] {escape(str(out))}: {escape(sizes)}; parity passed for "
                      f"{', '.join(manifest['graphs'])}{' and TensorRT' if manifest['engines'] else ''}", highlight=False)

        show(manifest, as_json, text)


def paths(text: Optional[str]) -> list[Path] | None:
    """--calibration's comma-separated paths (None: the default calibration)."""
    return [Path(p.strip()) for p in text.split(",") if p.strip()] or None if text else None


def checkpoint(
    path: Path = typer.Argument(..., help="A SwinUNETR checkpoint (.pt/.pth/.safetensors) in any public layout."),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="Model spec JSON (default: the file's own, else inferred from the tensors)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Accept a trunk with missing tensors (e.g. encoder-only SSL weights)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Load a checkpoint safely (weights only) and report its layout, spec and what was loaded."""
    with user_errors(as_json):
        from edgeseg.model.checkpoint import load_checkpoint, sha256_file
        from edgeseg.model.spec import ModelSpec

        spec = ModelSpec.from_json(spec_file) if spec_file else None
        model, spec, report = load_checkpoint(path, spec, allow_partial=allow_partial)
        params = sum(p.numel() for p in model.parameters())

        def text() -> None:
            from rich.markup import escape

            con = console()
            con.print(escape(report.summary()), highlight=False)
            con.print(f"model: SwinUNETR feature_size {spec.feature_size}, depths {spec.depths}, "
                      f"{spec.out_channels} classes, {params:,} parameters", highlight=False)

        result = {"report": report.to_dict(), "spec": spec.to_dict(), "parameters": params,
                  "sha256": sha256_file(path)} if as_json else None
        show(result, as_json, text)

"""`edgeseg triton`: a Triton Inference Server model repository from a fused engine folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.output import JSON_OPT, console, printer, show, user_errors


class Device(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


class GraphPrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


def triton(
    engine: Path = typer.Argument(..., help="A fused engine folder (edgeseg fuse)."),
    out: Path = typer.Option(..., "--out", help="The model repository (created if needed); the model goes in OUT/NAME/."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name and folder (default: edgeseg_<organs>)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Triton's max_batch_size (default and limit: the batch range the engine was exported for)."),
    instances: int = typer.Option(1, "--instances", min=1, help="Model instances (instance_group count)."),
    device: Device = typer.Option(Device.gpu, "--device", help="Where the instances run (KIND_GPU or KIND_CPU)."),
    precision: Optional[GraphPrecision] = typer.Option(None, "--precision", help="ONNX graph to serve (default fp32 when the engine has it)."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="Serve the engine's TensorRT plan for this GPU (tensorrt_plan) instead of the ONNX graph."),
    force: bool = typer.Option(False, "--force", help="Replace a model folder edgeseg wrote there before."),
    as_json: bool = JSON_OPT,
) -> None:
    """Write a Triton model repository (config.pbtxt, the engine's graph or plan, README) for a fused engine."""
    from rich.markup import escape

    with user_errors(as_json):
        from edgeseg.runtime.triton import write_triton_model

        con = console(stderr=as_json)
        result = write_triton_model(engine, out, name=name, max_batch=max_batch, instances=instances,
                                    device=device.value, tensorrt=tensorrt,
                                    precision=precision.value if precision else None, force=force, log=printer(con))

        def text() -> None:
            checked = (f"parsed with {result['config_checked_with']}" if result["config_checked_with"]
                       else "not parsed with Triton's protobuf (pip install 'edgeseg[triton]')")
            con.print(f"[green]triton model[/] {escape(result['model_dir'])}: {result['platform']}, max_batch_size "
                      f"{result['max_batch_size']}, preferred {result['preferred_batch_sizes']}; config.pbtxt "
                      f"{escape(checked)}", highlight=False)
            con.print(f"serve: tritonserver --model-repository={escape(str(out.resolve()))}", highlight=False)

        show(result, as_json, text)

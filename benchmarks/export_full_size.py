"""Export the full-size trunk once and measure it: time, size, graph, fp16 conversion, ORT parity.

    .venv/bin/python benchmarks/export_full_size.py --feature-size 48

SwinUNETR with random weights (torch.manual_seed(0)), cut decoder1, one random window in [0, 1).
Measures: dynamo export time (per step), file size, node counts before/after onnxscript's optimizer,
the TorchScript exporter on the same model for comparison (time, nodes, ScatterND left), the fp16
conversion (time, size, nodes by precision, casts), and ONNX Runtime CPU (fp32 and fp16 graphs, each in
its own process so its peak memory is its own) against PyTorch eager: rel L2, seconds, peak RSS.
Prints the JSON and writes it to benchmarks/results/<machine>/export_full_size.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_tag, peak_rss_gib  # noqa: E402

from edgeseg.export.parity import rel_l2  # noqa: E402


def ort_worker(graph: str, x_path: str, y_path: str, threads: int) -> None:
    """Run one graph on ONNX Runtime CPU in this (child) process; print timings and peak memory."""
    import onnxruntime as ort

    x = np.load(x_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    t0 = time.perf_counter()
    sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    t1 = time.perf_counter()
    y = sess.run(None, {"image": x})[0]
    t2 = time.perf_counter()
    sess.run(None, {"image": x})
    t3 = time.perf_counter()
    np.save(y_path, y)
    print(json.dumps({"session_s": round(t1 - t0, 2), "first_run_s": round(t2 - t1, 2), "run_s": round(t3 - t2, 2),
                      "peak_rss_gib": peak_rss_gib()}))


def run_ort(graph: Path, x_path: Path, workdir: Path, threads: int) -> tuple[dict, np.ndarray]:
    y_path = workdir / f"{graph.stem}.out.npy"
    proc = subprocess.run([sys.executable, __file__, "--ort-worker", str(graph), str(x_path), str(y_path),
                           "--threads", str(threads)], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"ONNX Runtime on {graph} failed:\n{proc.stderr[-3000:]}")
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    return stats, np.load(y_path)


def torchscript_comparison(trunk, window, in_channels: int, workdir: Path) -> dict:
    import onnx_ir as ir
    import torch

    from edgeseg.export.onnx import optimize_graph

    path = workdir / "torchscript.onnx"
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(trunk, (torch.zeros(1, in_channels, *window),), str(path), dynamo=False,
                          input_names=["image"], output_names=["features"],
                          dynamic_axes={"image": {0: "N"}, "features": {0: "N"}}, opset_version=18)
    export_s = time.perf_counter() - t0
    model = ir.load(path)
    raw = Counter(n.op_type for n in model.graph)
    t1 = time.perf_counter()
    optimize_graph(model)
    opt = Counter(n.op_type for n in model.graph)
    return {
        "export_s": round(export_s, 2), "n_nodes": sum(raw.values()), "scatternd": raw["ScatterND"],
        "layernorm": raw["LayerNormalization"], "optimize_s": round(time.perf_counter() - t1, 2),
        "n_nodes_optimized": sum(opt.values()), "scatternd_optimized": opt["ScatterND"],
        "layernorm_optimized": opt["LayerNormalization"],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feature-size", type=int, default=48)
    p.add_argument("--window", type=int, default=96, help="cubic window side (default 96)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<machine>/export_full_size.json)")
    p.add_argument("--workdir", type=Path, default=None, help="where the graphs go (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-torchscript", action="store_true", help="skip the TorchScript exporter comparison")
    p.add_argument("--ort-worker", nargs=3, metavar=("GRAPH", "X", "Y"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ort_worker:
        ort_worker(*args.ort_worker, threads=args.threads)
        return {}

    import torch

    from edgeseg.export.fp16 import to_mixed_fp16
    from edgeseg.export.onnx import ExportSpec, export_trunk_onnx
    from edgeseg.model.spec import ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr, count_params, split
    from edgeseg.runtime.graph import inspect_graph
    from edgeseg.runtime.host import host_description
    from edgeseg.runtime.manifest import library_versions
    from edgeseg.runtime.preprocess import PreprocessSpec

    torch.set_num_threads(args.threads)
    window = (args.window,) * 3
    spec = ModelSpec(feature_size=args.feature_size, preprocess=PreprocessSpec(window=window))
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgeseg-export-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        torch.manual_seed(0)
        model = build_swinunetr(spec).eval()
        trunk, _ = split(model, "decoder1")
        trunk_params = count_params(trunk)
        x = np.random.default_rng(0).random((1, spec.in_channels, *window), dtype=np.float32)
        x_path = workdir / "x.npy"
        np.save(x_path, x)

        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = trunk(torch.from_numpy(x)).numpy()
        torch_s = time.perf_counter() - t0

        fp32_path = workdir / "trunk.onnx"
        exp = export_trunk_onnx(trunk, ExportSpec.for_model(spec, cut="decoder1"), fp32_path, force=True)
        info = inspect_graph(fp32_path, check=True)
        fp16_path = workdir / "trunk_fp16.onnx"
        f16 = to_mixed_fp16(fp32_path, fp16_path, force=True)

        ts = None if args.no_torchscript else torchscript_comparison(trunk, window, spec.in_channels, workdir)
        del model, trunk
        ort32, y32 = run_ort(fp32_path, x_path, workdir, args.threads)
        ort16, y16 = run_ort(fp16_path, x_path, workdir, args.threads)

        exp_d = exp.to_dict()
        result = {
            "benchmark": "export_full_size",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_tag(),
            "host": host_description(),
            "libraries": library_versions(),
            "threads": args.threads,
            "model": {"feature_size": args.feature_size, "window": list(window), "cut": "decoder1",
                      "weights": "random, torch.manual_seed(0)", "trunk_params": trunk_params,
                      "input": "numpy default_rng(0).random, [0, 1)"},
            "torch_eager": {"forward_s": round(torch_s, 2)},
            "export": {
                "exporter": exp_d["exporter"], "seconds": exp_d["seconds"], "seconds_by_step": exp_d["seconds_by_step"],
                "opset": exp_d["opset"], "bytes": exp_d["bytes"], "external_data": exp_d["data_path"] is not None,
                "n_nodes_unoptimized": exp_d["n_nodes_unoptimized"], "n_nodes": exp_d["n_nodes"],
                "op_counts": exp_d["op_counts"], "layernorm": info["op_counts"].get("LayerNormalization", 0),
                "scatternd": info["op_counts"].get("ScatterND", 0),
            },
            "torchscript_exporter": ts,
            "fp16": {k: v for k, v in f16.to_dict().items() if k not in ("src", "path", "data_path")},
            "onnxruntime_cpu": {
                "fp32": {**ort32, "rel_l2_vs_torch": rel_l2(ref, y32)},
                "fp16": {**ort16, "rel_l2_vs_torch": rel_l2(ref, y16), "rel_l2_vs_fp32": rel_l2(y32, y16)},
            },
            "peak_rss_gib_main_process": peak_rss_gib(),
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    out = args.out or ROOT / "benchmarks" / "results" / result["machine"] / "export_full_size.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    out.write_text(text + "\n")
    print(text)
    print(f"written: {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

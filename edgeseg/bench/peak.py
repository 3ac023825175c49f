"""The machine's measured peaks, and the physical floor of a window against them.

`measure_peaks` times what the hardware can do at best on this machine, with the same thread count as
the benchmark: dense matrix products (torch.matmul, 2048^2 on a CPU, 8192^2 on a GPU) per precision,
and memory bandwidth (one large tensor copied: bytes read + bytes written, per second). These are
measured, not datasheet numbers, so a "fraction of peak" compares like with like.

`floor` turns them into the least time one window can take: FLOPs / peak for its compute precision,
and bytes / bandwidth, where the bytes are a true lower bound (the weights read once, the input read
once, the outputs written once; intermediates are left out, as a fused kernel could keep them in
cache). The larger of the two is the floor; measured / floor says how far a backend is from it.
"""

from __future__ import annotations

import functools
import time
from typing import Any

# the precision a configuration's matrix products run in (ONNX Runtime's x86 CPU provider computes its
# fp16 graph in fp32; OpenVINO's bf16 hint and torch's bf16 autocast use bf16 products)
# int8: no int8 peak is measured, so an int8 row's floor is its memory floor only (never the fp32 peak's)
COMPUTE_PRECISION = {"cpu": {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8"},
                     "cuda": {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8"},
                     "tensorrt": {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8"}}


def _best_rate(fn, work: float, *, seconds: float, sync=lambda: None) -> float:
    """work / the fastest of repeated calls of fn, over about `seconds` of calls (after one warm-up)."""
    fn()
    sync()
    best, t_end = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            return work / best


def measure_peaks(device: str = "cpu", *, threads: int | None = None, seconds: float = 2.0,
                  precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> dict[str, Any]:
    """Measured matmul TFLOP/s per precision and copy bandwidth (GB/s) on `device` ("cpu" or "cuda")."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n = 8192 if dev.type == "cuda" else 2048
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    out: dict[str, Any] = {"device": device, "threads": torch.get_num_threads() if dev.type == "cpu" else None,
                           "matmul_n": n, "tflops": {}, "notes": []}
    if dev.type == "cuda":
        out["notes"].append(f"fp32 products with TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    for name in precisions:
        if dev.type == "cpu" and name == "fp16":
            continue  # no x86 fp16 matrix units here: the backends compute fp16 graphs in fp32
        a = torch.randn(n, n, device=dev).to(dtypes[name])
        b = torch.randn(n, n, device=dev).to(dtypes[name])
        rate = _best_rate(functools.partial(torch.matmul, a, b), 2.0 * n**3, seconds=seconds, sync=sync)
        out["tflops"][name] = round(rate / 1e12, 4)
    size = (1 << 30) if dev.type == "cuda" else (256 << 20)  # bytes per buffer: far beyond any cache
    src = torch.ones(size // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    rate = _best_rate(functools.partial(dst.copy_, src), 2.0 * size, seconds=seconds, sync=sync)
    out["bandwidth_gbs"] = round(rate / 1e9, 2)
    return out


def floor(flops: float | None, nbytes: float | None, peaks: dict[str, Any] | None, device: str,
          precision: str) -> dict[str, Any] | None:
    """The least time per window on this machine, from its measured peaks (None when nothing is known)."""
    if not peaks:
        return None
    compute = COMPUTE_PRECISION.get(device, COMPUTE_PRECISION["cpu"]).get(precision, "fp32")
    tflops = (peaks.get("tflops") or {}).get(compute)
    bw = peaks.get("bandwidth_gbs")
    compute_s = flops / (tflops * 1e12) if flops and tflops else None
    memory_s = nbytes / (bw * 1e9) if nbytes and bw else None
    known = [s for s in (compute_s, memory_s) if s is not None]
    if not known:
        return None
    return {"compute_precision": compute, "peak_tflops": tflops, "bandwidth_gbs": bw,
            "compute_s": None if compute_s is None else round(compute_s, 5),
            "memory_s": None if memory_s is None else round(memory_s, 5),
            "floor_s": round(max(known), 5), "bound": "compute" if compute_s == max(known) else "memory"}


def fraction_of_floor(floor_row: dict[str, Any] | None, seconds_per_window: float | None) -> float | None:
    """floor / measured: 1.0 would be the hardware's measured peak; None when either is unknown."""
    if not floor_row or not seconds_per_window or seconds_per_window <= 0:
        return None
    return round(floor_row["floor_s"] / seconds_per_window, 4)


def graph_bytes(path) -> dict[str, int]:
    """Lower-bound bytes per window of an ONNX graph: its initializers (weights, read once per batch)
    and its inputs and outputs per window (a dynamic axis, the batch, counted as 1)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    size = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
            onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4}

    def count(dims) -> int:
        n = 1
        for d in dims:
            n *= max(int(d), 1)
        return n

    weights = sum(count(t.dims) * size.get(t.data_type, 4) for t in model.graph.initializer)
    inits = {t.name for t in model.graph.initializer}
    io = 0
    for v in [*[v for v in model.graph.input if v.name not in inits], *model.graph.output]:
        tt = v.type.tensor_type
        io += count(d.dim_value for d in tt.shape.dim) * size.get(tt.elem_type, 4)
    return {"weights": int(weights), "io_per_window": int(io), "per_window": int(weights + io)}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Measure this machine's matmul and bandwidth peaks.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    print(json.dumps(measure_peaks(args.device, threads=args.threads, seconds=args.seconds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""edgeseg.bench: the measurements behind `edgeseg bench` and benchmarks/results/.

- `stats`: percentiles (numpy's linear interpolation) and the latency summary of every row
- `flops`: FLOPs counted from an ONNX graph's static shapes (Conv, ConvTranspose, MatMul, Gemm)
- `configs`: every backend/device/precision configuration, and why one is skipped here (`plan`)
- `runner` / `worker`: one measurement per process (peak RSS and GPU memory of its own)
- `windows`: `bench trunk|engine`; `scan`: `bench scan`; `adapt`: `bench adapt` (and benchmarks/adapt_memory.py)
- `report`: rich table, Markdown, JSON, PNG; `schema`: what the JSON must hold
- `machine`: the machine's tag and description; `artifacts`: seeded random-weight trunks and engines to bench

Nothing here is imported by `edgeseg --help`; torch, onnx and matplotlib load only where used.
"""

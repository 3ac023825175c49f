"""NNCF's settings against OpenVINO speed, side by side: the fs48 trunk quantized with the shipped settings
(`export.int8.NNCF_SETTINGS`, model_type TRANSFORMER) and without a model type (every compute layer, the
activation-by-activation MatMuls of attention too), each timed on one 96^3 window beside OpenVINO bf16 on the
fp32 graph, in one process, alone on the machine. rel L2 is against the bf16 output (a seeded random trunk:
the mask flips of each setting through the shipped model's trained head are in export/int8.py's comment).

    .venv/bin/python benchmarks/int8_variants.py --trunk /tmp/edgeseg-bench-cpu/trunk-fs48-decoder1-int8
        -> benchmarks/results/<machine>/int8_variants.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_tag, write_result  # noqa: E402

VARIANTS = {"transformer (shipped)": None,  # export.int8.NNCF_SETTINGS
            "no model type": {"preset": "PERFORMANCE", "model_type": None, "ignored_types": []}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trunk", type=Path, default=Path("/tmp/edgeseg-bench-cpu/trunk-fs48-decoder1-int8"),
                    help="an exported trunk folder with trunk.fp32.onnx (run_cpu.sh's int8 step makes one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import openvino as ov

    from edgeseg.bench.machine import describe
    from edgeseg.export.int8 import NNCF_SETTINGS, calibration_windows, quantize_nncf
    from edgeseg.model.spec import ModelSpec
    from edgeseg.runtime.artifacts.trunk import TrunkManifest
    from edgeseg.runtime.manifest import library_versions

    manifest = TrunkManifest.from_folder(args.trunk, verify_files=False)
    spec = ModelSpec.from_dict(dict(manifest.model_spec))
    src = args.trunk / "trunk.fp32.onnx"
    cal = calibration_windows(spec)
    window = cal.windows[0]
    core = ov.Core()
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        graphs = [("bf16 (fp32 graph)", src, None)]
        for name, settings in VARIANTS.items():
            dst = Path(tmp) / f"v{len(graphs)}.int8.xml"
            done = quantize_nncf(src, dst, cal, settings=settings, force=True)
            graphs.append((name, dst, done))
            print(f"{name}: quantized in {done['seconds']:.0f} s, {done['fake_quantize_nodes']} FakeQuantize", flush=True)
        for name, path, done in graphs:
            compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": args.threads,
                                                            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"})
            req = compiled.create_infer_request()
            req.infer({0: window})  # warm-up
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                out = req.infer({0: window})
                times.append(time.perf_counter() - t0)
            y = np.asarray(next(iter(out.values())), dtype=np.float32)
            ref = y if ref is None else ref
            rows.append({"graph": name, "settings": (done or {}).get("settings", None if done is None else NNCF_SETTINGS),
                         "fake_quantize_nodes": (done or {}).get("fake_quantize_nodes"),
                         "ms_per_window": round(1000 * float(np.median(times)), 1),
                         "rel_l2_vs_bf16": round(float(np.linalg.norm(y - ref) / np.linalg.norm(ref)), 4)})
            print(rows[-1], flush=True)
    base = rows[0]["ms_per_window"]
    for r in rows:
        r["speedup_vs_bf16"] = round(base / r["ms_per_window"], 3)
    result = {"benchmark": "int8_variants", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_tag(), "host": describe(), "libraries": library_versions(), "threads": args.threads,
              "trunk": args.trunk.name, "window": list(window.shape), "runs": args.runs,
              "weights": "random, torch.manual_seed(0) (timing only)", "rows": rows}
    print(f"wrote {write_result('int8_variants', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end per scan with the full-size model: wall time per stage and peak RSS, for the shipped real CT
and a 512 x 512 x 300 phantom, on the fastest CPU backend.

    .venv/bin/python benchmarks/predict_scan.py --backend openvino      # about 10 minutes on 2 cores

Builds a feature_size 48 SwinUNETR with seeded random weights (the timing does not depend on the
weights), exports its decoder1 trunk (fp32), saves an untrained linear-probe adapter for "liver"
through the same adapter writer `edgeseg adapt` uses, fuses them, then runs `edgeseg predict` in a
separate process per scan (so its peak RSS is its own) and collects the per-scan reports.
Writes benchmarks/results/<machine>/predict_scan.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_tag, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--feature-size", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from edgeseg.adapters import build_adapter
    from edgeseg.assets import EXAMPLE_CT
    from edgeseg.data.phantom import generate_case, write_case
    from edgeseg.export.adapter import save_adapter
    from edgeseg.export.fuse import fuse
    from edgeseg.export.trunk import export_trunk
    from edgeseg.model.checkpoint import save_checkpoint
    from edgeseg.model.spec import ModelSpec
    from edgeseg.model.swinunetr import build_swinunetr
    from edgeseg.runtime.artifacts.adapter import AdapterIO, AdapterManifest
    from edgeseg.runtime.artifacts.trunk import TrunkManifest
    from edgeseg.runtime.manifest import host_description, library_versions

    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgeseg-predict-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(feature_size=args.feature_size, out_channels=1, class_names=("liver",))
    torch.manual_seed(0)
    ckpt = work / "random.safetensors"
    save_checkpoint(build_swinunetr(spec), spec, ckpt, force=True)
    trunk = work / "trunk"
    if not (trunk / "manifest.json").exists():
        export_trunk(ckpt, trunk, precisions=("fp32",), threads=args.threads, log=print)
    trunk_manifest = TrunkManifest.from_folder(trunk, verify_files=False)
    adapter_dir = work / "adapter"
    if not (adapter_dir / "manifest.json").exists():
        body = AdapterManifest(adapter="lp", organ="liver", cut="decoder1", feature_size=args.feature_size,
                               trunk_manifest_sha256=trunk_manifest.record["manifest_sha256"],
                               io=AdapterIO(("features",)),
                               extra={"init": {"block": "random", "head": "random"},
                                      "trainable_params": args.feature_size + 1, "note": "untrained: for timing only"})
        save_adapter(build_adapter("lp", feature_size=args.feature_size), adapter_dir, body, force=True)
    engine = work / "engine"
    if not (engine / "manifest.json").exists():
        fuse(trunk, [adapter_dir], engine, precisions=("fp32",), log=print)

    big = work / "phantom512"
    if not (big / "ct.nii.gz").exists():
        case = generate_case(0, spacing=(0.78, 0.78, 1.5), z_range=(-300, 150), max_voxels=100_000_000)
        write_case(case, big, force=True)

    rows = {}
    for name, scan in (("real_ct", EXAMPLE_CT), ("phantom_512", big / "ct.nii.gz")):
        out = work / f"pred-{name}"
        cmd = [sys.executable, "-m", "edgeseg", "predict", str(scan), "--engine", str(engine), "--out", str(out),
               "--backend", args.backend, "--threads", str(args.threads), "--force", "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            rows[name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
        else:
            rows[name] = json.loads(proc.stdout)[0]
        print(name, json.dumps({k: rows[name].get(k) for k in ("shape", "model_grid", "windows", "seconds",
                                                                "total_seconds", "peak_rss_gib", "ran")}), flush=True)

    result = {"benchmark": "predict_scan", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_tag(), "host": host_description(), "libraries": library_versions(),
              "threads": args.threads, "backend": args.backend, "feature_size": args.feature_size,
              "weights": "random, torch.manual_seed(0); untrained LP head (timing only)", "scans": rows}
    print(f"wrote {write_result('predict_scan', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

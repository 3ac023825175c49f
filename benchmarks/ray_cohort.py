"""A cohort on Ray against the local loop: scans per minute on the same inputs, on this machine.

    .venv/bin/python benchmarks/ray_cohort.py --engine out/demo/engine --scans 12     # after `make demo`

Writes N target-scanner phantoms at the engine's spacing (`out/bench-ray/scans`, made once), then runs
`edgeseg predict` over them three ways, each in its own process into a fresh output folder, as a user
would: the local loop (`--threads` threads), Ray with 1 actor (`--cpus-per-actor` = those threads) and
Ray with 2 actors (half the threads each). Each time is the whole command: Python start, engine load,
Ray start (a local Ray, `--ray auto`, started and stopped by the command) and every scan. It also
times a bare `ray.init` + `ray.shutdown` (the fixed cost a cohort pays once), reads each run's
`cohort.json` (its per-case seconds) and compares every mask with the local run's (voxels that differ:
0 at the same thread count; OpenVINO's kernels split work by thread count, so 2 actors at half the
threads may differ in rounding).

Per GPU: no GPU has been measured here. `ratio_to_local` of the 1-actor run is the Ray loop's cost on
one device; a GPU's cohort throughput per GPU is its local scans/min times that ratio, once measured.
Writes benchmarks/results/<machine>/ray_cohort.json (paths in it relative to the repository).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_tag, write_result  # noqa: E402


def rel(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name


def run(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=ROOT / "out" / "demo" / "engine",
                    help="an engine folder (default: the demo's, made by `make demo`)")
    ap.add_argument("--scans", type=int, default=12, help="phantoms in the cohort")
    ap.add_argument("--threads", type=int, default=2, help="inference threads of the local run and of 1 actor")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench-ray")
    ap.add_argument("--name", default="ray_cohort", help="result file name (without .json)")
    args = ap.parse_args()

    import nibabel as nib
    import numpy as np

    from edgeseg.data.phantom import TARGET, write_dataset
    from edgeseg.runtime.artifacts.engine import EngineManifest
    from edgeseg.runtime.manifest import host_description, library_versions

    if not (args.engine / "manifest.json").exists():
        print(f"{args.engine}: no engine there; run `make demo` first (it writes out/demo/engine) or pass --engine DIR",
              file=sys.stderr)
        return 2
    engine = EngineManifest.from_folder(args.engine)
    work = args.workdir.resolve()
    scans = work / "scans"
    if len(list(scans.glob("*.nii.gz"))) != args.scans:
        phantoms = work / "phantoms"
        write_dataset(phantoms, args.scans, seed=17, domain=TARGET, spacing=engine.preprocess.spacing[0], force=True)
        scans.mkdir(parents=True, exist_ok=True)
        for old in scans.glob("*.nii.gz"):
            old.unlink()
        for case in sorted(p for p in phantoms.iterdir() if p.is_dir()):
            (scans / f"{case.name}.nii.gz").write_bytes((case / "ct.nii.gz").read_bytes())
    inputs = sorted(scans.glob("*.nii.gz"))
    edgeseg = [sys.executable, "-m", "edgeseg", "predict", str(scans), "--engine", str(args.engine.resolve()),
               "--backend", args.backend, "--json"]
    half = max(1, args.threads // 2)
    configs = {
        "local": ["--threads", str(args.threads)],
        "ray_1_actor": ["--ray", "auto", "--actors", "1", "--cpus-per-actor", str(args.threads)],
        "ray_2_actors": ["--ray", "auto", "--actors", "2", "--cpus-per-actor", str(half)],
    }
    probe = "import ray, time; t = time.perf_counter(); ray.init(include_dashboard=False); ray.shutdown(); " \
            "print(time.perf_counter() - t)"
    _, proc = run([sys.executable, "-c", probe], work)
    ray_start = float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    results: dict[str, dict] = {}
    for name, extra in configs.items():
        out = work / name
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        wall, proc = run([*edgeseg, "--out", str(out), *extra], work)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        reports = [e for e in json.loads(proc.stdout) if not e.get("skipped")]
        r = {"command": " ".join(["edgeseg predict", rel(scans), "--engine", rel(args.engine), "--out", rel(out),
                                  "--backend", args.backend, *extra]),
             "wall_s": round(wall, 2), "scans": len(reports), "scans_per_minute": round(len(reports) / wall * 60, 3),
             "ran": reports[0]["ran"]["backend"] + " " + reports[0]["ran"]["precision"],
             "threads": reports[0]["ran"]["detail"].get("threads") if isinstance(reports[0]["ran"].get("detail"), dict)
             else None,
             "seconds_per_scan_mean": round(float(np.mean([x["total_seconds"] for x in reports])), 3),
             "inference_s_mean": round(float(np.mean([x["seconds"]["inference"] for x in reports])), 3)}
        if name != "local":
            summary = json.loads((out / "cohort.json").read_text())
            r["cohort_wall_s"], r["nodes"] = summary["wall_seconds"], sorted({x["node"] for x in summary["rows"]})
            differ = 0
            for x in reports:
                for f in x["outputs"]:
                    a = np.asarray(nib.load(out / f).dataobj)
                    b = np.asarray(nib.load(work / "local" / f).dataobj)
                    differ += int((a != b).sum())
            r["voxels_differing_from_local"] = differ
        results[name] = r
        print(f"{name}: {r['scans_per_minute']} scans/min ({r['wall_s']} s for {r['scans']})", flush=True)
    local = results["local"]["scans_per_minute"]
    for name in ("ray_1_actor", "ray_2_actors"):
        results[name]["ratio_to_local"] = round(results[name]["scans_per_minute"] / local, 3)
    shape = nib.load(inputs[0]).shape
    result = {
        "what": "edgeseg predict over one cohort: the local loop against Ray Data with 1 and 2 actors (local Ray)",
        "when": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_tag(), "host": host_description(), "libraries": library_versions(),
        "engine": rel(args.engine), "organs": list(engine.organs), "scans": len(inputs), "scan_shape": list(shape),
        "ray_start_and_stop_s": None if ray_start is None else round(ray_start, 2), "runs": results,
        "per_gpu": "not measured: no GPU here. A GPU's cohort rate per GPU = its local scans/min x "
                   "runs.ray_1_actor.ratio_to_local",
    }
    dest = write_result(args.name, result)
    print(f"wrote {rel(dest)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

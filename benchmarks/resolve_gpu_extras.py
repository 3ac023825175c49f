"""Resolve edgeseg's GPU extras in fresh venvs and keep the versions pip picks (no GPU, nothing installed).

    python benchmarks/resolve_gpu_extras.py [--python 3.11 3.10] [--extras gpu trt ...] [--out DIR]
    python benchmarks/resolve_gpu_extras.py --ort-links 1.18.1 1.19.2 ... [--out DIR]

`--ort-links` instead downloads each onnxruntime-gpu release's wheel (~250 MB each, one at a time,
deleted after) and records the libraries its CUDA and TensorRT providers link (their ELF NEEDED
entries, read by edgeseg.runtime.gpu_pairs.needed_libraries) in `DIR/ort_gpu_links.json`: the
measurement behind gpu_pairs.ORT_GPU_BUILDS.

For each Python and extra: `pip install --dry-run --ignore-installed --report R '.[extra]'` from this
checkout in a new venv, and the name/version of every distribution in the report (no paths) goes to
`DIR/<extra>-py<python>.json`.

TensorRT's PyPI packages cannot be resolved to the end here: `tensorrt-cuNN-libs` is a placeholder sdist
(build backend `wheel_stub`) whose metadata step downloads the real wheel from NVIDIA's own index, which
this machine cannot reach. Then the extract records the chain pip resolved before it stopped (from pip's
"Collecting"/"Downloading" lines) and the error, and a second dry-run resolves everything else: the extra
with the TensorRT requirement replaced by the PyPI wheel `tensorrt-cuNN-bindings==<the version pip chose>`.
The libs wheel's own dependencies are not visible from here.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXTRAS = ["gpu", "gpu-cu12", "trt", "trt-cu12", "trt11", "gpu,trt", "gpu-cu12,trt-cu12"]
# pip's progress lines: "Downloading tensorrt_cu13-10.16.1.11.tar.gz" or "Using cached onnxruntime_gpu-1.31.1-cp311-...whl"
ARCHIVE = re.compile(r"(?:Downloading|Using cached) ([A-Za-z0-9_.]+?)-(\d[\w.]*?)(?:\.tar\.gz|-[^ ]*\.whl)")
STUB = re.compile(r"installation of (\S+) for version (\S+) failed")


def _venv(python: str, where: Path) -> Path:
    exe = shutil.which(f"python{python}")
    if exe is None:
        raise SystemExit(f"python{python} not found on PATH")
    subprocess.run([exe, "-m", "venv", str(where)], check=True)
    py = where / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    return py


def _dry_run(py: Path, requirements: list[str], report: Path) -> subprocess.CompletedProcess:
    cmd = [str(py), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report), *requirements]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)


def _resolved(report: Path) -> dict[str, str]:
    data = json.loads(report.read_text())
    return dict(sorted((i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"]) for i in data["install"]))


def _requirements(extras: str) -> list[str]:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return [req for extra in extras.split(",") for req in table[extra]]


def resolve(py: Path, python: str, extras: str, out: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="resolve-"))
    result: dict = {"extras": extras, "python": python, "pip": subprocess.run([str(py), "-m", "pip", "--version"],
                    capture_output=True, text=True).stdout.split()[1], "platform": f"{platform.system()} {platform.machine()}",
                    "date": date.today().isoformat(), "command": f"pip install --dry-run --ignore-installed --report R '.[{extras}]'"}
    proc = _dry_run(py, [f".[{extras}]"], work / "report.json")
    if proc.returncode == 0:
        result.update(complete=True, resolved=_resolved(work / "report.json"))
    else:
        log = proc.stdout + proc.stderr
        stub = STUB.search(log)
        if stub is None:
            raise SystemExit(f"{extras} on Python {python} did not resolve:\n{log[-3000:]}")
        chain = {m.group(1).lower().replace("_", "-"): m.group(2) for m in ARCHIVE.finditer(log)}
        name, version = stub.group(1).lower().replace("_", "-"), stub.group(2)
        bindings = name.replace("-libs", "-bindings")
        # the rest of the extra, TensorRT replaced by its bindings wheel (on PyPI) at the version pip chose
        rest = [r for r in _requirements(extras) if not r.startswith("tensorrt")]
        marker = next((r.split(";", 1)[1] for r in _requirements(extras)
                       if r.startswith(name.removesuffix("-libs")) and ";" in r), None)
        rest.append(f"{bindings}=={version}" + (f"; {marker.strip()}" if marker else ""))
        second = _dry_run(py, [".", *rest], work / "rest.json")
        if second.returncode != 0:
            raise SystemExit(f"{extras} without TensorRT did not resolve:\n{(second.stdout + second.stderr)[-3000:]}")
        result.update(
            complete=False,
            stopped_at={"distribution": name, "version": version,
                        "why": "placeholder sdist (wheel_stub): its metadata step downloads the real wheel from "
                               "NVIDIA's index, which this machine cannot reach"},
            tensorrt_chain={k: v for k, v in chain.items() if k.startswith("tensorrt")},
            second_command=f"pip install --dry-run --ignore-installed --report R . {' '.join(repr(r) for r in rest)}",
            resolved=_resolved(work / "rest.json"),
        )
    shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{extras.replace(',', '+')}-py{python}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return result


def ort_links(python: str, versions: list[str], out: Path) -> dict:
    import zipfile

    sys.path.insert(0, str(ROOT))
    from runtime.gpu_pairs import needed_libraries  # the same reader `edgeseg info` uses

    keep = re.compile(r"lib(cudart|cudnn|cublas|nvinfer|nvonnxparser)\.so\.")
    table = {}
    for version in versions:
        with tempfile.TemporaryDirectory(prefix="ortgpu-") as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                            "--python-version", python, "--platform", "manylinux_2_28_x86_64", "-d", tmp,
                            f"onnxruntime-gpu=={version}"], check=True)
            wheel = next(Path(tmp).glob("*.whl"))
            row = {"wheel": wheel.name}
            with zipfile.ZipFile(wheel) as z:
                for provider in ("cuda", "tensorrt"):
                    member = f"onnxruntime/capi/libonnxruntime_providers_{provider}.so"
                    z.extract(member, tmp)
                    row[provider] = [n for n in needed_libraries(Path(tmp) / member) or [] if keep.match(n)]
            table[version] = row
            print(version, row, flush=True)
    result = {"what": "NEEDED entries (CUDA, cuDNN, cuBLAS, TensorRT) of onnxruntime-gpu's provider libraries, "
                      "PyPI wheels for Linux x86_64", "python": python, "date": date.today().isoformat(), "releases": table}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ort_gpu_links.json"
    path.with_suffix(".json.tmp").write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".json.tmp").replace(path)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", nargs="+", default=["3.11", "3.10"])
    ap.add_argument("--extras", nargs="+", default=DEFAULT_EXTRAS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu-resolve")
    ap.add_argument("--ort-links", nargs="+", metavar="VERSION", help="onnxruntime-gpu releases whose wheels to inspect")
    args = ap.parse_args()
    if args.ort_links:
        ort_links(args.python[0], args.ort_links, args.out)
        return
    for python in args.python:
        with tempfile.TemporaryDirectory(prefix=f"venv{python}-") as tmp:
            py = _venv(python, Path(tmp) / "venv")
            for extras in args.extras:
                r = resolve(py, python, extras, args.out)
                picked = {k: v for k, v in r["resolved"].items() if k.startswith(("onnxruntime", "tensorrt", "cuda-", "nvidia-"))}
                print(f"py{python} [{extras}] complete={r['complete']} {r.get('tensorrt_chain', '')} {picked}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

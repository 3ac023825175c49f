"""The GPU check's environment, on a machine with no network: which wheels it lacks, installing them, and a
loud refusal naming what is still missing. Torch-free and edgeseg-free (it runs before edgeseg is installed).

    python benchmarks/gpu_env.py stamp benchmarks/wheels            # here, after building the edgeseg wheel
    python benchmarks/gpu_env.py install --wheels benchmarks/wheels --target DIR   # there: only what is missing
    PYTHONPATH=DIR python benchmarks/gpu_env.py check                # there: every requirement met, or exit 2

What edgeseg needs is read from pyproject.toml (the base dependencies, the `cpu` and `train` extras; matplotlib,
used only for plots, is optional). `install` picks, from the wheels folder, each distribution that is
missing here or whose version does not meet edgeseg's requirement, plus edgeseg itself, and installs
them with pip --no-index --no-deps into --target (nothing reaches for a network; the machine's own
packages are left as they are). `check` then verifies every requirement, the requirements of each wheel
installed, a CUDA build of torch that sees a GPU, and that the edgeseg wheel was built from this tree
(`stamp` records a hash of the package sources beside it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("edgeseg", "export", "runtime")  # what the edgeseg wheel is built from (pyproject's package-dir)
STAMP = "edgeseg-src.sha256"
OPTIONAL = {"matplotlib"}  # plots only: gpu_check writes none
FIX = "build the wheels here with bash benchmarks/gpu_wheels.sh and carry benchmarks/wheels"

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pip vendors it: a bare machine has pip
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]


def source_hash(root: Path = ROOT) -> str:
    """sha256 over the package sources (paths and contents, sorted) and pyproject.toml."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for d in PACKAGE_DIRS:
        files += [p for p in (root / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def requirements(root: Path = ROOT) -> list[Requirement]:
    """edgeseg's base dependencies, its `cpu` extra (the GPU machines carry ONNX Runtime for the CPU, which
    `edgeseg predict` runs there) and its `train` extra, plus torch (which the train extra names too)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in [*project["dependencies"], *extras["cpu"], *extras["train"]]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def wheels(folder: Path) -> dict[str, tuple[str, Path]]:
    """canonical name -> (version, path) of each wheel in `folder` (refused: two versions of one name)."""
    out: dict[str, tuple[str, Path]] = {}
    for w in sorted(folder.glob("*.whl")):
        name, version = w.name.split("-")[:2]
        key = canonicalize_name(name)
        if key in out:
            sys.exit(f"error: two wheels of {key} in {folder}: {out[key][1].name} and {w.name}; keep one")
        out[key] = (version, w)
    return out


def unmet(reqs, *, skip_optional: bool = True) -> list[str]:
    """Requirements not met here, each as 'name (needs SPEC, has VERSION or nothing)'."""
    problems = []
    for r in reqs:
        if skip_optional and canonicalize_name(r.name) in OPTIONAL:
            continue
        have = installed(r.name)
        if have is None or (r.specifier and not r.specifier.contains(Version(have), prereleases=True)):
            problems.append(f"{r.name} (needs {r.specifier or 'any version'}, has {have or 'nothing'})")
    return problems


def cmd_stamp(args) -> int:
    folder = Path(args.folder)
    if not list(folder.glob("edgeseg-*.whl")):
        sys.exit(f"error: no edgeseg wheel in {folder}; fix: {FIX}")
    (folder / STAMP).write_text(source_hash() + "\n")
    return 0


def cmd_install(args) -> int:
    folder = Path(args.wheels)
    have = wheels(folder) if folder.is_dir() else {}
    if "edgeseg" not in have:
        sys.exit(f"error: no edgeseg wheel in {folder}; fix: {FIX}")
    stamp = folder / STAMP
    if not stamp.exists() or stamp.read_text().strip() != source_hash():
        sys.exit(f"error: {have['edgeseg'][1].name} was not built from this tree (its sources changed since); fix: {FIX}")
    picked, kept = [have["edgeseg"][1]], []
    for r in requirements():
        key = canonicalize_name(r.name)
        if not unmet([r], skip_optional=False):
            kept.append(f"{r.name} {installed(r.name)}")
        elif key in have:
            picked.append(have[key][1])
    # what the picked wheels need that the machine lacks, when the folder has it (typer -> click, ...)
    for w in list(picked):
        for line in _wheel_requires(w):
            r = Requirement(line)
            key = canonicalize_name(r.name)
            if (r.marker is None or r.marker.evaluate()) and unmet([r], skip_optional=False) and key in have \
                    and have[key][1] not in picked:
                picked.append(have[key][1])
    print(f"already here: {', '.join(kept) or 'none'}")
    print(f"installing into {args.target}: {', '.join(p.name for p in picked)}")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(args.target), *map(str, picked)]
    env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}  # root on the lent machine; it is thrown away after
    return subprocess.run(cmd, env=env).returncode


def _wheel_requires(path: Path) -> list[str]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def cmd_check(args) -> int:
    problems: dict[str, str] = {}  # name -> what is wrong
    for p in unmet(requirements()):
        problems.setdefault(p.split()[0], p)
    if installed("edgeseg") is None:
        problems["edgeseg"] = "edgeseg (not installed)"
    for dist in ("edgeseg", "monai", "nibabel", "typer", "rich", "einops", "safetensors"):  # what each needs in turn
        try:
            reqs = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        for line in reqs:
            r = Requirement(line)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                for p in unmet([r]):
                    problems.setdefault(p.split()[0], f"{p} [needed by {dist}]")
    try:
        import torch

        if not args.cpu and (torch.version.cuda is None or not torch.cuda.is_available()):
            problems["cuda"] = (f"a CUDA GPU for torch {torch.__version__} ("
                                + ("CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no device visible")
                                + ")")
    except ImportError:
        problems["torch"] = "torch (not installed: the GPU machine's own CUDA build is used)"
    print("edgeseg needs: " + ", ".join(f"{r.name} {installed(r.name) or 'MISSING'}" for r in requirements()))
    if problems:
        print("error: the GPU check cannot run here; missing or too old:\n  " + "\n  ".join(problems.values())
              + f"\nfix: {FIX} (add a wheel there for anything else listed; torch must be the machine's own CUDA "
                "build)", file=sys.stderr)
        return 2
    print("environment ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stamp")
    s.add_argument("folder")
    i = sub.add_parser("install")
    i.add_argument("--wheels", default=str(ROOT / "benchmarks" / "wheels"))
    i.add_argument("--target", required=True)
    c = sub.add_parser("check")
    c.add_argument("--cpu", action="store_true", help="no GPU needed (gpu_check.py --smoke)")
    args = ap.parse_args(argv)
    return {"stamp": cmd_stamp, "install": cmd_install, "check": cmd_check}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The wheels a lent GPU machine lacks (no network there: PyTorch with CUDA, onnx, onnxscript, ONNX Runtime CPU,
# numpy, scipy, typer, rich, einops, safetensors are usually there; monai, nibabel and edgeseg are not), built
# here into benchmarks/wheels/ (ignored by git; carry it with the run). Needs pip and a network here only.
#
#   bash benchmarks/gpu_wheels.sh        # then, there: bash benchmarks/gpu_check.sh OUTDIR
#
# Pure-Python wheels for any Python 3; safetensors' for CPython 3.12 on x86-64 manylinux (the lent machine's
# Python). Versions: those the project's venv tests with. gpu_check.sh installs only the ones the machine lacks
# or has too old (benchmarks/gpu_env.py), plus edgeseg itself, built from this tree and stamped with its sources'
# hash (a stale wheel is refused there).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-python3}"
dest="$here/wheels"
mkdir -p "$dest"
rm -f "$dest"/*.whl "$dest"/edgeseg-src.sha256
pure=(monai==1.6.1 nibabel==5.4.2 einops==0.8.2 typer==0.29.2 rich==15.0.0)
"$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$dest" "${pure[@]}"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest" safetensors==0.8.0
"$py" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dest" "$root"
"$py" "$here/gpu_env.py" stamp "$dest"
ls -l "$dest"
echo "wheels: $(du -ch "$dest"/*.whl | tail -1 | cut -f1); the tree that travels too (git ls-files): $(cd "$root" && git ls-files -z | xargs -0 du -ch 2>/dev/null | tail -1 | cut -f1) of 64 MiB"

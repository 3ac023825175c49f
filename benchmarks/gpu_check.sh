#!/usr/bin/env bash
# GPU check for a machine with no network: installs edgeseg from this checkout and any wheels placed
# in benchmarks/wheels/ (e.g. onnxruntime-gpu, tensorrt, cuda-python), then runs gpu_check.py.
#   bash benchmarks/gpu_check.sh OUTDIR
# Uses the machine's own torch when it has a CUDA build; needs about 5 minutes on an H100.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: gpu_check.sh OUTDIR}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA torch here'" 
wheels=()
if [ -d "$here/wheels" ]; then wheels=("$here"/wheels/*.whl); fi
python -m pip install --quiet --no-index --no-deps --no-build-isolation -e "$here/.." ${wheels[@]+"${wheels[@]}"}
python "$here/gpu_check.py" --out "$out"

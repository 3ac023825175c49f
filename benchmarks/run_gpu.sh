#!/usr/bin/env bash
# GPU benchmarks in about 10 minutes on a machine with no network: every GPU backend on the full-size
# trunk (and the CPU fp32 reference for parity), adaptation on the GPU, a few scans end to end.
#
#   bash benchmarks/run_gpu.sh [RESULTS_DIR]     # default benchmarks/results/<machine> (CPU + GPU named)
#
# Installs edgeseg from this checkout and any wheels placed beside this script in benchmarks/wheels/
# (onnxruntime-gpu, tensorrt, cuda-python, openvino, ...: pip install --no-index, nothing downloaded) and
# uses the machine's own CUDA build of torch. Backends whose wheels are not there are rows that say so.
# Each step gets a share of BUDGET seconds (default 570) and is cut off at it; what finished is kept.
# Environment: PYTHON (python), BUDGET (570), WORK (/tmp/edgeseg-bench-gpu), FULL=1 (also torch.compile
# and ONNX Runtime's TensorRT EP, which build for minutes), TENSORRT=0 (no native TensorRT engine build).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
py="${PYTHON:-python}"
budget="${BUDGET:-570}"
work="${WORK:-/tmp/edgeseg-bench-gpu}"
mkdir -p "$work"
SECONDS=0
log() { echo "== $(date -u +%FT%TZ) [${SECONDS}s] $*"; }
left() { echo $(( budget - SECONDS )); }
step() {  # step SHARE_SECONDS command...: run with the smaller of its share and what is left of the budget
  local share=$1; shift
  local limit=$(( $(left) < share ? $(left) : share ))
  if (( limit < 20 )); then log "skipped (budget spent): $*"; return 0; fi
  log "($limit s) $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" || log "exit $? from: $*"
}

"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA torch here'" || exit 2
wheels=()  # edgeseg itself is installed from this checkout: not its wheel (benchmarks/gpu_wheels.sh puts one there)
for w in "$here"/wheels/*.whl; do [ -e "$w" ] && [[ "$(basename "$w")" != edgeseg-* ]] && wheels+=("$w"); done
log "installing edgeseg (+ ${#wheels[@]} wheel(s) from benchmarks/wheels)"
"$py" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . ${wheels[@]+"${wheels[@]}"} || exit 2
machine="$("$py" -m edgeseg.bench.machine)"
res="${1:-benchmarks/results/$machine}"
mkdir -p "$res"
log "machine $machine; results in $res"
"$py" -m edgeseg info --json > "$res/info.json" || true
nvidia-smi > "$res/nvidia-smi.txt" 2>&1 || true

trt=()
if [ "${TENSORRT:-1}" = 1 ] && "$py" -c "import tensorrt" 2>/dev/null; then trt=(--tensorrt); fi
gpu_configs="torch-cuda-fp32,torch-cuda-fp16,torch-cuda-bf16,torch-cuda-fp16-graphs,ort-cuda,tensorrt"
if [ "${FULL:-0}" = 1 ]; then gpu_configs="torch-cuda,ort-cuda,ort-tensorrt,tensorrt"; fi

# 1. the feature_size 48 trunk (seeded random weights), fp32 + mixed fp16 (+ TensorRT engine), parity checked
step 240 "$py" -m edgeseg.bench.artifacts trunk --feature-size 48 --window 96 --cut decoder1 --precision fp32,fp16 \
  --batch 4 ${trt[@]+"${trt[@]}"} --out "$work/trunk-fs48-decoder1"
# 2. every GPU configuration at batch 1 and 4, against PyTorch fp32 eager on the GPU (parity: CPU fp32, untimed)
if [ -f "$work/trunk-fs48-decoder1/manifest.json" ]; then
  step 240 "$py" -m edgeseg bench trunk "$work/trunk-fs48-decoder1" --backends "$gpu_configs" --batch 1,4 \
    --warmup 3 --runs 20 --baseline torch-cuda-fp32 --timeout 150 --out "$res"
fi
# 3. adaptation on the GPU: cached features vs the trunk per step vs full fine-tuning
step 120 "$py" -m edgeseg bench adapt --device cuda --feature-size 48 --crop 96 --steps 5 --ks 1,5,10 \
  --timeout 60 --workdir "$work/adapt" --out "$res"
# 4. end to end per scan on the fastest GPU backend auto picks (what is left of the budget)
if [ -f "$work/trunk-fs48-decoder1/manifest.json" ]; then
  step 60 "$py" -m edgeseg.bench.artifacts engine --trunk "$work/trunk-fs48-decoder1" --out "$work/engine-fs48"
fi
if [ -f "$work/engine-fs48/manifest.json" ]; then
  step 240 "$py" -m edgeseg bench scan "$work/engine-fs48" --backend auto --phantom-spacing 3 --phantom-spacing 2 \
    --phantom-spacing 1.5 --phantom-spacing 0.78,0.78,1.5 --timeout 120 --workdir "$work/scan" --out "$res"
fi
log "done in ${SECONDS}s: $res"
ls -l "$res"

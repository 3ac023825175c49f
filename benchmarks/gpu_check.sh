#!/usr/bin/env bash
# The GPU check in one command, from a bare GPU machine with no network, in under 8 minutes:
#   bash benchmarks/gpu_wheels.sh                   # here, once (network): benchmarks/wheels/
#   bash benchmarks/gpu_check.sh OUTDIR [gpu_check.py options, e.g. --steps trunk,compile]   # there
# Installs the wheels of benchmarks/wheels/ the machine lacks (benchmarks/gpu_env.py: pip --no-index --no-deps
# into a scratch folder; the machine's own packages stay) and refuses, naming them, when something is still
# missing; then runs benchmarks/gpu_check.py within what is left of BUDGET seconds (default 450 for the whole
# script). Writes OUTDIR/gpu_check.json (after every step), OUTDIR/gpu_check.log and OUTDIR/nvidia-smi.txt.
# Environment: PYTHON (python3), BUDGET (450), WORK (/tmp/edgeseg-gpu-check).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: gpu_check.sh OUTDIR [gpu_check.py options]}"
shift
py="${PYTHON:-python3}"
budget="${BUDGET:-450}"
work="${WORK:-/tmp/edgeseg-gpu-check}"
if [ -e "$out/gpu_check.json" ] && [[ " $* " != *" --force "* ]]; then
  echo "error: $out already holds gpu_check.json; fix: add --force to replace it, or choose another OUTDIR" >&2
  exit 2
fi
mkdir -p "$out" "$work"
SECONDS=0
run() {
  echo "== $(date -u +%FT%TZ) installing what the machine lacks"
  rm -rf "$work/site"
  "$py" "$here/gpu_env.py" install --wheels "$here/wheels" --target "$work/site" || return 2
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  local cpu=()
  if [[ " $* " == *" --smoke "* ]]; then cpu=(--cpu); fi  # the smoke runs on the CPU: no GPU needed
  "$py" "$here/gpu_env.py" check ${cpu[@]+"${cpu[@]}"} || return 2
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
  local left=$(( budget - SECONDS - 10 ))
  echo "== $(date -u +%FT%TZ) [${SECONDS}s] gpu_check.py with ${left}s"
  # gpu_check.py keeps to --budget itself; timeout is the backstop (SIGINT: it stops its step and keeps the JSON)
  timeout --signal=INT --kill-after=20 $(( left + 30 )) \
    "$py" "$here/gpu_check.py" --out "$out" --budget "$left" --work "$work/run" "$@"
}
run "$@" 2>&1 | tee "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "== done in ${SECONDS}s (exit $rc): $out"
exit "$rc"

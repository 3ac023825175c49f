#!/usr/bin/env bash
# Regenerate every committed CPU result on this machine, under benchmarks/results/<machine>/ (the machine
# is described inside each JSON: CPU model, cores, memory, platform, library versions).
#
#   bash benchmarks/run_cpu.sh                         # everything: several hours on 2 cores
#   STEPS="trunk engine" bash benchmarks/run_cpu.sh    # some steps only
#
# Steps (in this order): export backends trunk trunk-pre engine scan adapt predict
#   export     benchmarks/export_full_size.py      -> export_full_size.json
#   backends   benchmarks/cpu_backends.py          -> cpu_backends.json
#   trunk      edgeseg bench trunk (fs48, decoder1, batch $BATCH) -> bench_trunk_fs48_decoder1.{json,md,png}
#   trunk-pre  edgeseg bench trunk (fs48, pre-decoder1, batch $BATCH) -> bench_trunk_fs48_pre-decoder1.*
#   engine     edgeseg bench engine (fs48 trunk + linear probe, batch $BATCH) -> bench_engine_fs48_decoder1.*
#   scan       edgeseg bench scan, OpenVINO bf16 (the fastest CPU backend here): real CT + phantoms at 3, 2, 1.5
#              and 0.78x0.78x1.5 mm (the typical 512 x 512 x 300 abdomen) -> bench_scan_fs48.*; then, side by
#              side, the real CT and the abdomen with every window run (no pure-air reuse) -> *_every-window.*,
#              and on ONNX Runtime fp32 (the engine baseline) -> bench_scan_fs48_ort-fp32.*
#   adapt      edgeseg bench adapt (K = 1, 5, 10)  -> adapt_memory.{json,md,png}
#   predict    benchmarks/predict_scan.py          -> predict_scan.json
#   int8       (not in the default list) the same seeded fs48 trunk exported with int8 too (its own folder), then
#              edgeseg bench trunk with torch eager, OpenVINO bf16 and the int8 rows in one run ->
#              bench_trunk_fs48_decoder1_int8.*; the int8 engine's scans on OpenVINO int8 and, in the same
#              session, bf16 (the abdomen and the real CT) -> bench_scan_fs48_int8.*, bench_scan_fs48_int8-vs-bf16.*;
#              eager vs bf16 vs int8 whole scans -> eager_scan_int8.json
# Environment: PYTHON (.venv/bin/python), THREADS (all cores), WORK (/tmp/edgeseg-bench-cpu: the seeded
# random-weight fs48 checkpoint, trunks and engine are made there once and reused), RUNS (5), WARMUP (1),
# BATCH (1: on 2 cores a batch of windows adds no parallelism; 1,4 on bigger machines).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
threads="${THREADS:-$(nproc)}"
work="${WORK:-/tmp/edgeseg-bench-cpu}"
runs="${RUNS:-5}"
warmup="${WARMUP:-1}"
batch="${BATCH:-1}"
steps=" ${STEPS:-export backends trunk trunk-pre engine scan adapt predict} "
machine="$("$py" -m edgeseg.bench.machine --cpu)"
res="benchmarks/results/$machine"
mkdir -p "$res" "$work"
log() { echo "== $(date -u +%FT%TZ) $*"; }
want() { [[ "$steps" == *" $1 "* ]]; }

trunk48() {  # the seeded random-weight feature_size 48 trunk at cut $1 (exported once, reused)
  "$py" -m edgeseg.bench.artifacts trunk --feature-size 48 --window 96 --cut "$1" --precision fp32,fp16 \
    --threads "$threads" --out "$work/trunk-fs48-$1"
}

log "machine $machine, $threads threads, results in $res, artifacts in $work"
"$py" -m edgeseg info

if want export; then
  log export; "$py" benchmarks/export_full_size.py --feature-size 48 --threads "$threads" --workdir "$work/export"
fi
if want backends; then
  log backends; "$py" benchmarks/cpu_backends.py --threads "$threads" --workdir "$work/cpu_backends"
fi
if want trunk; then
  log trunk; trunk48 decoder1
  "$py" -m edgeseg bench trunk "$work/trunk-fs48-decoder1" --batch "$batch" --warmup "$warmup" --runs "$runs" \
    --threads "$threads" --out "$res"
fi
if want trunk-pre; then
  log trunk-pre; trunk48 pre-decoder1
  "$py" -m edgeseg bench trunk "$work/trunk-fs48-pre-decoder1" --batch "$batch" --warmup "$warmup" --runs "$runs" \
    --threads "$threads" --out "$res"
fi
if want engine || want scan; then
  trunk48 decoder1
  "$py" -m edgeseg.bench.artifacts engine --trunk "$work/trunk-fs48-decoder1" --out "$work/engine-fs48" --threads "$threads"
fi
if want engine; then
  log engine
  "$py" -m edgeseg bench engine "$work/engine-fs48" --batch "$batch" --warmup "$warmup" --runs "$runs" --threads "$threads" \
    --out "$res"
fi
if want scan; then
  log scan  # the fastest CPU backend measured here; phantoms are generated once under $work/scan
  "$py" -m edgeseg bench scan "$work/engine-fs48" --backend openvino --precision bf16 --threads "$threads" \
    --workdir "$work/scan" --out "$res"
  abdomen=(--phantom-spacing 0.78,0.78,1.5)  # the real CT and the typical abdomen only
  "$py" -m edgeseg bench scan "$work/engine-fs48" --backend openvino --precision bf16 --threads "$threads" \
    --workdir "$work/scan" "${abdomen[@]}" --run-every-window --out "$res" --name bench_scan_fs48_every-window
  "$py" -m edgeseg bench scan "$work/engine-fs48" --backend ort --precision fp32 --threads "$threads" \
    --workdir "$work/scan" "${abdomen[@]}" --out "$res" --name bench_scan_fs48_ort-fp32
fi
if want adapt; then
  log adapt
  "$py" -m edgeseg bench adapt --feature-size 48 --crop 96 --steps 3 --ks 1,5,10 --threads "$threads" \
    --workdir "$work/adapt" --out "$res"
fi
if want int8; then
  log int8  # needs edgeseg[int8]; the fs48 int8 trunk and engine get their own folders (artifacts are reused by name)
  "$py" -m edgeseg.bench.artifacts trunk --feature-size 48 --window 96 --cut decoder1 --precision fp32,int8 \
    --threads "$threads" --out "$work/trunk-fs48-decoder1-int8"
  "$py" -m edgeseg bench trunk "$work/trunk-fs48-decoder1-int8" --backends torch-cpu-fp32,openvino-bf16,ort-cpu-int8,openvino-int8 \
    --batch "$batch" --warmup "$warmup" --runs "$runs" --threads "$threads" --out "$res" --name bench_trunk_fs48_decoder1_int8
  "$py" -m edgeseg.bench.artifacts engine --trunk "$work/trunk-fs48-decoder1-int8" --out "$work/engine-fs48-int8" \
    --precision fp32,int8 --threads "$threads"
  abdomen=(--phantom-spacing 0.78,0.78,1.5)
  "$py" -m edgeseg bench scan "$work/engine-fs48-int8" --backend openvino --precision int8 --threads "$threads" \
    --workdir "$work/scan" "${abdomen[@]}" --out "$res" --name bench_scan_fs48_int8
  "$py" -m edgeseg bench scan "$work/engine-fs48-int8" --backend openvino --precision bf16 --threads "$threads" \
    --workdir "$work/scan" "${abdomen[@]}" --out "$res" --name bench_scan_fs48_int8-vs-bf16
  # the typical abdomen and the real CT end to end: PyTorch eager, OpenVINO bf16 and int8 side by side in one run
  "$py" benchmarks/eager_scan.py --engine "$work/engine-fs48-int8" --precision bf16,int8 --threads "$threads" \
    --scan "$work/scan/phantoms/phantom-0.78x0.78x1.5mm/ct.nii.gz" --name eager_scan_int8
fi
if want predict; then
  log predict; "$py" benchmarks/predict_scan.py --backend openvino --threads "$threads" --workdir "$work/predict"
fi
log "done: $res"
ls -l "$res"

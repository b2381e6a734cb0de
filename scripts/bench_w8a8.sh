#!/usr/bin/env bash
# Issue 4's table: W8A8 INT8 and FP8 of SmolLM2, static (per-tensor activation scales from
# minmax / percentile / MSE) and dynamic (per-token), against the f32 baseline; chunks
# protocol, ctx 512, 40 windows, one eval pass. Calibration: 128 windows of 512 tokens of
# the Brown calibration split, taken once per weight scheme (--save-stats) and reused
# (--load-stats) for the other activation choices.
# Usage: scripts/bench_w8a8.sh [OUTDIR]   (default out/w8a8)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh >/dev/null
cargo build --release -q
Q=target/release/quantize
A=${QUANTIZE_ASSETS:-.cache/assets}
O=${1:-out/w8a8}
mkdir -p "$O"
[ -d out/smollm2 ] || $Q convert "$A/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o out/smollm2
calib=(--nsamples 128 --seqlen 512 --calib "$A/brown/brown_calib.txt")
q() {
  local name=$1; shift
  [ -d "$O/$name" ] || /usr/bin/time -v $Q out/smollm2 -o "$O/$name" --json "$O/$name.json" "$@" 2> "$O/$name.log" >/dev/null
}
# INT8, per-tensor weights, static per-tensor activations (SmoothQuant 0.8 by default).
q int8-wtensor-static-minmax     --scheme w8a8-int8 --per-tensor --static --act-calib minmax --save-stats "$O/int8-wtensor.stats" "${calib[@]}"
q int8-wtensor-static-percentile --scheme w8a8-int8 --per-tensor --static --act-calib percentile --load-stats "$O/int8-wtensor.stats"
q int8-wtensor-static-mse        --scheme w8a8-int8 --per-tensor --static --act-calib mse --load-stats "$O/int8-wtensor.stats"
# INT8, per-channel weights.
q int8-static-minmax     --scheme w8a8-int8 --static --act-calib minmax --save-stats "$O/int8.stats" "${calib[@]}"
q int8-static-percentile --scheme w8a8-int8 --static --act-calib percentile --load-stats "$O/int8.stats"
q int8-static-mse        --scheme w8a8-int8 --static --act-calib mse --load-stats "$O/int8.stats"
q int8-static-mse-nosmooth --scheme w8a8-int8 --static --act-calib mse --smooth 0 "${calib[@]}"
q int8-dynamic           --scheme w8a8-int8 --dynamic --load-stats "$O/int8.stats"
q int8-dynamic-nosmooth  --scheme w8a8-int8 --dynamic --smooth 0
# FP8 E4M3 weights (per channel) and activations.
q fp8-static-minmax --scheme w8a8-fp8 --static --act-calib minmax --save-stats "$O/fp8.stats" "${calib[@]}"
q fp8-static-mse    --scheme w8a8-fp8 --static --act-calib mse --load-stats "$O/fp8.stats"
q fp8-dynamic       --scheme w8a8-fp8 --dynamic
$Q eval --baseline out/smollm2 --text "$A/brown/brown_heldout.txt" --ctx 512 --max-windows 40 --json "$O/eval.json" \
  --model "$O"/int8-wtensor-static-minmax "$O"/int8-wtensor-static-percentile "$O"/int8-wtensor-static-mse \
          "$O"/int8-static-minmax "$O"/int8-static-percentile "$O"/int8-static-mse "$O"/int8-static-mse-nosmooth \
          "$O"/int8-dynamic "$O"/int8-dynamic-nosmooth "$O"/fp8-static-minmax "$O"/fp8-static-mse "$O"/fp8-dynamic
